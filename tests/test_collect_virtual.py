"""`collect(every=)` in virtual time: exact tick times, no wall clock, no network.

reactivex's `TestScheduler` is the clock (`collect(scheduler=)`) and a `VirtualHosts`
sampler stands in for the metrics command (`collect(sampler=)`): each host's sample takes a
scripted number of virtual seconds, so each test states the exact virtual times at which a
host's samples start, end or are cancelled. The live runs over sshd are in
tests/test_ops_steps.py and tests/test_stream_endless.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.testing import TestScheduler

from reops import Host, Hosts, Result, Stream
from reops.core.model import Event
from reops.streams.collect import collect


class VirtualHosts:
    """A sampler whose samples take scripted virtual seconds (per host: the 1st, 2nd, ...
    sample, the last one repeating; `None` makes that sample error). Records when each
    sample started and when an unfinished one was cancelled."""

    def __init__(self, clock: TestScheduler, plan: dict[str, list[float | None]]) -> None:
        self.clock = clock
        self.plan = plan
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.cancelled: dict[str, list[float]] = defaultdict(list)

    @property
    def hosts(self) -> Hosts:
        return Hosts(Host(name=n, address=f"10.9.0.{i + 1}") for i, n in enumerate(self.plan))

    def __call__(self, host: Host) -> Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            name = host.name
            began = self.clock.clock
            runs = self.starts[name]
            took = self.plan[name][min(len(runs), len(self.plan[name]) - 1)]
            runs.append(began)
            done = [False]

            def end(_s: abc.SchedulerBase, __: Any = None) -> None:
                done[0] = True
                if took is None:
                    observer.on_error(RuntimeError("sampler bug"))
                    return
                observer.on_next(Result(host=name, op="metrics", status="ok", code=0,
                                        started_at=began, duration_s=took))
                observer.on_completed()

            timer = self.clock.schedule_relative(took or 0, end)

            def dispose() -> None:
                if not done[0]:
                    self.cancelled[name].append(self.clock.clock)
                timer.dispose()

            return Disposable(dispose)

        return reactivex.create(subscribe)


def watch(clock: TestScheduler, stream: Stream) -> tuple[list[tuple[float, str, str]],
                                                         abc.DisposableBase]:
    """Subscribe at the current virtual time: (time, host, status) per Result, the
    subscription; an endless stream never completes, so the test advances the clock."""
    seen: list[tuple[float, str, str]] = []

    def on_next(e: Event) -> None:
        if isinstance(e, Result):
            seen.append((clock.clock, e.host, e.status))

    def on_error(exc: Exception) -> None:
        raise exc

    return seen, stream.subscribe(on_next, on_error)


def test_collect_samples_each_host_at_0_every_and_on_a_fixed_grid() -> None:
    clock = TestScheduler()
    fleet = VirtualHosts(clock, {"a": [1], "b": [2]})
    seen, _ = watch(clock, collect(fleet.hosts, ["load"], every=5, scheduler=clock,
                                   sampler=fleet))
    clock.advance_to(19)
    assert fleet.starts == {"a": [0, 5, 10, 15], "b": [0, 5, 10, 15]}
    assert seen == [(1, "a", "ok"), (2, "b", "ok"), (6, "a", "ok"), (7, "b", "ok"),
                    (11, "a", "ok"), (12, "b", "ok"), (16, "a", "ok"), (17, "b", "ok")]


def test_collect_slow_sample_skips_ticks_instead_of_overlapping() -> None:
    """A sample still running at a tick skips that tick; the next one stays on the grid
    (10, not 7 + 5) and the other host is not held back."""
    clock = TestScheduler()
    fleet = VirtualHosts(clock, {"slow": [7], "fast": [1]})
    seen, _ = watch(clock, collect(fleet.hosts, ["load"], every=5, scheduler=clock,
                                   sampler=fleet))
    clock.advance_to(29)
    assert fleet.starts == {"slow": [0, 10, 20], "fast": [0, 5, 10, 15, 20, 25]}
    assert [t for t, host, _ in seen if host == "slow"] == [7, 17, 27]
    assert [t for t, host, _ in seen if host == "fast"] == [1, 6, 11, 16, 21, 26]


def test_collect_slow_sample_resumes_the_grid_once_it_is_fast_again() -> None:
    clock = TestScheduler()
    fleet = VirtualHosts(clock, {"a": [12, 1]})
    seen, _ = watch(clock, collect(fleet.hosts, ["load"], every=5, scheduler=clock,
                                   sampler=fleet))
    clock.advance_to(24)
    assert fleet.starts == {"a": [0, 15, 20]}  # ticks at 5 and 10 skipped
    assert seen == [(12, "a", "ok"), (16, "a", "ok"), (21, "a", "ok")]


def test_collect_dispose_stops_ticking_and_cancels_the_sample_in_flight() -> None:
    clock = TestScheduler()
    fleet = VirtualHosts(clock, {"a": [3], "b": [1]})
    seen, sub = watch(clock, collect(fleet.hosts, ["load"], every=5, scheduler=clock,
                                     sampler=fleet))
    clock.advance_to(7)
    sub.dispose()  # a's second sample (started at 5) is still running, b's is done
    clock.advance_to(60)
    assert fleet.starts == {"a": [0, 5], "b": [0, 5]}
    assert fleet.cancelled == {"a": [7]}
    assert seen == [(1, "b", "ok"), (3, "a", "ok"), (6, "b", "ok")]


def test_collect_sampler_error_is_an_error_result_and_sampling_goes_on() -> None:
    clock = TestScheduler()
    fleet = VirtualHosts(clock, {"a": [None, 1]})
    seen, _ = watch(clock, collect(fleet.hosts, ["load"], every=5, scheduler=clock,
                                   sampler=fleet))
    clock.advance_to(9)
    assert fleet.starts == {"a": [0, 5]}
    assert seen == [(0, "a", "error"), (6, "a", "ok")]


def test_collect_shares_one_sampling_and_rebuild_keeps_the_clock() -> None:
    clock = TestScheduler()
    fleet = VirtualHosts(clock, {"a": [1], "b": [1]})
    stream = collect(fleet.hosts, ["load"], every=5, scheduler=clock, sampler=fleet)
    first, sub1 = watch(clock, stream)
    clock.advance_to(4)
    second, sub2 = watch(clock, stream)  # late: no replay, same ticks
    clock.advance_to(9)
    assert fleet.starts == {"a": [0, 5], "b": [0, 5]}
    assert first == [(1, "a", "ok"), (1, "b", "ok"), (6, "a", "ok"), (6, "b", "ok")]
    assert second == [(6, "a", "ok"), (6, "b", "ok")]
    sub1.dispose()
    sub2.dispose()

    only_b = stream.rebuild(Hosts([Host(name="b", address="10.9.0.2")]))
    later, _ = watch(clock, only_b)  # subscribed at 9: its grid is 9, 14, ...
    clock.advance_to(16)
    assert fleet.starts == {"a": [0, 5], "b": [0, 5, 9, 14]}
    assert later == [(10, "b", "ok"), (15, "b", "ok")]
