"""Stream.derive and endless streams: one way to derive, and no history kept per event.

These run on synthetic in-process sources (no hosts needed): what is under test is the
sharing layer and the derive recipe, not a transport.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import Disposable
from reactivex.subject import Subject

from reops import exec_
from reops.core.model import Event, Host, Hosts, Result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.lab.fleet import LabInfo
from reops.ops.metrics import Metrics
from reops.sinks.jsonl import jsonl
from reops.streams.collect import collect
from reops.streams.operators import then, where
from reops.streams.stream import Stream, _Once, derived

#: a bound far below what keeping the events would cost (two blocks per Result)
RETAINED_BLOCKS_MAX = 50_000


def _hosts(*names: str) -> Hosts:
    return Hosts(Host(name=n, address="127.0.0.1") for n in names)


def _ok(host: str, op: str = "x") -> Result:
    return Result(host=host, op=op, status="ok", code=0)


def _static(hs: Hosts, *, replay: bool = True) -> Stream:
    """A finite source: one ok Result per host, rebuildable for fewer hosts."""
    return Stream(reactivex.from_iterable([_ok(h.name) for h in hs]), hs,
                  lambda sub: _static(sub, replay=replay), replay=replay)


def test_derive_keeps_hosts_and_rebuilds_through_make() -> None:
    hs = _hosts("a", "b", "c")
    calls: list[Hosts] = []

    def only_b(up: Stream) -> Observable[Event]:
        calls.append(up.hosts)
        return up.observable.pipe(ops.filter(lambda e: isinstance(e, Result)
                                             and e.host != "a"))

    up = _static(hs)
    down = up.derive(only_b, shared=False)
    assert down.hosts == hs
    assert [e.host for e in run_events(down)] == ["b", "c"]
    again = down.rebuild(_hosts("a", "b"))  # the recipe re-applies make to the rebuilt source
    assert again.hosts == _hosts("a", "b")
    assert [e.host for e in run_events(again)] == ["b"]
    assert calls == [hs, _hosts("a", "b")]


def test_derived_operator_and_plain_rx_operator_keep_endlessness() -> None:
    endless = _static(_hosts("a"), replay=False)
    keep = derived(lambda up: up.observable, "keep", shared=False)
    assert (endless | keep).endless
    assert (endless | ops.map(lambda e: e)).endless
    assert not (_static(_hosts("a")) | keep).endless
    assert (endless | keep).rebuild(_hosts("a")).endless


def run_events(s: Stream) -> list[Result]:
    got: list[Result] = []
    s.observable.subscribe(lambda e: got.append(e) if isinstance(e, Result) else None)
    return got


def _shared_stages(s: Stream) -> list[_Once]:
    once = s._once
    return [once] if isinstance(once, _Once) else []


def test_a_million_events_through_an_endless_stream_are_not_kept() -> None:
    """Sharing must hold no history on an endless source: every stage, shared or not."""
    n = 1_000_000
    events: Subject[Event] = Subject()
    endless = Stream(events, Hosts(), replay=False)
    filtered = endless | where(lambda r: r.ok)
    mapped = filtered | ops.map(lambda e: e)  # a plain rx operator: a shared stage
    tail = mapped.derive(lambda up: up.observable, shared=True)
    seen = [0]

    def count(e: Event) -> None:
        seen[0] += 1

    sub = tail.subscribe(count)
    before = sys.getallocatedblocks()
    for i in range(n):
        events.on_next(Result(host=f"h{i % 100}", op="tick", status="ok" if i % 2 else
                              "failed", code=0 if i % 2 else 1))
    retained = sys.getallocatedblocks() - before
    sub.dispose()
    assert seen[0] == n // 2
    stages = [*_shared_stages(endless), *_shared_stages(mapped), *_shared_stages(tail)]
    assert len(stages) == 3
    assert all(not st._events for st in stages)
    assert retained < RETAINED_BLOCKS_MAX, f"{retained} memory blocks kept after {n} events"


def test_then_over_an_endless_stream_keeps_no_history() -> None:
    events: Subject[Event] = Subject()
    endless = Stream(events, Hosts(), replay=False)
    chained = endless | where(lambda r: not r.ok) | then(exec_, "true")
    got: list[Event] = []
    sub = chained.subscribe(got.append)
    for i in range(10_000):  # hosts not in the stream's Hosts: then passes them on
        events.on_next(Result(host=f"h{i}", op="tick", status="failed", code=1))
    sub.dispose()
    assert len(got) == 10_000
    assert chained.endless
    assert all(not st._events for st in [*_shared_stages(endless), *_shared_stages(chained)])


def test_jsonl_writes_each_result_once_for_two_subscribers(tmp_path: Path) -> None:
    """A sink is a shared derived stage: two subscribers, one file write per Result."""
    out = tmp_path / "r.jsonl"
    s = _static(_hosts("a", "b")) | jsonl(out)
    first = run_events(s)
    second = run_events(s)  # late: replayed from the shared stage, not written again
    assert [r.host for r in first] == [r.host for r in second] == ["a", "b"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["host"] for r in rows] == ["a", "b"]
    assert s.rebuild(_hosts("b")).hosts == _hosts("b")


def test_collect_is_an_endless_stream_that_pipes(lab: LabInfo) -> None:
    """`collect(...) | where(...)` is a Stream over the hosts; Results flow; none replayed."""
    hosts = Hosts(list(lab.as_hosts())[:2])
    fast = Settings(connect_timeout=10.0, command_timeout=60.0)
    stream = collect(hosts, ["load"], every=0.2, settings=fast) | where(lambda r: r.ok)
    assert isinstance(stream, Stream) and stream.endless and stream.hosts == hosts
    got: list[Event] = []
    enough = threading.Event()
    lock = threading.Lock()

    def on_next(e: Event) -> None:
        with lock:
            got.append(e)
            per_host = {h: sum(1 for x in got if x.host == h) for h in hosts.names}
        if min(per_host.values()) >= 3:
            enough.set()

    sub = stream.subscribe(on_next)
    try:
        assert enough.wait(60), f"only {len(got)} samples"

        async def late_subscriber_sees() -> int:
            # on the loop thread no sample can land in between: a replay would be immediate
            late: list[Event] = []
            d = stream.subscribe(late.append)
            d.dispose()
            return len(late)

        assert get_runtime().call(late_subscriber_sees()) == 0
    finally:
        sub.dispose()
    with lock:
        results = list(got)
    assert all(isinstance(r, Result) and r.ok and isinstance(r.data, Metrics)
               for r in results)


def test_an_endless_stream_restarts_for_a_subscriber_after_the_last_left() -> None:
    """Disposing the last subscriber stops the source; the next subscriber starts it again
    (an endless stream has no history to replay, so it must not be left dead)."""
    starts: list[int] = []
    stops: list[int] = []

    def subscribe(observer: abc.ObserverBase[Event],
                  scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        n = len(starts)
        starts.append(n)
        observer.on_next(_ok(f"h{n}"))
        return Disposable(lambda: stops.append(n))

    endless = Stream(reactivex.create(subscribe), Hosts(), replay=False)
    first: list[Event] = []
    endless.subscribe(first.append).dispose()
    assert stops == [0]  # the last subscriber left: the source is stopped
    second: list[Event] = []
    sub = endless.subscribe(second.append)
    assert [e.host for e in first] == ["h0"]
    assert [e.host for e in second] == ["h1"]  # a fresh run, not a dead stream
    sub.dispose()
    assert stops == [0, 1]
