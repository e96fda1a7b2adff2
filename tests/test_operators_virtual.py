"""Time-based operators in virtual time: exact times, no wall clock, no network.

reactivex's `TestScheduler` is the clock: a `VirtualFleet` host "runs" for a scripted number
of virtual seconds, and `timeout` / `retry(delay=)` take the same scheduler, so each test
states the exact virtual time at which a host starts, ends, is retried or times out. The
real-sshd integration checks of the same operators are in tests/test_streams.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import reactivex
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.testing import TestScheduler

from reops import Host, Hosts, Result, Stream, retry, rolling, then, timeout
from reops.core.model import Event, Status
from reops.streams.operators import failed

#: one run of one host: (virtual seconds it takes, the status it ends with)
Run = tuple[float, Status]


class VirtualFleet:
    """Hosts whose runs take scripted virtual time; records when each run started and when
    an unfinished run was cancelled (disposed)."""

    def __init__(self, clock: TestScheduler, plan: dict[str, list[Run]]) -> None:
        self.clock = clock
        self.plan = plan  # per host: the 1st, 2nd, ... run (the last one repeats)
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.cancelled: dict[str, list[float]] = defaultdict(list)

    @property
    def hosts(self) -> Hosts:
        return Hosts(Host(name=n, address=f"10.9.0.{i + 1}") for i, n in enumerate(self.plan))

    def stream(self, hosts: Hosts) -> Stream:
        """A cold source over `hosts`, rebuildable for fewer (what retry/rolling need)."""

        def subscribe(observer: abc.ObserverBase[Event],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            running: set[str] = set()
            timers = CompositeDisposable()

            def start(name: str) -> None:
                runs = self.starts[name]
                took, status = self.plan[name][min(len(runs), len(self.plan[name]) - 1)]
                began = self.clock.clock
                runs.append(began)
                running.add(name)

                def end(_s: abc.SchedulerBase, __: Any = None) -> None:
                    running.discard(name)
                    observer.on_next(Result(host=name, op="t", status=status,
                                            code=0 if status == "ok" else 1,
                                            started_at=began, duration_s=took))
                    if not running:
                        observer.on_completed()

                timers.add(self.clock.schedule_relative(took, end))

            for h in hosts:
                start(h.name)

            def dispose() -> None:
                for name in sorted(running):
                    self.cancelled[name].append(self.clock.clock)
                timers.dispose()

            return Disposable(dispose)

        return Stream(reactivex.create(subscribe), hosts, self.stream)


def play(clock: TestScheduler, stream: Stream) -> list[tuple[float, str, str]]:
    """Subscribe at t=0, run virtual time to the end: (time, host, status) per Result and
    (time, "|", "") for the completion."""
    seen: list[tuple[float, str, str]] = []

    def on_next(e: Event) -> None:
        if isinstance(e, Result):
            seen.append((clock.clock, e.host, e.status))

    def on_error(exc: Exception) -> None:
        raise exc

    stream.observable.subscribe(on_next, on_error, lambda: seen.append((clock.clock, "|", "")))
    clock.start()
    return seen


def test_retry_delay_resubscribes_each_delay_after_the_failure() -> None:
    clock = TestScheduler()
    fleet = VirtualFleet(clock, {"a": [(1, "failed"), (1, "failed"), (1, "ok")],
                                 "b": [(2, "ok")]})
    seen = play(clock, fleet.stream(fleet.hosts)
                | retry(2, when=failed, delay=5, scheduler=clock))
    # a fails at t=1 and t=7; each re-run starts 5 s after the failure, not after the start
    assert fleet.starts == {"a": [0, 6, 12], "b": [0]}
    assert seen == [(2, "b", "ok"), (13, "a", "ok"), (13, "|", "")]


def test_retry_delay_gives_up_after_times_with_the_last_failure() -> None:
    clock = TestScheduler()
    fleet = VirtualFleet(clock, {"a": [(0, "unreachable")]})
    seen = play(clock, fleet.stream(fleet.hosts) | retry(2, delay=5, scheduler=clock))
    assert fleet.starts == {"a": [0, 5, 10]}
    assert seen == [(10, "a", "unreachable"), (10, "|", "")]


def test_timeout_fails_the_slow_host_at_the_deadline_and_cancels_its_run() -> None:
    clock = TestScheduler()
    fleet = VirtualFleet(clock, {"fast": [(1, "ok")], "slow": [(10, "ok")]})
    seen = play(clock, fleet.stream(fleet.hosts) | timeout(3, scheduler=clock))
    assert seen == [(1, "fast", "ok"), (3, "slow", "timeout"), (3, "|", "")]
    assert fleet.cancelled == {"slow": [3]}


def test_timeout_lets_a_pipeline_in_time_end_when_its_last_host_does() -> None:
    clock = TestScheduler()
    fleet = VirtualFleet(clock, {"a": [(1, "ok")], "b": [(2, "failed")]})
    seen = play(clock, fleet.stream(fleet.hosts) | timeout(3, scheduler=clock))
    assert seen == [(1, "a", "ok"), (2, "b", "failed"), (2, "|", "")]
    assert not fleet.cancelled


def test_timeout_covers_retries_and_cancels_a_pending_retry() -> None:
    """The deadline is for the whole pipeline so far: a retry still waiting for its delay
    when the deadline comes never starts."""
    clock = TestScheduler()
    fleet = VirtualFleet(clock, {"a": [(1, "failed"), (1, "ok")], "b": [(1, "ok")]})
    seen = play(clock, fleet.stream(fleet.hosts)
                | retry(1, when=failed, delay=5, scheduler=clock)
                | timeout(4, scheduler=clock))
    assert seen == [(1, "b", "ok"), (4, "a", "timeout"), (4, "|", "")]
    assert fleet.starts == {"a": [0], "b": [0]}


def test_rolling_starts_a_batch_only_when_every_host_of_the_last_one_ended() -> None:
    clock = TestScheduler()
    fleet = VirtualFleet(clock, {"a": [(3, "ok")], "b": [(5, "ok")], "c": [(2, "ok")],
                                 "d": [(1, "ok")], "e": [(1, "ok")]})
    seen = play(clock, fleet.stream(fleet.hosts) | rolling(2))
    # c and d wait for b (the slower of the first batch), e waits for c
    assert fleet.starts == {"a": [0], "b": [0], "c": [5], "d": [5], "e": [7]}
    assert seen == [(3, "a", "ok"), (5, "b", "ok"), (6, "d", "ok"), (7, "c", "ok"),
                    (8, "e", "ok"), (8, "|", "")]


def test_rolling_max_failed_reports_the_rest_when_the_failing_batch_ends() -> None:
    clock = TestScheduler()
    fleet = VirtualFleet(clock, {"a": [(2, "failed")], "b": [(4, "failed")],
                                 "c": [(1, "ok")], "d": [(1, "ok")]})
    seen = play(clock, fleet.stream(fleet.hosts) | rolling(2, max_failed=2))
    assert fleet.starts == {"a": [0], "b": [0]}
    assert seen == [(2, "a", "failed"), (4, "b", "failed"), (4, "c", "error"),
                    (4, "d", "error"), (4, "|", "")]


def test_then_starts_each_host_next_step_when_that_host_is_done() -> None:
    """No lock-step: the fast host's second step runs while the slow host's first runs."""
    clock = TestScheduler()
    first = VirtualFleet(clock, {"fast": [(1, "ok")], "slow": [(10, "ok")], "bad": [(2, "failed")]})
    second = VirtualFleet(clock, {"fast": [(2, "ok")], "slow": [(2, "ok")], "bad": [(2, "ok")]})
    seen = play(clock, first.stream(first.hosts) | then(second.stream))
    assert second.starts == {"fast": [1], "slow": [10]}
    assert seen == [(2, "bad", "failed"), (3, "fast", "ok"), (12, "slow", "ok"), (12, "|", "")]
