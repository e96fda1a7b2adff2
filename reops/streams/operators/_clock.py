"""The time an event operator reads: the test's virtual clock when given a `scheduler`,
else the wall clock (the times operators report, like `since`, then read as dates)."""

from __future__ import annotations

import time

from reactivex import abc


def now(scheduler: abc.SchedulerBase | None) -> float:
    """Seconds since the epoch: `scheduler`'s clock (virtual in tests), else `time.time()`."""
    if scheduler is None:
        return time.time()
    return scheduler.now.timestamp()
