"""Clock triggers: `every("30s")` and `cron("*/5 * * * *")`, endless and drift-free.

    on(every("5m"), hosts=inv.select("group:web")) | then(exec_, "uptime")
    on(cron("0 3 * * *"), hosts=db) | then(backup)

Each next firing is computed from the schedule (the n-th slot of the period's grid, or
the next time the cron expression matches after the last slot), never from "now +
period", so a late callback does not push later ones back. Slots missed entirely (the
machine slept) are skipped, not fired in a burst. Cron expressions are evaluated by
`cronsim` (5 fields, or 6 with seconds first; Debian cron's day-of-month/day-of-week
rule), in local time unless `tz=` names a zone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from reactivex import abc

from reops.core.durations import positive
from reops.streams.triggers._trigger import Clock, Emit, Trigger, timed
from reops.streams.triggers.event import Source, Tick, TriggerEvent

#: next(due, now) -> the next slot after `due`, skipping those already past at `now`
Following = Callable[[float, float], float]


def every(period: str | float, *, immediately: bool = False,
          scheduler: abc.SchedulerBase | None = None) -> Trigger:
    """A tick every `period` ("30s", "5m", or seconds) from subscription, on a fixed grid.

    The first tick comes one period after subscribing (`immediately=True`: at once).
    Timed on `scheduler` when given (virtual time in tests), else the runtime loop's
    monotonic clock (a wall-clock step does not move the grid).
    """
    step = positive(period, "every(period)")
    label = period if isinstance(period, str) else f"{period:g}s"

    def start(clock: Clock, emit: Emit) -> Callable[[], None]:
        first = clock.now() + (0.0 if immediately else step)

        def following(due: float, now: float) -> float:
            slot = round((due - first) / step) + 1
            late = math.floor((now - first) / step) + 1  # slots already past: skipped
            return first + max(slot, late) * step

        return _fire(clock, first, following, emit, "clock", f"every {label}")

    return Trigger(timed(start, scheduler, wall=False), f"every({label!r})", hosted=False)


def cron(expr: str, *, tz: str | tzinfo | None = None,
         scheduler: abc.SchedulerBase | None = None) -> Trigger:
    """A tick each time the cron expression matches ("*/5 * * * *": every 5 minutes).

    Local time unless `tz` ("UTC", "Europe/Paris" or a tzinfo); timed on `scheduler`
    when given (its clock is read as epoch seconds), else the wall clock on the runtime
    loop. A bad expression or zone raises ValueError here, saying which.
    """
    zone = _zone(tz)
    now = datetime.now(zone) if zone is not None else datetime.now()
    try:
        CronSim(expr, now)
    except CronSimError as e:
        raise ValueError(f"cron({expr!r}): {e}") from None

    def after(t: float) -> float:
        at = datetime.fromtimestamp(t, zone) if zone is not None else datetime.fromtimestamp(t)
        return next(CronSim(expr, at)).timestamp()

    def start(clock: Clock, emit: Emit) -> Callable[[], None]:
        return _fire(clock, after(clock.now()), lambda due, now: after(max(due, now)), emit,
                     "cron", expr)

    return Trigger(timed(start, scheduler, wall=True), f"cron({expr!r})", hosted=False)


def _zone(tz: str | tzinfo | None) -> tzinfo | None:
    if tz is None or isinstance(tz, tzinfo):
        return tz
    if tz.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"cron(tz={tz!r}): unknown time zone (e.g. \"UTC\", "
                         "\"Europe/Paris\")") from None


def _fire(clock: Clock, first: float, following: Following, emit: Emit,
          source: Source, key: str) -> Callable[[], None]:
    """Fire at `first`, then at each `following` slot, until the returned stop is called.

    One timer at a time and no history: a tick is an event, its count and its due time.
    """
    timer: list[abc.DisposableBase] = []
    stopped = [False]

    def arm(n: int, due: float) -> None:
        if not stopped[0]:
            timer[:] = [clock.at(due, lambda: fire(n, due))]

    def fire(n: int, due: float) -> None:
        if stopped[0]:
            return
        at = clock.wall(due)
        emit(TriggerEvent(source=source, kind="tick", key=key, time=clock.wall(clock.now()),
                          payload=Tick(n=n, due=at)))
        arm(n + 1, following(due, clock.now()))

    def stop() -> None:
        stopped[0] = True
        for t in timer:
            t.dispose()
        timer.clear()

    arm(0, first)
    return stop
