"""Endless streams keep no history: RSS before and after N events (should be flat).

    python bench/bench_endless.py [--events 1000000] [--then] [--replay]

Pushes synthetic Results (one new object each) through `endless | where | map | derive`
(shared stages included), optionally `| then(...)` (slower: a flat_map per event), and
prints one JSON object: RSS before/after, the growth, events per second. `--replay` runs
the same pipeline over a finite-style (replaying) source for contrast: that one grows.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

from reactivex import operators as ops
from reactivex.subject import Subject

from reops import exec_
from reops.core.model import Event, Hosts, Result
from reops.streams.operators import results_only, then, where
from reops.streams.stream import Stream


def rss_kb() -> int:
    """This process's resident set size, from /proc (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--then", action="store_true", help="add a then(...) stage")
    ap.add_argument("--replay", action="store_true", help="a replaying source (contrast)")
    a = ap.parse_args()

    events: Subject[Event] = Subject()
    stream = Stream(events, Hosts(), replay=a.replay)
    stream = (stream | where(lambda r: r.ok) | ops.map(lambda e: e)
              | results_only()).derive(lambda up: up.observable, shared=True)
    if a.then:
        stream = stream | then(exec_, "true")  # hosts not in Hosts(): passed on, nothing runs
    seen = [0]

    def count(e: Event) -> None:
        seen[0] += 1

    sub = stream.subscribe(count)
    gc.collect()
    before = rss_kb()
    t0 = time.perf_counter()
    for i in range(a.events):
        events.on_next(Result(host=f"h{i % 1000}", op="tick", status="ok" if i % 2 else
                              "failed", code=0 if i % 2 else 1, out=f"sample {i}"))
    wall = time.perf_counter() - t0
    gc.collect()
    after = rss_kb()
    sub.dispose()
    print(json.dumps({
        "events": a.events, "delivered": seen[0], "stages": "where|map|results_only|derive"
        + ("|then" if a.then else ""), "replay": a.replay,
        "rss_before_kb": before, "rss_after_kb": after, "growth_kb": after - before,
        "events_per_s": round(a.events / wall), "wall_s": round(wall, 2),
    }))


if __name__ == "__main__":
    main()
