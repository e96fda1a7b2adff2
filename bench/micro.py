"""Micro-benchmark: synthetic Result events through partition + the polars table sink.

    python bench/micro.py [--events 200000] [--repeat 3] [--budget 30]

Builds the Results first (not timed), then times: a Stream over
`reactivex.from_iterable(results)`, `partition(stream, successful)`, both branches
subscribed, and `to_table` over what came out. Prints JSON with events/s (median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import reactivex

from reops.core.model import Host, Hosts, Result
from reops.sinks.table import to_table
from reops.streams.operators import partition, successful
from reops.streams.stream import Stream


def synthetic(n: int, hosts: int) -> list[Result]:
    now = time.time()
    return [
        Result(host=f"h{i % hosts}", op="exec", status="ok" if i % 10 else "failed",
               code=0 if i % 10 else 1, out=f"line {i}\n", err="" if i % 10 else "boom\n",
               started_at=now + i * 1e-6, duration_s=0.01, transport="ssh")
        for i in range(n)
    ]


def once(results: list[Result], hosts: Hosts) -> dict[str, float]:
    t0 = time.perf_counter()
    stream = Stream(reactivex.from_iterable(results), hosts)
    yes, no = partition(stream, successful)
    ok: list[Result] = []
    bad: list[Result] = []
    yes.subscribe(ok.append)
    no.subscribe(bad.append)
    t1 = time.perf_counter()
    table = to_table(ok + bad)
    t2 = time.perf_counter()
    assert len(ok) + len(bad) == len(results) == table.height, (len(ok), len(bad))
    return {"total_s": t2 - t0, "partition_s": t1 - t0, "table_s": t2 - t1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--budget", type=float, default=30.0,
                   help="stop repeating once this many seconds were spent (at least 1 run)")
    args = p.parse_args()
    hosts = Hosts(Host(name=f"h{i}", address="127.0.0.1") for i in range(args.hosts))
    results = synthetic(args.events, args.hosts)
    once(results[:1000], hosts)  # warm up imports (polars) outside the timing
    runs: list[dict[str, float]] = []
    spent = 0.0
    while len(runs) < args.repeat and (not runs or spent < args.budget):
        runs.append(once(results, hosts))
        spent += runs[-1]["total_s"]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({
        "events": args.events,
        "runs": len(runs),
        "events_per_s": args.events / med["total_s"],
        "partition_events_per_s": args.events / med["partition_s"],
        "table_events_per_s": args.events / med["table_s"],
        **med,
    }))


if __name__ == "__main__":
    main()
