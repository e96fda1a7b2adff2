"""The one shape of an event operator: per-subscription state keyed by the items' key, one
timer per key at most, and nothing kept once a key's timer has fired.

A subclass says what an item does (`on_item`) and what completion flushes (`flush`); this
class owns the lock, the timers, errors and completion, and disposal (every timer
cancelled: nothing runs after the subscription ends). Lines and Notices (what an operator
says about the stream itself, like `Squelched`) pass on untouched. Its length
is the number of live keys, which is what the memory tests count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

import msgspec
import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from reops.core.model import Event, Line, Result
from reops.streams.operators._timer import after
from reops.streams.stream import Operator, Stream, derived


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """What an event operator says about the stream itself (`Squelched`, `Resumed`): not a
    trigger, so the other event operators pass it on untouched, like a Line."""


#: items every event operator passes on untouched
PASS_THROUGH = (Line, Notice)


def carried(summary: Any, item: Any) -> Any:
    """What an operator that sums items up emits: over Results (what `on(trigger)` gives)
    the Result that fired it, with `summary` as its `data`, so `| then(step)` runs the
    step on that host; over other items, the summary itself."""
    if isinstance(item, Result):
        return msgspec.structs.replace(item, data=summary)
    return summary


class Keyed:
    """One subscription of an event operator (subclass it; see the module docstring)."""

    def __init__(self, observer: abc.ObserverBase[Any],
                 scheduler: abc.SchedulerBase | None) -> None:
        self.observer = observer
        self.scheduler = scheduler
        self.lock = threading.RLock()
        self.timers: dict[Hashable, abc.DisposableBase] = {}
        self.closed = False

    # -- what a subclass defines ------------------------------------------------------
    def on_item(self, item: Any) -> None:
        """One upstream item, not a Line or a Notice (called with the lock held)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Upstream completed: emit what completion settles (called with the lock held)."""

    def __len__(self) -> int:
        """Live keys: what this subscription holds right now."""
        return len(self.timers)

    # -- timers -------------------------------------------------------------------------
    def set_timer(self, key: Hashable, seconds: float, action: Callable[[], None]) -> None:
        """Run `action` in `seconds` for `key` (replacing `key`'s pending timer); the key's
        timer entry is gone before `action` runs."""
        old = self.timers.pop(key, None)
        if old is not None:
            old.dispose()

        def fire() -> None:
            with self.lock:
                if self.closed or self.timers.get(key) is not handle[0]:
                    return
                del self.timers[key]
                try:
                    action()
                except Exception as exc:  # a downstream failure ends the stream, loudly
                    self.fail(exc)

        handle: list[abc.DisposableBase] = []
        handle.append(after(seconds, fire, self.scheduler))
        if not self.closed:
            self.timers[key] = handle[0]

    def cancel_timer(self, key: Hashable) -> None:
        old = self.timers.pop(key, None)
        if old is not None:
            old.dispose()

    # -- the observer side ----------------------------------------------------------------
    def on_next(self, item: Any) -> None:
        with self.lock:
            if self.closed:
                return
            if isinstance(item, PASS_THROUGH):
                self.observer.on_next(item)
                return
            try:
                self.on_item(item)
            except Exception as exc:  # a bad key (one clear line), a failing key function
                self.fail(exc)

    def on_error(self, exc: Exception) -> None:
        with self.lock:
            self.fail(exc)

    def on_completed(self) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                self.flush()
            except Exception as exc:
                self.fail(exc)
                return
            self.close()
            self.observer.on_completed()

    def fail(self, exc: Exception) -> None:
        if not self.closed:
            self.close()
            self.observer.on_error(exc)

    def close(self) -> None:
        """Stop: cancel every timer and forget every key."""
        with self.lock:
            self.closed = True
            timers, self.timers = self.timers, {}
            self.forget()
        for t in timers.values():
            t.dispose()

    def forget(self) -> None:
        """Drop the per-key state a subclass keeps beside its timers."""


def keyed_observable(source: Observable[Any],
                     machine: Callable[[abc.ObserverBase[Any]], Keyed]) -> Observable[Any]:
    """`source` through a fresh `machine` per subscription; disposing cancels its timers."""

    def subscribe(observer: abc.ObserverBase[Any],
                  _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        m = machine(observer)
        sub = source.subscribe(m.on_next, m.on_error, m.on_completed)

        def dispose() -> None:
            m.close()
            sub.dispose()

        return Disposable(dispose)

    return reactivex.create(subscribe)


def keyed_operator(name: str, machine: Callable[[abc.ObserverBase[Any]], Keyed]) -> Operator:
    """A `|` operator running each subscription of the upstream through `machine`.

    Shared: several subscribers see the same decisions (one squelch, one firing), and the
    stream keeps the upstream's endless/replay nature (`Stream.derive`)."""

    def make(up: Stream) -> Observable[Event]:
        return keyed_observable(up.observable, machine)

    return derived(make, name, shared=True)
