"""One timer for the time-based operators: the runtime loop by default, any scheduler on
request, so a test drives `timeout` and `retry(delay=)` in virtual time (reactivex's
`TestScheduler`) and asserts exact times instead of wall-clock margins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from reactivex import abc
from reactivex.disposable import Disposable

from reops.core.runtime import get_runtime


def after(seconds: float, action: Callable[[], None],
          scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
    """Run `action` once, `seconds` from now; disposing the result cancels it.

    Without a scheduler the timer is a `call_later` on the runtime loop (no thread timer),
    set and cancelled from any thread without blocking the caller.
    """
    if scheduler is not None:
        def invoke(_: abc.SchedulerBase, __: Any = None) -> None:
            action()

        return scheduler.schedule_relative(seconds, invoke)
    rt = get_runtime()
    handles: list[asyncio.TimerHandle] = []
    rt.call_soon(lambda: handles.append(rt.loop.call_later(seconds, action)))
    return Disposable(lambda: rt.call_soon(_cancel_all, handles))


def _cancel_all(handles: list[asyncio.TimerHandle]) -> None:
    for h in handles:
        h.cancel()
