"""Triggers in virtual time: every, cron, threshold and `on`, at exact times, no network.

reactivex's `TestScheduler` is the clock (`scheduler=`): each test states the virtual
second at which a trigger fires. The live runs (lab hosts, real files, a real hub with
the libvirt test driver, real agents) are in tests/test_triggers_live.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import reactivex
from reactivex import abc
from reactivex.testing import ReactiveTest, TestScheduler

from reops import Host, Hosts, Result, Stream, retry, then
from reops.core.durations import positive, rate, seconds
from reops.ops.metrics import Cpu, Metrics
from reops.streams.operators import failed, once_within
from reops.streams.triggers.clock import cron, every
from reops.streams.triggers.event import Domain, Tick, TriggerEvent
from reops.streams.triggers.metrics import metric, threshold
from reops.streams.triggers.on import on

HOUR = 3600.0


def fires(clock: TestScheduler, stream: Stream, until: float) -> list[tuple[float, Any]]:
    """(virtual time, item) of everything `stream` emits until `until`, then disposed."""
    seen: list[tuple[float, Any]] = []

    def on_error(e: Exception) -> None:
        raise e

    sub = stream.observable.subscribe(lambda e: seen.append((clock.clock, e)), on_error)
    clock.advance_to(until)
    sub.dispose()
    return seen


def ticks(seen: list[tuple[float, Any]]) -> list[tuple[float, int, float]]:
    """(fired at, n, due) of each tick."""
    out = []
    for t, e in seen:
        assert isinstance(e, TriggerEvent) and isinstance(e.payload, Tick)
        out.append((t, e.payload.n, e.payload.due))
    return out


class LateScheduler(TestScheduler):
    """Runs each scheduled action late by the next of `delays` (then on time): a busy
    loop, or a machine that slept."""

    def __init__(self, delays: list[float]) -> None:
        super().__init__()
        self.delays = delays

    def schedule_absolute(self, duetime: Any, action: Any, state: Any = None
                          ) -> abc.DisposableBase:
        late = self.delays.pop(0) if self.delays else 0.0
        return super().schedule_absolute(self.to_seconds(duetime) + late, action, state)


# ── every ──────────────────────────────────────────────────────────────────────────


def test_every_ticks_one_period_after_subscribing_then_on_its_grid() -> None:
    clock = TestScheduler()
    clock.advance_to(5)
    seen = fires(clock, every("30s", scheduler=clock), 100)
    assert ticks(seen) == [(35, 0, 35), (65, 1, 65), (95, 2, 95)]
    e = seen[0][1]
    assert (e.source, e.kind, e.key, e.host, e.topic) == (
        "clock", "tick", "every 30s", None, "event.clock.tick")


def test_every_immediately_ticks_at_subscription() -> None:
    clock = TestScheduler()
    assert ticks(fires(clock, every(10, immediately=True, scheduler=clock), 25)) == [
        (0, 0, 0), (10, 1, 10), (20, 2, 20)]


def test_every_does_not_drift_when_its_callbacks_run_late() -> None:
    """Each tick runs 3 s late; the next is still due on the grid (not late + period)."""
    clock = LateScheduler([3, 3, 3, 3])
    assert ticks(fires(clock, every("10s", scheduler=clock), 45)) == [
        (13, 0, 10), (23, 1, 20), (33, 2, 30), (43, 3, 40)]


def test_every_skips_the_slots_it_slept_through_instead_of_bursting() -> None:
    clock = LateScheduler([25])  # the first tick, due at 10, runs at 35
    assert ticks(fires(clock, every("10s", scheduler=clock), 61)) == [
        (35, 0, 10), (40, 1, 40), (50, 2, 50), (60, 3, 60)]


class CountingScheduler(TestScheduler):
    """Counts the scheduled actions it actually runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ran = 0

    def schedule_absolute(self, duetime: Any, action: Any, state: Any = None
                          ) -> abc.DisposableBase:
        def counted(scheduler: Any, st: Any = None) -> Any:
            self.ran += 1
            return action(scheduler, st)

        return super().schedule_absolute(duetime, counted, state)


def test_every_leaves_no_timer_running_once_disposed() -> None:
    clock = CountingScheduler()
    assert len(fires(clock, every("10s", scheduler=clock), 25)) == 2
    clock.advance_to(100)  # disposed at 25: the tick due at 30 never runs
    assert clock.ran == 2


# ── cron ───────────────────────────────────────────────────────────────────────────


def test_cron_fires_when_the_expression_matches() -> None:
    """The scheduler's clock is epoch seconds: virtual 0 is 1970-01-01 00:00 UTC."""
    clock = TestScheduler()
    seen = fires(clock, cron("*/5 * * * *", tz="UTC", scheduler=clock), 16 * 60)
    assert ticks(seen) == [(300, 0, 300), (600, 1, 600), (900, 2, 900)]
    assert (seen[0][1].source, seen[0][1].key) == ("cron", "*/5 * * * *")


def test_cron_daily_and_on_weekdays_only() -> None:
    clock = TestScheduler()
    daily = ticks(fires(clock, cron("30 3 * * *", tz="UTC", scheduler=clock), 3 * 24 * HOUR))
    assert [t for t, _, _ in daily] == [d * 24 * HOUR + 3.5 * HOUR for d in range(3)]
    # 1970-01-01 was a Thursday: the first Monday 09:00 is Jan 5
    clock = TestScheduler()
    monday = ticks(fires(clock, cron("0 9 * * 1", tz="UTC", scheduler=clock), 8 * 24 * HOUR))
    assert [t for t, _, _ in monday] == [4 * 24 * HOUR + 9 * HOUR]


def test_cron_late_callback_fires_the_next_slot_not_a_drifted_one() -> None:
    clock = LateScheduler([40])  # due at 60, runs at 100: the next is 120, not 160
    assert ticks(fires(clock, cron("* * * * *", tz="UTC", scheduler=clock), 185)) == [
        (100, 0, 60), (120, 1, 120), (180, 2, 180)]


def test_cron_in_a_named_zone() -> None:
    clock = TestScheduler()
    # 09:00 in Paris on 1970-01-01 is 08:00 UTC (CET, +1 h)
    seen = ticks(fires(clock, cron("0 9 * * *", tz="Europe/Paris", scheduler=clock), 24 * HOUR))
    assert [t for t, _, _ in seen] == [8 * HOUR]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: cron("61 * * * *"), "cron('61 * * * *'): "),
    (lambda: cron("* * *"), "cron('* * *'): Wrong number of fields"),
    (lambda: cron("* * * * *", tz="Mars/Olympus"), "unknown time zone"),
    (lambda: every("soon"), "every(period): 'soon' is not a duration"),
    (lambda: every(0), "every(period): the duration must be > 0, not 0"),
])
def test_bad_schedules_are_one_clear_line(make: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_durations_as_people_write_them() -> None:
    assert [seconds(x) for x in ("30s", "5m", "1h30m", "250ms", "2d", "1.5", 7)] == [
        30, 300, 5400, 0.25, 172800, 1.5, 7]
    with pytest.raises(ValueError, match="is not a duration"):
        seconds("5 minutes")


def test_one_duration_parser_for_triggers_and_operators() -> None:
    """Triggers and event operators share reops.core.durations: same forms, same errors."""
    assert seconds("1H30M") == 5400 and seconds(0) == 0 and positive("500ms", "x") == 0.5
    assert rate("100/10s", "squelch(rate)") == (100, 10) and rate("5/m", "r") == (5, 60)
    for bad, message in [(lambda: seconds(-1, "threshold(for_)"),
                          "threshold(for_): the duration must be >= 0, not -1"),
                         (lambda: positive("0s", "x"), "x: the duration must be > 0, not '0s'"),
                         (lambda: rate("0/s", "r"), "r: the count in '0/s' must be a whole"),
                         (lambda: once_within("2 weeks"), "is not a duration"),
                         (lambda: every("2 weeks"), "is not a duration")]:
        with pytest.raises(ValueError) as err:
            bad()
        assert message in str(err.value) and "\n" not in str(err.value)


# ── threshold ──────────────────────────────────────────────────────────────────────


def sample(host: str, busy: float | None, status: str = "ok") -> Result:
    data = Metrics(at=0, cpu=Cpu(busy_pct=busy))
    return Result(host=host, op="metrics", status=status, code=0 if status == "ok" else 1,
                  data=data)


def samples(clock: TestScheduler, plan: list[tuple[float, Result]]) -> Stream:
    hot = clock.create_hot_observable(*(ReactiveTest.on_next(t, r) for t, r in plan))
    hosts = Hosts(Host(name=n, address=f"10.9.0.{i + 1}")
                  for i, n in enumerate(dict.fromkeys(r.host for _, r in plan)))
    return Stream(hot, hosts, replay=False)


def crossings(seen: list[tuple[float, Any]]) -> list[tuple[float, str, str, float, float]]:
    return [(t, e.kind, e.key, e.payload.value, e.payload.since) for t, e in seen]


def test_threshold_fires_once_when_held_for_long_enough_and_once_on_recovery() -> None:
    clock = TestScheduler()
    plan = [(5, sample("a", 50)), (10, sample("a", 95)), (15, sample("a", 96)),
            (20, sample("a", 97)), (25, sample("a", 99)), (30, sample("a", 40)),
            (35, sample("a", 30)), (40, sample("a", 91)), (60, sample("a", 92)),
            (10, sample("b", 95)), (15, sample("b", 50)),   # held 5 s < 10 s: never fires
            (12, sample("c", 99, "failed"))]                # a failed sample: no state
    seen = fires(clock, threshold(samples(clock, plan), "cpu.busy > 90", for_="10s",
                                  scheduler=clock), 100)
    assert crossings(seen) == [(20, "crossed", "a", 97, 10), (30, "recovered", "a", 40, 30),
                               (60, "crossed", "a", 92, 40)]
    e = seen[0][1]
    assert e.topic == "event.metric.crossed" and e.host.address == "10.9.0.1"


def test_threshold_without_for_fires_on_the_first_sample_over() -> None:
    clock = TestScheduler()
    plan = [(1, sample("a", 10)), (2, sample("a", 80)), (3, sample("a", 81))]
    seen = fires(clock, threshold(samples(clock, plan), "cpu >= 80", scheduler=clock), 10)
    assert crossings(seen) == [(2, "crossed", "a", 80, 2)]


def test_threshold_with_a_function_and_metric_paths() -> None:
    clock = TestScheduler()
    plan = [(1, sample("a", 10)), (2, sample("a", 70))]
    seen = fires(clock, threshold(samples(clock, plan), lambda r: r.data.cpu.busy_pct > 60,
                                  scheduler=clock), 10)
    assert [(t, e.kind) for t, e in seen] == [(2, "crossed")]
    m = Metrics(at=0, cpu=Cpu(busy_pct=12.5))
    assert metric(m, "cpu.busy") == metric(m, "cpu.busy_pct") == metric(m, "cpu_busy_pct") == 12.5
    assert metric(m, "memory.used_pct") is None and metric({"x": {"y": 3}}, "x.y") == 3


def test_threshold_fires_on_every_flip_of_every_host() -> None:
    clock = TestScheduler()
    plan = [(t, sample(f"h{t % 3}", 99 if t % 2 else 1)) for t in range(1, 3001)]
    seen = fires(clock, threshold(samples(clock, plan), "cpu > 90", scheduler=clock), 4000)
    # each host's samples alternate over/under, so each one flips its state, except h2's
    # first (under: nothing to recover from)
    assert len(seen) == 2999
    assert [e.kind for _, e in seen if e.key == "h2"][:2] == ["crossed", "recovered"]
    assert seen[0][1].key == "h1" and seen[0][1].kind == "crossed"


def test_threshold_bad_condition_is_one_clear_line() -> None:
    clock = TestScheduler()
    with pytest.raises(ValueError, match=r"cannot read condition 'cpu is high'; write METRIC"):
        threshold(samples(clock, []), "cpu is high")
    with pytest.raises(ValueError, match="is not a duration"):
        threshold(samples(clock, []), "cpu > 1", for_="a while")


# ── on ─────────────────────────────────────────────────────────────────────────────


def vm_event(name: str, address: str | None, kind: str = "started") -> TriggerEvent:
    host = Host(name=name, address=address) if address else None
    return TriggerEvent(source="libvirt", kind=kind, key=name, time=1.0, host=host,
                        payload=Domain(hypervisor="lab", domain=name, uuid="", event="STARTED",
                                       detail="BOOTED", type="redis"))


def where_am_i(hosts: Hosts) -> Stream:
    """A next step that reports the address it was given (no network)."""
    return Stream(reactivex.from_iterable(
        [Result(host=h.name, op="where", status="ok", code=0, out=h.address) for h in hosts]),
        hosts)


def test_on_runs_the_next_step_on_each_events_host_as_it_arrives() -> None:
    clock = TestScheduler()
    web = Hosts([Host(name="web1", address="127.0.1.1"), Host(name="web2", address="127.0.1.2"),
                 Host(name="vm3", address="127.0.1.3", user="ops")])
    tick = TriggerEvent(source="clock", kind="tick", key="every 30s", time=30.0,
                        payload=Tick(n=0, due=30.0))
    hot = clock.create_hot_observable(
        ReactiveTest.on_next(10, vm_event("vm1", "192.168.122.5")),
        ReactiveTest.on_next(20, vm_event("vm2", None)),
        ReactiveTest.on_next(30, tick),
        ReactiveTest.on_next(40, vm_event("vm3", "192.168.122.9")))
    stream = on(hot, hosts=web) | then(where_am_i)
    seen = [(t, r.host, r.op, r.status, r.out) for t, r in fires(clock, stream, 50)]
    assert seen == [
        (10, "vm1", "where", "ok", "192.168.122.5"),        # the event's own host
        (20, "vm2", "event.libvirt.started", "unreachable", ""),  # no address: not run
        (30, "web1", "where", "ok", "127.0.1.1"),           # a tick runs on every host given
        (30, "web2", "where", "ok", "127.0.1.2"),
        (30, "vm3", "where", "ok", "127.0.1.3"),
        (40, "vm3", "where", "ok", "127.0.1.3"),           # hosts= names it: the inventory's
    ]
    assert "vm1" in stream.hosts and "vm2" not in stream.hosts


def test_on_event_result_is_the_first_step_and_says_why_when_unreachable() -> None:
    clock = TestScheduler()
    hot = clock.create_hot_observable(ReactiveTest.on_next(1, vm_event("vm1", "10.0.0.5")),
                                      ReactiveTest.on_next(2, vm_event("vm2", None)))
    seen = [r for _, r in fires(clock, on(hot) | then(where_am_i), 5)]
    first = seen[0].earlier[0]
    assert (first.op, first.status, first.transport, first.started_at) == (
        "event.libvirt.started", "ok", "libvirt", 1.0)
    assert first.data.key == "vm1" and first.data.payload.type == "redis"
    assert seen[1].code == -1 and "vm2, which has no address yet" in seen[1].err


def test_on_a_hostless_trigger_without_hosts_is_refused() -> None:
    clock = TestScheduler()
    with pytest.raises(ValueError, match=r"on\(every\('30s'\)\): its events name no host"):
        on(every("30s", scheduler=clock))


def test_retry_after_on_reruns_the_step_from_the_hosts_last_event() -> None:
    clock = TestScheduler()
    runs: list[str] = []

    def flaky(hosts: Hosts) -> Stream:
        def one(h: Host) -> Result:
            runs.append(h.name)
            ok = runs.count(h.name) > 1
            return Result(host=h.name, op="flaky", status="ok" if ok else "failed",
                          code=0 if ok else 1)

        return Stream(reactivex.from_iterable([one(h) for h in hosts]), hosts)

    hot = clock.create_hot_observable(ReactiveTest.on_next(1, vm_event("vm1", "10.0.0.5")))
    seen = [r for _, r in fires(clock, on(hot) | then(flaky) | retry(1, when=failed), 5)]
    assert runs == ["vm1", "vm1"] and [r.status for r in seen] == ["ok"]
    assert seen[0].earlier[0].op == "event.libvirt.started"


class _Body:
    """Stands in for the bus's ResultBody (host, status, at)."""

    def __init__(self, host: str, at: float) -> None:
        self.host, self.status, self.at = host, "failed", at


class _Message:
    """Stands in for a `bus(...)` item: topic and body."""

    def __init__(self, topic: str, body: Any) -> None:
        self.topic, self.body = topic, body


def test_on_takes_bus_messages_as_events_about_their_host() -> None:
    clock = TestScheduler()
    inv = Hosts([Host(name="web1", address="127.0.1.1", user="ops")])
    hot = clock.create_hot_observable(
        ReactiveTest.on_next(1, _Message("result.exec.failed.web1", _Body("web1", 0.5))),
        ReactiveTest.on_next(2, _Message("result.exec.failed.db7", _Body("db7", 0.7))),
        ReactiveTest.on_next(3, "not an event"))
    seen = [r for _, r in fires(clock, on(hot, hosts=inv) | then(where_am_i), 5)]
    assert [(r.host, r.out) for r in seen[:2]] == [("web1", "127.0.1.1"),  # the inventory's
                                                   ("db7", "db7")]  # only its name is known
    event = seen[0].steps[0].data
    assert (event.source, event.kind, event.key, event.time, event.payload.topic) == (
        "bus", "result", "web1", 0.5, "result.exec.failed.web1")
    assert seen[2] == "not an event"


class _EventBody:
    """Stands in for the bus's EventBody: a published TriggerEvent as plain data."""

    def __init__(self, event: TriggerEvent) -> None:
        import msgspec

        self.source, self.kind, self.data = event.source, event.kind, msgspec.to_builtins(event)


def test_on_takes_a_published_trigger_event_back_as_that_event() -> None:
    clock = TestScheduler()
    sent = vm_event("vm1", "192.168.122.5")
    hot = clock.create_hot_observable(ReactiveTest.on_next(
        1, _Message("event.libvirt.started", _EventBody(sent))))
    (r,) = [r for _, r in fires(clock, on(hot) | then(where_am_i), 5)]
    assert (r.host, r.out, r.steps[0].op) == ("vm1", "192.168.122.5", "event.libvirt.started")
    assert r.steps[0].data == sent
