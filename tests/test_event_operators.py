"""Event operators in virtual time: exact emission times, bounded state, clean disposal.

reactivex's `TestScheduler` is the clock. A marble string is a timeline, one tick per
character: a letter is an event of that key (or a Result of that host), `-` a quiet tick,
`|` the end. `feed` plays one into an endless Stream at those virtual times, `play` records
what comes out, and `render` draws it back as a marble string, so each test states the
operator's docstring diagram and checks it exactly. Nothing here touches the wall clock.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import abc
from reactivex.disposable import CompositeDisposable
from reactivex.scheduler import VirtualTimeScheduler
from reactivex.subject import Subject
from reactivex.testing import TestScheduler

from reops import (
    Accumulated,
    Correlated,
    Host,
    Hosts,
    Line,
    Result,
    Resumed,
    Squelched,
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
    then,
)
from reops.streams.operators import Drained, Overflowed
from reops.streams.operators._keyed import Keyed
from reops.streams.stream import Operator


class Ev(msgspec.Struct, frozen=True):
    """A trigger-like event: its `key`, and `n` (its place in the timeline) to tell repeats
    of a key apart."""

    key: str
    n: int = 0


class Boom(Exception):
    pass


# -- the virtual-time harness -----------------------------------------------------------

def timeline(marbles: str) -> tuple[list[tuple[float, Any]], float | None]:
    """A marble string as (time, Ev) pairs and the completion time (None: endless)."""
    events: list[tuple[float, Any]] = []
    end: float | None = None
    for t, ch in enumerate(marbles):
        if ch == "|":
            end = float(t)
        elif ch != "-":
            events.append((float(t), Ev(ch, t)))
    return events, end


def feed(clock: TestScheduler, events: Iterable[tuple[float, Any]], end: float | None = None,
         *, error_at: float | None = None, hosts: Hosts | None = None) -> Stream:
    """An endless Stream (a trigger) playing `events` at their virtual times, completing at
    `end` or failing with `Boom` at `error_at`. Its timers are the source's, cancelled when
    it is disposed."""
    events = list(events)

    def subscribe(observer: abc.ObserverBase[Any],
                  _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        timers = CompositeDisposable()
        for t, item in events:
            timers.add(clock.schedule_absolute(t, lambda _s, _st, x=item: observer.on_next(x)))
        if end is not None:
            timers.add(clock.schedule_absolute(end, lambda _s, _st: observer.on_completed()))
        if error_at is not None:
            timers.add(clock.schedule_absolute(
                error_at, lambda _s, _st: observer.on_error(Boom("upstream failed"))))
        return timers

    return Stream(reactivex.create(subscribe), hosts or Hosts(), replay=False)


def marbles(clock: TestScheduler, text: str, **kw: Any) -> Stream:
    events, end = timeline(text)
    return feed(clock, events, end, **kw)


class Seen(list[tuple[float, Any]]):
    """What came out: (time, item), (time, "|") at completion, (time, exception) on error;
    `left`: the scheduled actions still pending at that completion or error."""

    left: list[Any] | None = None


def play(clock: TestScheduler, stream: Stream, *, until: float | None = None
         ) -> tuple[Seen, abc.DisposableBase]:
    seen = Seen()

    def end(last: Any) -> None:
        seen.append((clock.clock, last))
        seen.left = pending(clock)

    sub = stream.subscribe(lambda x: seen.append((clock.clock, x)), end, lambda: end("|"))
    if until is None:
        run_all(clock)
    else:
        clock.advance_to(until)
    return seen, sub


def letter(item: Any) -> str:
    if isinstance(item, Ev):
        return item.key
    if isinstance(item, Result):
        return item.host if item.op == "trigger" else item.host.upper()
    if isinstance(item, str):
        return item
    return {Squelched: "S", Resumed: "R", Accumulated: "X", Correlated: "C",
            Overflowed: "O", Drained: "D"}.get(type(item), "?")


def render(seen: Seen) -> str:
    """The output as a marble string (several at one tick in parentheses)."""
    at: dict[int, list[str]] = {}
    for t, item in seen:
        assert t == int(t), f"an emission off the tick grid at {t}"
        at.setdefault(int(t), []).append(letter(item))
    out = ""
    for t in range(max(at) + 1 if at else 0):
        here = at.get(t, [])
        if len(here) <= 1:
            out += here[0] if here else "-"
        else:
            out += "(" + "".join(here) + ")"
    return out


def run_all(clock: TestScheduler) -> None:
    """Run virtual time until nothing is scheduled (the plain virtual-time loop:
    `TestScheduler.start()` would also schedule its own subscription at 100-1000 s)."""
    VirtualTimeScheduler.start(clock)


def pending(clock: TestScheduler) -> list[Any]:
    """Scheduled actions that would still run."""
    return [item for item, _ in clock._queue.items if not item.is_cancelled()]


def live(machine_type: type[Keyed]) -> list[Keyed]:
    """The running subscriptions of one event operator (to count their live keys)."""
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, machine_type)]


# -- once_within --------------------------------------------------------------------------

def test_once_within_fires_first_per_key_and_again_after_the_window() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, marbles(clock, "a-a-ba----a-b|") | once_within(6, scheduler=clock))
    assert render(seen) == "a---b-----a-b|"  # the docstring's diagram
    assert [x.n for _, x in seen if isinstance(x, Ev)] == [0, 4, 10, 12]


def test_once_within_state_expires_with_the_window_whatever_the_number_of_keys() -> None:
    """20,000 distinct keys, one every 0.1 s, window 1 s: at every moment only the keys of
    the last second are held (<= 11), and none once the last window ended. Without expiry
    the state would hold every key ever seen."""
    from reops.streams.operators.once_within import _OnceWithin

    clock = TestScheduler()
    n = 20_000
    events = [(i / 10, Ev(f"k{i}", i)) for i in range(n)]
    seen, sub = play(clock, feed(clock, events) | once_within("1s", scheduler=clock), until=0)
    (machine,) = live(_OnceWithin)
    sizes: list[int] = []
    for i in range(1, 200):
        clock.advance_to(i * n / 10 / 200 + 0.05)
        sizes.append(len(machine))
    clock.advance_to(n / 10 + 5)
    assert len(seen) == n  # every new key fired once
    assert max(sizes) <= 11
    assert min(sizes) >= 9  # it does hold the last window's keys
    assert len(machine) == 0
    sub.dispose()
    assert not pending(clock)


def test_once_within_keys_results_by_host_and_lets_lines_through() -> None:
    clock = TestScheduler()

    def r(host: str) -> Result:
        return Result(host=host, op="trigger", status="ok", code=0)

    line = Line("a", "out", "hello")
    events = [(0, r("a")), (1, line), (2, r("a")), (3, r("b")), (4, line)]
    seen, _ = play(clock, feed(clock, events, 5) | once_within(10, scheduler=clock))
    assert seen == [(0, r("a")), (1, line), (3, r("b")), (4, line), (5, "|")]


def test_once_within_key_by_function_and_by_an_events_host() -> None:
    class Down(msgspec.Struct, frozen=True):
        host: Host
        what: str

    web1, web2 = Host(name="web1", address="10.0.0.1"), Host(name="web2", address="10.0.0.2")
    clock = TestScheduler()
    events = [(0, Down(web1, "x")), (1, Down(web1, "y")), (2, Down(web2, "x"))]
    seen, _ = play(clock, feed(clock, events, 3) | once_within(5, key="host", scheduler=clock))
    assert [x for _, x in seen] == [Down(web1, "x"), Down(web2, "x"), "|"]
    clock = TestScheduler()
    seen, _ = play(clock, feed(clock, events, 3)
                   | once_within(5, key=lambda d: d.what, scheduler=clock))
    assert [x for _, x in seen] == [Down(web1, "x"), Down(web1, "y"), "|"]


def test_a_missing_key_ends_the_stream_with_one_clear_error() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, feed(clock, [(1, Ev("a"))], 5)
                   | once_within(5, key="service", scheduler=clock))
    ((t, err),) = seen
    assert t == 1 and isinstance(err, ValueError)
    assert str(err) == ("once_within: a Ev has no attribute 'service' "
                        "(give key= an attribute it has, or a function)")
    assert not pending(clock)


@pytest.mark.parametrize("build, message", [
    (lambda: once_within("5x"), "once_within(window): '5x' is not a duration"),
    (lambda: debounce(0), "debounce(quiet): the duration must be > 0, not 0"),
    (lambda: accumulate(0, within=5), "accumulate(n): n must be a whole number >= 1, not 0"),
    (lambda: squelch("100"), "squelch(rate): '100' is not a rate"),
    (lambda: squelch("10/fortnight"), "squelch(rate): the period of '10/fortnight'"),
    (lambda: limit(0, print), "limit(concurrency): a whole number >= 1, not 0"),
    (lambda: limit(2), "limit: give the step(s) to run inside"),
    (lambda: limit(1, print, max_queue=-1), "limit(max_queue): a whole number >= 0, not -1"),
    (lambda: all_of(timeout=5), "all_of(*streams): give two or more Streams"),
])
def test_bad_arguments_fail_when_the_operator_is_built_in_one_line(
        build: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


# -- debounce ---------------------------------------------------------------------------

def test_debounce_emits_each_keys_last_item_after_its_quiet_time() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, marbles(clock, "aa-b-a-----|") | debounce(3, scheduler=clock))
    assert render(seen) == "----a-b-a--|"  # the docstring's diagram
    assert [x.n for _, x in seen if isinstance(x, Ev)] == [1, 3, 5]  # the LAST a of the burst


def test_debounce_completion_flushes_the_pending_items_in_order_of_last_arrival() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, marbles(clock, "aba|") | debounce(5, scheduler=clock))
    assert render(seen) == "---(ba|)"
    assert not pending(clock)


# -- accumulate -------------------------------------------------------------------------

def test_accumulate_fires_on_the_nth_item_within_the_window_and_starts_over() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, marbles(clock, "a-a---a-a-a--|")
                   | accumulate(3, within=5, scheduler=clock))
    assert render(seen) == "----------X--|"  # the docstring's diagram
    ((_, x), _end) = seen
    assert x == Accumulated(key="a", count=3, since=6.0, time=10.0, last=Ev("a", 10))


def test_accumulate_counts_keys_apart_and_fires_once_per_n() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, marbles(clock, "abababab|") | accumulate(2, within=10,
                                                                   scheduler=clock))
    # a at 0,2,4,6 → fires at 2 and 6; b at 1,3,5,7 → at 3 and 7: once per 2, not per item
    assert render(seen) == "--XX--XX|"
    assert [(x.key, x.since) for _, x in seen if isinstance(x, Accumulated)] == [
        ("a", 0), ("b", 1), ("a", 4), ("b", 5)]


def test_accumulate_forgets_a_key_a_window_after_its_last_item() -> None:
    from reops.streams.operators.accumulate import _Accumulate

    clock = TestScheduler()
    seen, sub = play(clock, marbles(clock, "ab-a") | accumulate(5, within=4, scheduler=clock),
                     until=3.5)
    (machine,) = live(_Accumulate)
    assert len(machine) == 2
    clock.advance_to(5.5)  # b (at 1) is out of the window
    assert len(machine) == 1
    clock.advance_to(7.5)  # so is a (last at 3)
    assert len(machine) == 0 and seen == []
    sub.dispose()


# -- all_of / any_of / not_all ------------------------------------------------------------

def test_all_of_fires_when_every_stream_had_the_key_within_the_timeout() -> None:
    clock = TestScheduler()
    s0, s1 = marbles(clock, "a-------a----|"), marbles(clock, "---a----------a|")
    seen, _ = play(clock, all_of(s0, s1, timeout=5, scheduler=clock))
    assert render(seen) == "---C-----------|"  # the docstring's diagram
    x = seen[0][1]
    assert x == Correlated(key="a", items=(Ev("a", 0), Ev("a", 3)), since=0.0, time=3.0)
    assert x.missing == ()


def test_any_of_fires_at_once_then_stays_quiet_for_the_key() -> None:
    clock = TestScheduler()
    s0, s1 = marbles(clock, "a-----a-|"), marbles(clock, "--a-----a|")
    seen, _ = play(clock, any_of(s0, s1, timeout=5, scheduler=clock))
    assert render(seen) == "C-----C--|"
    assert [x.items for _, x in seen[:2]] == [(Ev("a", 0), None), (Ev("a", 6), None)]


def test_not_all_fires_at_the_timeout_when_some_stream_stayed_silent() -> None:
    clock = TestScheduler()
    s0, s1 = marbles(clock, "a----b-------|"), marbles(clock, "--a----------|")
    seen, _ = play(clock, not_all(s0, s1, timeout=5, scheduler=clock))
    assert render(seen) == "----------C--|"
    x = seen[0][1]
    assert (x.key, x.items, x.missing, x.since) == ("b", (Ev("b", 5), None), (1,), 5.0)


def test_not_all_completion_fires_the_open_windows_and_all_of_drops_them() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, not_all(marbles(clock, "a|"), marbles(clock, "---|"),
                                  timeout=10, scheduler=clock))
    assert render(seen) == "---(C|)"
    clock = TestScheduler()
    seen, _ = play(clock, all_of(marbles(clock, "a|"), marbles(clock, "---|"),
                                 timeout=10, scheduler=clock))
    assert render(seen) == "---|"
    assert not pending(clock)


def test_correlating_results_by_host() -> None:
    """A Result stream and an event stream correlate on the host: a Result's key is its
    host, an event's `key="host"` a Host's name."""

    class Down(msgspec.Struct, frozen=True):
        host: Host

    clock = TestScheduler()
    failed = feed(clock, [(1, Result(host="web1", op="check", status="failed", code=1))], 9)
    down = feed(clock, [(3, Down(Host(name="web1", address="10.0.0.1"))),
                        (4, Down(Host(name="web2", address="10.0.0.2")))], 9)
    seen, _ = play(clock, all_of(failed, down, key="host", timeout=5, scheduler=clock))
    assert [(t, x.key, x.host) for t, x in seen if isinstance(x, Correlated)] == [
        (3, "web1", "web1")]


def test_summaries_over_results_stay_results_so_then_runs_the_next_step() -> None:
    """After `on(trigger)` items are Results: an Accumulated or a Correlated rides on the
    Result that fired it (as its `data`), so `then` runs the next step on that host."""
    clock = TestScheduler()
    restart = SlowStep(clock, 1, "restart")
    seen, _ = play(clock, trigger_results(clock, "aaa-b|")
                   | accumulate(3, within=10, scheduler=clock) | then(restart))
    assert restart.starts == [(2, "a")]
    ((t, r), end) = seen
    assert (t, r.host, r.op, end) == (3, "a", "restart", (5, "|"))
    (fired,) = r.earlier
    assert fired.op == "trigger" and fired.data == Accumulated(
        key="a", count=3, since=0.0, time=2.0,
        last=Result(host="a", op="trigger", status="ok", code=0))

    clock = TestScheduler()
    restart = SlowStep(clock, 1, "restart")
    seen, _ = play(clock, all_of(trigger_results(clock, "a---|"), trigger_results(clock, "--a|"),
                                 timeout=5, scheduler=clock) | then(restart))
    assert restart.starts == [(2, "a")]
    assert [(t, x.host, x.op) for t, x in seen if isinstance(x, Result)] == [(3, "a", "restart")]
    assert isinstance(seen[0][1].earlier[0].data, Correlated)


# -- squelch ------------------------------------------------------------------------------

def test_squelch_drops_above_the_rate_says_so_once_and_resumes_by_itself() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, marbles(clock, "xxxxx-------x|") | squelch("2/4s", scheduler=clock))
    assert render(seen) == "xxS-------R-x|"  # the docstring's diagram
    assert seen[2][1] == Squelched(rate="2/4s", count=3, since=2.0, time=2.0)
    assert seen[3][1] == Resumed(rate="2/4s", dropped=3, since=2.0, time=10.0)
    assert (seen[2][1].source, seen[2][1].kind) == ("flow", "squelched")


def test_a_long_storm_gives_one_squelched_and_one_resumed_in_bounded_memory() -> None:
    """1,000 events a second for 30 s against 100/10s: one Squelched, one Resumed counting
    every drop, and the operator never holds more than 100 arrival times."""
    from reops.streams.operators.squelch import _Squelch

    clock = TestScheduler()
    events = [(i / 1000, Ev("x", i)) for i in range(30_000)]
    seen, sub = play(clock, feed(clock, events, 100) | squelch(scheduler=clock), until=0)
    (machine,) = live(_Squelch)
    held: list[int] = []
    for t in range(1, 50):
        clock.advance_to(t + 0.0005)
        held.append(len(machine.passed))
    run_all(clock)
    kinds = [type(x).__name__ for _, x in seen]
    assert kinds == ["Ev"] * 100 + ["Squelched", "Resumed", "str"]
    resumed = seen[-2][1]
    # squelched at 0.1 s; checks every 10 s; the period 30.1-40.1 s is the first quiet one
    assert (resumed.since, resumed.time, resumed.dropped) == (0.1, 40.1, 30_000 - 100)
    assert max(held) <= 100
    sub.dispose()


def test_squelch_completion_reports_the_drops() -> None:
    clock = TestScheduler()
    seen, _ = play(clock, marbles(clock, "xxxx|") | squelch("1/10s", scheduler=clock))
    assert render(seen) == "xS--(R|)"
    assert seen[2][1].dropped == 3
    assert not pending(clock)


# -- limit and ignoring (with real `then` steps) -------------------------------------------

def trigger_results(clock: TestScheduler, text: str) -> Stream:
    """A marble string of host Results (the hosts are the letters), as a trigger would
    give them to `then`."""
    events, end = timeline(text)
    names = sorted({e.key for _, e in events})
    hosts = Hosts(Host(name=n, address=f"10.0.0.{i + 1}") for i, n in enumerate(names))
    return feed(clock, [(t, Result(host=e.key, op="trigger", status="ok", code=0))
                        for t, e in events], end, hosts=hosts)


class SlowStep:
    """A step whose run takes `took` virtual seconds per host; records when each started."""

    def __init__(self, clock: TestScheduler, took: float, op: str = "step") -> None:
        self.clock, self.took, self.op = clock, took, op
        self.starts: list[tuple[float, str]] = []
        self.__name__ = op

    def __call__(self, hosts: Hosts) -> Stream:
        def subscribe(observer: abc.ObserverBase[Any],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            for h in hosts:
                self.starts.append((self.clock.clock, h.name))

            def end(_s: abc.SchedulerBase, __: Any = None) -> None:
                for h in hosts:
                    observer.on_next(Result(host=h.name, op=self.op, status="ok", code=0))
                observer.on_completed()

            return self.clock.schedule_relative(self.took, end)

        return Stream(reactivex.create(subscribe), hosts, self)


def test_limit_runs_at_most_n_steps_at_once_the_rest_wait_in_order() -> None:
    clock = TestScheduler()
    step = SlowStep(clock, 3)
    seen, _ = play(clock, trigger_results(clock, "abc------|") | limit(2, step))
    assert render(seen) == "---AB-C--|"  # the docstring's diagram
    assert step.starts == [(0, "a"), (1, "b"), (3, "c")]


def test_limit_per_key_serialises_a_key_and_runs_keys_side_by_side() -> None:
    clock = TestScheduler()
    step = SlowStep(clock, 3)
    seen, _ = play(clock, trigger_results(clock, "aab---|") | limit(1, step, key="host"))
    assert step.starts == [(0, "a"), (2, "b"), (3, "a")]
    assert render(seen) == "---A-B(A|)"


def test_limit_holds_the_slot_through_a_pair_of_steps() -> None:
    """`limit(1, then(first), then(second))`: b's first step waits for a's second."""
    clock = TestScheduler()
    first, second = SlowStep(clock, 2, "first"), SlowStep(clock, 3, "second")
    seen, _ = play(clock, trigger_results(clock, "ab|")
                   | limit(1, then(first), then(second)))
    assert first.starts == [(0, "a"), (5, "b")]
    assert second.starts == [(2, "a"), (7, "b")]
    assert [(t, x.host, x.op, x.step) for t, x in seen if isinstance(x, Result)] == [
        (5, "a", "second", 2), (10, "b", "second", 2)]
    assert seen[-1] == (10, "|")


def test_ignoring_drops_a_keys_events_while_acting_on_it_and_for_the_grace() -> None:
    clock = TestScheduler()
    step = SlowStep(clock, 3)
    seen, _ = play(clock, trigger_results(clock, "a-a-a--a-|") | ignoring(step, grace=2,
                                                                          scheduler=clock))
    assert step.starts == [(0, "a"), (7, "a")]
    assert render(seen) == "---A------(A|)"  # the docstring's diagram


def test_ignoring_lets_other_keys_through_and_limit_ignore_own_does_the_same() -> None:
    clock = TestScheduler()
    step = SlowStep(clock, 3)
    seen, _ = play(clock, trigger_results(clock, "aba--b--|")
                   | limit(5, step, key="host", ignore_own="2s", scheduler=clock))
    # a at 2: a's step runs (0-3); b at 5: b's step ended at 4, its grace lasts until 6
    assert step.starts == [(0, "a"), (1, "b")]
    assert render(seen) == "---AB---|"


# -- every operator: errors, completion and disposal -----------------------------------------

def _keyed_ops(clock: TestScheduler) -> dict[str, Operator]:
    return {
        "once_within": once_within(5, scheduler=clock),
        "debounce": debounce(5, scheduler=clock),
        "accumulate": accumulate(5, within=5, scheduler=clock),
        "squelch": squelch("1/10s", scheduler=clock),
        "ignoring": ignoring(SlowStep(clock, 5), grace=5, scheduler=clock),
        "limit": limit(1, SlowStep(clock, 5), scheduler=clock),
    }


def _correlations(clock: TestScheduler) -> dict[str, Callable[..., Stream]]:
    return {
        "all_of": lambda *s: all_of(*s, timeout=5, scheduler=clock),
        "any_of": lambda *s: any_of(*s, timeout=5, scheduler=clock),
        "not_all": lambda *s: not_all(*s, timeout=5, scheduler=clock),
    }


def _through(clock: TestScheduler, name: str, upstream: Stream, other: Stream) -> Stream:
    """`upstream` through the operator `name`; a correlation gets `other` as its 2nd stream."""
    if name in _correlations(clock):
        return _correlations(clock)[name](upstream, other)
    return upstream | _keyed_ops(clock)[name]


NAMES = ["once_within", "debounce", "accumulate", "squelch", "ignoring", "limit",
         "all_of", "any_of", "not_all"]


@pytest.mark.parametrize("name", NAMES)
def test_disposing_cancels_every_timer(name: str) -> None:
    """Items at 0 and 1 leave a timer (a window, a quiet time, a step, a check) running;
    disposing at 2 cancels it: nothing is left to run, nothing comes. (The sources have
    nothing after 1, so what is pending at 2 is the operator's.)"""
    clock = TestScheduler()
    seen, sub = play(clock, _through(clock, name, trigger_results(clock, "aa"), feed(clock, [])),
                     until=2)
    assert pending(clock)
    before = list(seen)
    sub.dispose()
    assert not pending(clock)
    run_all(clock)
    assert seen == before


@pytest.mark.parametrize("name", NAMES)
def test_an_upstream_error_ends_the_stream_with_it_and_stops_the_timers(name: str) -> None:
    clock = TestScheduler()
    events, _ = timeline("aa")
    failing = feed(clock, [(t, Result(host=e.key, op="trigger", status="ok", code=0))
                           for t, e in events],
                   error_at=3, hosts=Hosts([Host(name="a", address="10.0.0.1")]))
    seen, _ = play(clock, _through(clock, name, failing, feed(clock, [])))
    t, err = seen[-1]
    assert t == 3 and isinstance(err, Boom)
    assert not any(x == "|" for _, x in seen)
    assert seen.left == []  # the operator's timers were cancelled as the error went out


@pytest.mark.parametrize("name", NAMES)
def test_completion_propagates_once_the_operator_is_settled(name: str) -> None:
    clock = TestScheduler()
    seen, _ = play(clock, _through(clock, name, trigger_results(clock, "a--|"),
                                   feed(clock, [], 3)))
    done = [t for t, x in seen if x == "|"]
    # the steps of limit/ignoring take 5: completion waits for them; the rest end at 3
    assert done == ([5.0] if name in ("limit", "ignoring") else [3.0])
    assert seen.left == []  # nothing of the operator outlives its completion


def test_event_operators_keep_an_endless_stream_endless() -> None:
    clock = TestScheduler()
    for op in _keyed_ops(clock).values():
        assert (feed(clock, []) | op).endless
    assert all_of(feed(clock, []), feed(clock, []), timeout=1).endless


# -- properties (hypothesis): per-key invariants of once_within and debounce ----------------

keys = st.sampled_from("abc")
times = st.lists(st.tuples(st.integers(0, 60), keys), max_size=40)


@settings(max_examples=150, deadline=None)
@given(times=times, window=st.integers(0, 10))
def test_once_within_per_key_model(times: list[tuple[int, str]], window: int) -> None:
    """An item passes iff its key passed nothing in the last `window` (+0.5, no ties);
    so per key, the passed items are more than a window apart, and every dropped one
    is within a window of a passed one."""
    span = window + 0.5
    events = sorted(times)
    clock = TestScheduler()
    seen, _ = play(clock, feed(clock, [(t, Ev(k, i)) for i, (t, k) in enumerate(events)], 100)
                   | once_within(span, scheduler=clock))
    last: dict[str, float] = {}
    expected = []
    for i, (t, k) in enumerate(events):
        if k not in last or t - last[k] > span:
            last[k] = t
            expected.append((float(t), Ev(k, i)))
    assert seen == [*expected, (100.0, "|")]


@settings(max_examples=150, deadline=None)
@given(times=times, quiet=st.integers(0, 10))
def test_debounce_per_key_model(times: list[tuple[int, str]], quiet: int) -> None:
    """Per key, an item is emitted iff no newer item of its key comes within `quiet`
    (+0.5), at its time + quiet, or at the end (70) if that comes first: so each key's
    emissions are in order and the last item of every key is always emitted."""
    span = quiet + 0.5
    end = 70.0
    events = sorted(times)
    clock = TestScheduler()
    seen, _ = play(clock, feed(clock, [(t, Ev(k, i)) for i, (t, k) in enumerate(events)], end)
                   | debounce(span, scheduler=clock))
    expected = []
    for i, (t, k) in enumerate(events):
        newer = [u for u, kk in events[i + 1:] if kk == k]
        if not newer or newer[0] > t + span:
            expected.append((min(t + span, end), Ev(k, i)))
    got = [(t, x) for t, x in seen if x != "|"]
    assert sorted(got, key=lambda p: (p[0], p[1].n)) == sorted(expected,
                                                               key=lambda p: (p[0], p[1].n))
    assert seen[-1] == (end, "|")
    for k in "abc":
        last = [i for i, (_, kk) in enumerate(events) if kk == k]
        if last:
            assert Ev(k, last[-1]) in [x for _, x in got]


def test_a_realistic_trigger_pipeline() -> None:
    """A flapping service check: the storm is squelched (its notices pass the later
    operators untouched), each host fires once per 3.5 s, and the check's echo of our own
    restart (a at 14, in the 3 s grace after a's restart) is ignored."""
    clock = TestScheduler()
    restart = SlowStep(clock, 2, "restart")
    pipeline = (trigger_results(clock, "aaaaab----a-a-ab-a|")
                | squelch("4/5s", scheduler=clock)
                | once_within(3.5, key="host", scheduler=clock)
                | ignoring(restart, key="host", grace=3, scheduler=clock))
    seen, _ = play(clock, pipeline)
    assert restart.starts == [(0, "a"), (10, "a"), (15, "b")]
    assert render(seen) == "--A-S----R--A----B|"
    assert seen[2][1] == Resumed(rate="4/5s", dropped=2, since=4.0, time=9.0)



def test_with_a_real_trigger_on_two_hosts() -> None:
    """With the real `every` and `on` (virtual time): both hosts tick every second;
    `accumulate(3, within=5)` fires each host's every 3rd tick, `once_within(10)` keeps one
    per host per 10 s (the firings at 3 and 15 of 3, 6, 9, 12, 15), and `then` restarts that
    host with the firing Result (its Accumulated as data) as the step before."""
    from reops import TriggerEvent, every, on

    clock = TestScheduler()
    hosts = Hosts([Host(name="web1", address="10.0.0.1"), Host(name="web2", address="10.0.0.2")])
    restart = SlowStep(clock, 1, "restart")
    seen, sub = play(clock, on(every(1, scheduler=clock), hosts=hosts)
                     | accumulate(3, within=5, key="host", scheduler=clock)
                     | once_within(10, key="host", scheduler=clock)
                     | then(restart), until=15.5)
    assert restart.starts == [(3, "web1"), (3, "web2"), (15, "web1"), (15, "web2")]
    assert [(t, x.host, x.op) for t, x in seen] == [(4, "web1", "restart"),
                                                    (4, "web2", "restart")]
    fired = seen[0][1].earlier[-1]
    assert isinstance(fired.data, Accumulated) and fired.data.count == 3
    assert isinstance(fired.data.last.data, TriggerEvent)
    sub.dispose()
    assert not pending(clock)


# -- one timer per subscription, keys forgotten once their window passed (issue 11) ---------

class Pushed:
    """An endless source pushed by hand at the clock's current time: what is pending on the
    clock is then only the operators' own timers (and the steps they run)."""

    def __init__(self, hosts: Hosts | None = None) -> None:
        self.subject: Subject[Any] = Subject()
        self.stream = Stream(self.subject, hosts or Hosts(), replay=False)  # type: ignore[arg-type]

    def push(self, item: Any) -> None:
        self.subject.on_next(item)


def started(build: Callable[[], tuple[Seen, abc.DisposableBase]]
            ) -> tuple[Keyed, Seen, abc.DisposableBase]:
    """Subscribe with `build`; the one operator subscription it started (to count its keys)."""
    before = {id(m) for m in live(Keyed)}
    seen, sub = build()
    (machine,) = [m for m in live(Keyed) if id(m) not in before]
    return machine, seen, sub


def results_over(names: list[str]) -> tuple[Hosts, list[Result]]:
    hosts = Hosts(Host(name=n, address="127.0.0.1") for n in names)
    return hosts, [Result(host=n, op="trigger", status="ok", code=0) for n in names]


def instant_step(hosts: Hosts) -> Stream:
    """A step that ends at once (so only the grace deadlines stay pending)."""
    return Stream(reactivex.of(*(Result(host=h.name, op="step", status="ok", code=0)
                                 for h in hosts)), hosts, instant_step)


WINDOWED: dict[str, Callable[[TestScheduler, Stream, Stream], Stream]] = {
    "once_within": lambda c, s, _: s | once_within(10, scheduler=c),
    "debounce": lambda c, s, _: s | debounce(10, scheduler=c),
    "accumulate": lambda c, s, _: s | accumulate(3, within=10, scheduler=c),
    "all_of": lambda c, s, o: all_of(s, o, timeout=10, scheduler=c),
    "any_of": lambda c, s, o: any_of(s, o, timeout=10, scheduler=c),
    "not_all": lambda c, s, o: not_all(s, o, timeout=10, scheduler=c),
    "ignoring": lambda c, s, _: s | ignoring(instant_step, grace=10, scheduler=c),
    "limit(ignore_own)": lambda c, s, _: s | limit(1, instant_step, key="host",
                                                   ignore_own=10, scheduler=c),
}


@pytest.mark.parametrize("name", list(WINDOWED))
def test_a_thousand_keys_in_one_window_cost_one_timer_not_one_each(name: str) -> None:
    """1,000 distinct keys within one window: the operator holds the 1,000 keys but keeps ONE
    timer on the clock (the old design scheduled, and cancelled, one per key and item);
    the keys all expire at their own deadlines, and nothing stays scheduled."""
    clock = TestScheduler()
    names = [f"h{i}" for i in range(1000)]
    hosts, results = results_over(names)
    source, other = Pushed(hosts), Pushed(hosts)
    machine, _, sub = started(lambda: play(
        clock, WINDOWED[name](clock, source.stream, other.stream), until=0))
    for i, r in enumerate(results):
        clock.advance_to(i / 1000)
        source.push(r)
    assert len(machine) == 1000
    assert len(pending(clock)) == 1
    clock.advance_to(10.5)  # the first half of the keys' deadlines passed
    assert 400 <= len(machine) <= 600
    assert len(pending(clock)) == 1
    clock.advance_to(11.5)
    assert len(machine) == 0 and not pending(clock)
    sub.dispose()


MEMORY: dict[str, Callable[[TestScheduler, Stream, Stream], Stream]] = {
    "once_within": lambda c, s, _: s | once_within(1, scheduler=c),
    "debounce": lambda c, s, _: s | debounce(1, scheduler=c),
    "accumulate": lambda c, s, _: s | accumulate(3, within=1, scheduler=c),
    "all_of": lambda c, s, o: all_of(s, o, timeout=1, scheduler=c),
    "any_of": lambda c, s, o: any_of(s, o, timeout=1, scheduler=c),
    "not_all": lambda c, s, o: not_all(s, o, timeout=1, scheduler=c),
    "ignoring": lambda c, s, _: s | ignoring(instant_step, grace=1, scheduler=c),
    "limit(ignore_own)": lambda c, s, _: s | limit(1, instant_step, key="host",
                                                   ignore_own=1, scheduler=c),
    "limit": lambda c, s, _: s | limit(1, SlowStep(c, 1), key="host", scheduler=c),
}


@pytest.mark.parametrize("name", list(MEMORY))
def test_the_key_table_shrinks_back_whatever_the_number_of_distinct_keys(name: str) -> None:
    """Distinct keys, 1,000 per virtual second, a window of 1 s (limit: a step of 1 s): the
    table holds only the keys of the last window, never every key seen, and empties once
    the last window has passed. (A table that never forgot would hold every key.)"""
    steps = name in ("ignoring", "limit(ignore_own)", "limit")
    total = 5_000 if steps else 50_000  # a step per item costs more: fewer, same shape
    clock = TestScheduler()
    hosts, results = results_over([f"h{i}" for i in range(total)])
    source, other = Pushed(hosts), Pushed(hosts)
    machine, _, sub = started(lambda: play(
        clock, MEMORY[name](clock, source.stream, other.stream), until=0))
    held = []
    for i, r in enumerate(results):
        clock.advance_to(i / 1000)
        source.push(r)
        if i % 250 == 0:
            held.append(len(machine))
    assert max(held) <= 1000 + 1  # the last second's keys (and the one arriving)
    assert min(held[4:]) >= 900  # it does hold them meanwhile
    clock.advance_to(total / 1000 + 2)
    assert len(machine) == 0
    sub.dispose()
    assert not pending(clock)


def test_a_key_expiring_while_others_wait_keeps_their_deadlines() -> None:
    """Keys armed at 0, 1 and 2 (window 5) expire at exactly 5, 6 and 7: the one timer
    moves on to each next head, and a key re-armed meanwhile goes to the back."""
    clock = TestScheduler()
    seen, _ = play(clock, marbles(clock, "abca------|") | debounce(5, scheduler=clock))
    # a re-armed at 3 (its deadline 8), b at 6, c at 7
    assert render(seen) == "------bca-|"


# -- limit: a bounded queue --------------------------------------------------------------------

def test_limit_drops_the_oldest_waiting_item_when_its_queue_is_full_and_says_so() -> None:
    """limit(1, step of 5, max_queue=2): a runs 0-5; the a of 1 and 2 wait; the a of 3
    pushes out the one of 1 (Overflowed, once); the a of 4 pushes out the one of 2; the
    queue empties when the a of 4 starts (Drained, dropped=2)."""
    clock = TestScheduler()
    step = SlowStep(clock, 5)
    src = feed(clock, [(t, Result(host="a", op="trigger", status="ok", code=0,
                                            started_at=float(t)))
                       for t in range(5)], 16, hosts=Hosts([Host(name="a", address="10.0.0.1")]))
    seen, _ = play(clock, src | limit(1, step, max_queue=2, scheduler=clock))
    assert step.starts == [(0, "a"), (5, "a"), (10, "a")]
    notices = [(t, x) for t, x in seen if isinstance(x, (Overflowed, Drained))]
    assert notices == [
        (3, Overflowed(limit="limit(1)", key=None, max_queue=2, since=3.0, time=3.0)),
        (10, Drained(limit="limit(1)", key=None, dropped=2, since=3.0, time=10.0))]
    # the items that ran: the first, then the newest two (the a of 3 and 4)
    ran = [x.earlier[0].started_at for _, x in seen if isinstance(x, Result)]
    assert ran == [0, 3, 4]
    assert seen[-1] == (16, "|")
    assert (notices[0][1].source, notices[0][1].kind) == ("flow", "overflowed")
    assert render(seen) == "---O-A----(AD)----A|"  # limit's docstring


def test_limit_queue_is_per_key_and_bounded_by_default() -> None:
    """A storm of 5,000 items of one key behind a slow step: at most MAX_QUEUE (1,000) wait,
    another key is untouched, and the Drained counts every item pushed out."""
    from reops.streams.operators._through import Through
    from reops.streams.operators.limit import MAX_QUEUE

    clock = TestScheduler()
    hosts, (ra, rb) = results_over(["a", "b"])
    source = Pushed(hosts)
    step = SlowStep(clock, 100)
    machine, seen, sub = started(lambda: play(
        clock, source.stream | limit(1, step, key="host", scheduler=clock), until=0))
    assert isinstance(machine, Through)
    for i in range(5000):
        clock.advance_to(i / 1000)
        source.push(ra)
    source.push(rb)
    assert len(machine.waiting["a"]) == MAX_QUEUE == 1000
    assert step.starts == [(0, "a"), (4.999, "b")]
    overflowed = [x for _, x in seen if isinstance(x, Overflowed)]
    assert overflowed == [Overflowed(limit="limit(1)", key="a", max_queue=1000,
                                     since=1.001, time=1.001)]
    source.subject.on_completed()
    run_all(clock)
    drained = [(t, x) for t, x in seen if isinstance(x, Drained)]
    assert drained == [(100_000.0, Drained(limit="limit(1)", key="a", dropped=5000 - 1 - 1000,
                                           since=1.001, time=100_000.0))]
    assert seen[-1][1] == "|" and len(machine) == 0
    sub.dispose()


def test_limit_max_queue_zero_drops_what_finds_its_key_busy() -> None:
    clock = TestScheduler()
    step = SlowStep(clock, 3)
    seen, _ = play(clock, trigger_results(clock, "aab-a---|")
                   | limit(1, step, key="host", max_queue=0, scheduler=clock))
    assert step.starts == [(0, "a"), (2, "b"), (4, "a")]
    assert [(t, type(x).__name__) for t, x in seen if isinstance(x, (Overflowed, Drained))] == [
        (1, "Overflowed"), (3, "Drained")]
    assert next(x for _, x in seen if isinstance(x, Drained)).dropped == 1


def test_limit_notices_pass_the_other_event_operators() -> None:
    clock = TestScheduler()
    step = SlowStep(clock, 3)
    seen, _ = play(clock, trigger_results(clock, "aaa---|")
                   | limit(1, step, max_queue=1, scheduler=clock)
                   | once_within(100, scheduler=clock))
    assert [type(x).__name__ for _, x in seen] == ["Overflowed", "Result", "Drained",
                                                   "str"]
    assert isinstance(seen[0][1], Overflowed)


# -- the wall clock (no scheduler): deadlines on the runtime loop ------------------------------

def test_on_the_runtime_loop_a_key_is_forgotten_once_its_window_passed() -> None:
    """No scheduler: the one timer is a call_later on the runtime loop and deadlines are on
    the monotonic clock. The key is held, then forgotten (polled with a deadline), and the
    same key passes again."""
    import time

    from reops.streams.operators.once_within import _OnceWithin

    source = Pushed()
    out: list[Any] = []
    machine, _, sub = started(lambda: (
        Seen(), (source.stream | once_within(0.05)).subscribe(out.append)))
    assert isinstance(machine, _OnceWithin)
    source.push(Ev("a", 1))
    source.push(Ev("a", 2))
    assert out == [Ev("a", 1)] and len(machine) == 1
    give_up = time.monotonic() + 10
    while len(machine) and time.monotonic() < give_up:
        time.sleep(0.01)
    assert len(machine) == 0
    source.push(Ev("a", 3))
    assert out == [Ev("a", 1), Ev("a", 3)]
    sub.dispose()
