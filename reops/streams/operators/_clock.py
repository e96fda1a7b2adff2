"""The time an event operator reads: the test's virtual clock when given a `scheduler`,
else the wall clock (the times operators report, like `since`, then read as dates).

Operators read the clock on every item, so each subscription picks its clock function
once (`stamps`, `ticks`): a virtual clock is read as its float seconds, never through
`scheduler.now` (a datetime built per call, the costliest part of the old hot path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from reactivex import abc
from reactivex.scheduler import VirtualTimeScheduler

Clock = Callable[[], float]


def now(scheduler: abc.SchedulerBase | None) -> float:
    """Seconds since the epoch: `scheduler`'s clock (virtual in tests), else `time.time()`."""
    if scheduler is None:
        return time.time()
    if isinstance(scheduler, VirtualTimeScheduler):
        return _virtual(scheduler)
    return scheduler.now.timestamp()


def stamps(scheduler: abc.SchedulerBase | None) -> Clock:
    """The clock for times an operator reports (`since`, `time`): `now`, picked once."""
    if scheduler is None:
        return time.time
    if isinstance(scheduler, VirtualTimeScheduler):
        return lambda: _virtual(scheduler)
    return lambda: scheduler.now.timestamp()


def ticks(scheduler: abc.SchedulerBase | None) -> Clock:
    """The clock deadlines are kept on: the scheduler's, else `time.monotonic` (the
    runtime loop's own clock, which a wall-clock step never moves backwards)."""
    if scheduler is None:
        return time.monotonic
    return stamps(scheduler)


def _virtual(scheduler: VirtualTimeScheduler) -> float:
    """A virtual clock's seconds; exactly `scheduler.now.timestamp()`, without the datetime
    (its clock is float seconds already rounded to the microsecond, or a datetime)."""
    clock = scheduler.clock
    if isinstance(clock, datetime):
        return clock.timestamp()
    return float(clock)
