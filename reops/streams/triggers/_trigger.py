"""What every trigger shares: the `Trigger` Stream, and clocks that fire at absolute times.

A trigger is an endless Stream (no history for late subscribers) of `TriggerEvent`s over
no hosts: its events name the hosts (`on(trigger)` turns them into Results for them).
Time-based triggers take `scheduler=` (a reactivex scheduler, e.g. a test's
`TestScheduler` in virtual time); without one they run on the runtime loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import time
import types
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from reops.core.model import Event, Hosts
from reops.core.runtime import get_runtime
from reops.streams.stream import Stage, Stream, from_async
from reops.streams.triggers.event import TriggerEvent

Emit = Callable[[TriggerEvent], None]

#: set by the hub's flow runner while it builds a flow: (name, events) -> the events a
#: trigger reads, so two versions of a flow read ONE live source (reops.hub.flows)
sharing: contextvars.ContextVar[
    Callable[[str, Observable[TriggerEvent]], Observable[TriggerEvent]] | None] = (
    contextvars.ContextVar("reops_trigger_sharing", default=None))


class Trigger(Stream):
    """An endless Stream of TriggerEvents; `hosted` says whether its events name hosts
    (libvirt, agents, jobs, metrics) or not (clock, cron, files: `on(..., hosts=)` then
    says where they run)."""

    __slots__ = ("hosted", "name")

    def __init__(self, events: Observable[TriggerEvent], name: str, *, hosted: bool,
                 args: Any = None) -> None:
        """`name` is how it reads; its identity (what a reload compares to keep it) is
        `name` with `args`, by default every argument of the function that made it
        (`every`'s period AND its keywords: `immediately=True` is another trigger)."""
        stage = Stage(name, args if args is not None else _caller_args(sys._getframe(1)))
        share = sharing.get()
        if share is not None:
            events = share(f"{name} {stage.ident}", events)
        super().__init__(cast("Observable[Event]", events), Hosts(), replay=False)
        self.name = name
        self.hosted = hosted
        self.stages = (stage,)

    def __repr__(self) -> str:
        return f"<trigger {self.name}>"


def _caller_args(frame: types.FrameType) -> tuple[str, dict[str, Any]]:
    """The function that made a trigger and its arguments as they are now (positional
    and keyword alike): every trigger constructor is identified without listing them."""
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS) + bool(
        code.co_flags & inspect.CO_VARKEYWORDS)
    local = frame.f_locals
    return code.co_name, {n: local[n] for n in code.co_varnames[:count]
                          if n not in ("self", "cls") and n in local}


def pumped(pump: Callable[[Emit], Coroutine[Any, Any, None]]) -> Observable[TriggerEvent]:
    """A coroutine that emits TriggerEvents, run on the runtime loop per subscription."""
    return from_async(pump)


class Clock(Protocol):
    """Absolute time in one time base: `now()`, `at(when, action)` (dispose to cancel),
    and `wall(t)`: that time as epoch seconds (for the events' `time` and `due`)."""

    def now(self) -> float: ...
    def at(self, when: float, action: Callable[[], None]) -> abc.DisposableBase: ...
    def wall(self, t: float) -> float: ...


class LoopClock:
    """The runtime loop's monotonic clock (immune to wall-clock steps): for periods."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        return self.loop.time()

    def at(self, when: float, action: Callable[[], None]) -> abc.DisposableBase:
        return Disposable(self.loop.call_at(when, action).cancel)

    def wall(self, t: float) -> float:
        return time.time() + (t - self.loop.time())


class WallClock(LoopClock):
    """Epoch seconds, timed on the runtime loop: for calendars (cron)."""

    def now(self) -> float:
        return time.time()

    def at(self, when: float, action: Callable[[], None]) -> abc.DisposableBase:
        return super().at(self.loop.time() + (when - time.time()), action)

    def wall(self, t: float) -> float:
        return t


class SchedulerClock:
    """A reactivex scheduler's clock, in its epoch seconds (virtual time in tests)."""

    def __init__(self, scheduler: abc.SchedulerBase) -> None:
        self.scheduler = scheduler

    def now(self) -> float:
        return scheduler_now(self.scheduler)

    def at(self, when: float, action: Callable[[], None]) -> abc.DisposableBase:
        def invoke(_: abc.SchedulerBase, __: Any = None) -> None:
            action()

        return self.scheduler.schedule_absolute(when, invoke)

    def wall(self, t: float) -> float:
        return t


def scheduler_now(scheduler: abc.SchedulerBase | None) -> float:
    """Now in epoch seconds: the scheduler's (virtual) time, else the wall clock."""
    if scheduler is None:
        return time.time()
    return scheduler.to_seconds(scheduler.now)


def timed(start: Callable[[Clock, Emit], Callable[[], None]],
          scheduler: abc.SchedulerBase | None, *, wall: bool) -> Observable[TriggerEvent]:
    """Events of `start(clock, emit)` (which returns its `stop`) per subscription: on
    `scheduler` when given, else on the runtime loop (`wall`: an epoch clock for
    calendars, else the loop's monotonic one)."""
    if scheduler is not None:
        clock = SchedulerClock(scheduler)

        def subscribe(observer: abc.ObserverBase[TriggerEvent],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            return Disposable(start(clock, observer.on_next))

        return reactivex.create(subscribe)

    async def pump(emit: Emit) -> None:
        loop = get_runtime().loop
        stop = start(WallClock(loop) if wall else LoopClock(loop), emit)
        try:
            await asyncio.Future()  # until disposed
        finally:
            stop()

    return pumped(pump)
