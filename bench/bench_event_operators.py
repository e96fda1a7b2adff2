"""Event operators at scale: throughput per operator, and flat memory over a million events.

    python bench/bench_event_operators.py [--events 1000000] [--keys 50000] [--rate 1000]
                                          [--only once_within,debounce,...] [--no-chain]

Trigger-like events (one every 1/rate virtual seconds) go through each event operator on
its own, on a virtual clock (reactivex's TestScheduler, advanced as the events go), so
the run measures the operators, not sleeping. Two shapes per operator:

* `spread`: `--keys` distinct keys in turn (every key is new within a window: the
  per-key state and its expiry are the hot path; 10^6 distinct keys over a day),
* `hot`: 100 keys (most events are suppressed, re-armed or dropped: a storm).

`limit` and `ignoring` wrap a step: in `hot` it takes a virtual minute, so the first
item of each key runs it and the rest wait (limit, at most max_queue per key, the oldest
dropped beyond) or are ignored (ignoring) — the operator's own decisions; in `spread` it
takes 0.1 s and every item runs it (~100 in flight), which measures a step run (then +
a Stream per item) more than the operator. Then the chain
`squelch | once_within | accumulate` runs `--events` events and reports RSS at 10 % /
50 % / 100 % (flat means no per-event history) and the live keys each operator holds at
the end (bounded by its window). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import reactivex
from reactivex import abc
from reactivex.subject import Subject
from reactivex.testing import TestScheduler

from reops import (
    Host,
    Hosts,
    Result,
    Stream,
    accumulate,
    all_of,
    any_of,
    debounce,
    ignoring,
    limit,
    not_all,
    once_within,
    squelch,
)
from reops.streams.operators._keyed import Keyed

HOT_KEYS = 100


class Ev(msgspec.Struct, frozen=True):
    key: str


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def step(clock: TestScheduler, took: float) -> Callable[[Hosts], Stream]:
    """A step taking `took` virtual seconds per host (what limit/ignoring wrap)."""

    def run(hosts: Hosts) -> Stream:
        def subscribe(observer: abc.ObserverBase[Any],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            def end(_s: abc.SchedulerBase, __: Any = None) -> None:
                for h in hosts:
                    observer.on_next(Result(host=h.name, op="step", status="ok", code=0))
                observer.on_completed()

            return clock.schedule_relative(took, end)

        return Stream(reactivex.create(subscribe), hosts, run)

    return run


# name → builds (clock, the sources, the hosts, a step's seconds) → the output Stream --------
Build = Callable[[TestScheduler, list[Subject[Any]], Hosts, float], Stream]


def _one(op: Callable[[TestScheduler, float], Any]) -> Build:
    def build(clock: TestScheduler, subjects: list[Subject[Any]], hosts: Hosts,
              took: float) -> Stream:
        return Stream(subjects[0], hosts, replay=False) | op(clock, took)

    return build


def _pair(fn: Callable[..., Stream]) -> Build:
    def build(clock: TestScheduler, subjects: list[Subject[Any]], hosts: Hosts,
              took: float) -> Stream:
        s0, s1 = (Stream(s, hosts, replay=False) for s in subjects)
        return fn(s0, s1, timeout="10s", scheduler=clock)

    return build


OPERATORS: dict[str, tuple[Build, int, bool]] = {  # build, number of sources, Results?
    "once_within": (_one(lambda c, _: once_within("10s", scheduler=c)), 1, False),
    "debounce": (_one(lambda c, _: debounce("10s", scheduler=c)), 1, False),
    "accumulate": (_one(lambda c, _: accumulate(3, within="1m", scheduler=c)), 1, False),
    "squelch": (_one(lambda c, _: squelch("100/10s", scheduler=c)), 1, False),
    "all_of": (_pair(all_of), 2, False),
    "any_of": (_pair(any_of), 2, False),
    "not_all": (_pair(not_all), 2, False),
    "limit": (_one(lambda c, took: limit(1, step(c, took), key="host", scheduler=c)), 1,
              True),
    "ignoring": (_one(lambda c, took: ignoring(step(c, took), key="host", grace=1,
                                               scheduler=c)), 1, True),
}


def measure(name: str, events: int, keys: int, rate: float, took: float) -> dict[str, Any]:
    """`events` items of `keys` keys through operator `name` alone: events/s and what it
    holds at the end."""
    build, sources, results = OPERATORS[name]
    clock = TestScheduler()
    subjects: list[Subject[Any]] = [Subject() for _ in range(sources)]
    names = [f"host{i}" for i in range(keys)]
    hosts = Hosts(Host(name=n, address="127.0.0.1") for n in names) if results else Hosts()
    items: list[Any] = ([Result(host=n, op="trigger", status="ok", code=0) for n in names]
                        if results else [Ev(n) for n in names])
    out = [0]
    before = {id(o) for o in gc.get_objects() if isinstance(o, Keyed)}
    sub = build(clock, subjects, hosts, took).subscribe(lambda _: out.__setitem__(0, out[0] + 1))
    machines = [o for o in gc.get_objects() if isinstance(o, Keyed) and id(o) not in before]
    step_s = 1.0 / rate
    t0 = time.perf_counter()
    for i in range(events):
        if i % 1000 == 0:
            clock.advance_to(i * step_s)
        subjects[i % sources].on_next(items[(i // sources) % keys])
    elapsed = time.perf_counter() - t0
    live = sum(len(m) for m in machines)
    sub.dispose()
    return {"events_per_s": round(events / elapsed), "out": out[0], "live_keys": live}


def chain(events: int, keys: int, rate: float) -> dict[str, Any]:
    """The flow-shaped chain over `events` events: throughput, RSS, live keys."""
    clock = TestScheduler()
    source: Subject[Ev] = Subject()
    stream = (Stream(source, Hosts(), replay=False)  # type: ignore[arg-type]
              | squelch((int(rate * 20), "10s"), scheduler=clock)
              | once_within("10s", scheduler=clock)
              | accumulate(3, within="1m", scheduler=clock))
    fired = [0]
    sub = stream.subscribe(lambda _: fired.__setitem__(0, fired[0] + 1))
    machines = [o for o in gc.get_objects() if isinstance(o, Keyed)]
    marks = {events // 10: "rss_10pct_kb", events // 2: "rss_50pct_kb"}
    out: dict[str, Any] = {"events": events, "keys": keys, "rss_start_kb": rss_kb()}
    items = [Ev(f"host{i}") for i in range(keys)]
    step_s = 1.0 / rate
    t0 = time.perf_counter()
    for i in range(events):
        if i % 1000 == 0:
            clock.advance_to(i * step_s)
        source.on_next(items[i % keys])
        if i in marks:
            out[marks[i]] = rss_kb()
    elapsed = time.perf_counter() - t0
    out.update(rss_end_kb=rss_kb(), seconds=round(elapsed, 2),
               events_per_s=round(events / elapsed), fired=fired[0],
               live_keys={type(m).__name__: len(m) for m in machines})
    sub.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="events for the chain")
    ap.add_argument("--per-op", type=int, default=200_000, help="events per operator shape")
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="events per virtual second")
    ap.add_argument("--only", default=",".join(OPERATORS), help="operators to measure")
    ap.add_argument("--no-chain", action="store_true", help="skip the 10^6-event chain")
    args = ap.parse_args()

    report: dict[str, Any] = {"per_op_events": args.per_op, "operators": {}}
    for name in args.only.split(","):
        if name:
            report["operators"][name] = {
                "spread": measure(name, args.per_op, args.keys, args.rate, 0.1),
                "hot": measure(name, args.per_op, HOT_KEYS, args.rate, 60.0)}
            gc.collect()
    if not args.no_chain:
        report["chain"] = chain(args.events, args.keys, args.rate)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
