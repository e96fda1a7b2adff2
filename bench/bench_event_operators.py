"""Event operators at scale: throughput and flat memory over a million events.

    python bench/bench_event_operators.py [--events 1000000] [--keys 50000] [--rate 1000]

A million trigger-like events (one every 1/rate virtual seconds, `--keys` distinct keys in
turn) go through `squelch | once_within | accumulate` on a virtual clock (reactivex's
TestScheduler, advanced as the events go), so the run measures the operators, not sleeping.
Prints one JSON object: events/s, RSS at 10 % / 50 % / 100 % (flat means no per-event
history), and the live keys each operator holds at the end (bounded by its window).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import msgspec
from reactivex.subject import Subject
from reactivex.testing import TestScheduler

from reops import Hosts, Stream, accumulate, once_within, squelch
from reops.streams.operators._keyed import Keyed


class Ev(msgspec.Struct, frozen=True):
    key: str


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="events per virtual second")
    args = ap.parse_args()

    clock = TestScheduler()
    source: Subject[Ev] = Subject()
    stream = (Stream(source, Hosts(), replay=False)  # type: ignore[arg-type]
              | squelch((int(args.rate * 20), "10s"), scheduler=clock)
              | once_within("10s", scheduler=clock)
              | accumulate(3, within="1m", scheduler=clock))
    fired = [0]
    sub = stream.subscribe(lambda _: fired.__setitem__(0, fired[0] + 1))
    machines = [o for o in gc.get_objects() if isinstance(o, Keyed)]
    marks = {args.events // 10: "rss_10pct_kb", args.events // 2: "rss_50pct_kb"}
    out: dict[str, object] = {"events": args.events, "keys": args.keys,
                              "rss_start_kb": rss_kb()}
    step = 1.0 / args.rate
    t0 = time.perf_counter()
    for i in range(args.events):
        if i % 1000 == 0:
            clock.advance_to(i * step)
        source.on_next(Ev(f"host{i % args.keys}"))
        if i in marks:
            out[marks[i]] = rss_kb()
    elapsed = time.perf_counter() - t0
    out.update(rss_end_kb=rss_kb(), seconds=round(elapsed, 2),
               events_per_s=round(args.events / elapsed),
               fired=fired[0],
               live_keys={type(m).__name__: len(m) for m in machines})
    sub.dispose()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
