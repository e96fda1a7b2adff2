"""The one shape of an event operator: per-subscription state keyed by the items' key,
ONE timer per subscription, and nothing kept once a key's window has passed.

Why one timer and not one per key: an operator uses one duration (its window, quiet time,
timeout or grace), and the clock only moves forward, so the keys' deadlines fall in the
order the keys were last armed. The deadline table is that order (an insertion-ordered
dict: re-arming a key moves it to the end), and one timer waits for its head; when it
fires, every key whose deadline has passed is expired and the timer is set for the new
head. An item costs a dict update instead of a scheduled (and later cancelled) timer
object — the old one-timer-per-item design spent most of its time creating and
cancelling them — and a key is forgotten as soon as its window has passed.

A subclass says what an item does (`on_item`), what a key's deadline does (`expire`) and
what completion flushes (`flush`); this class owns the lock, the deadlines and their
timer, errors and completion, and disposal (the timer cancelled: nothing runs after the
subscription ends). Lines and Notices (what an operator says about the stream itself,
like `Squelched`) pass on untouched. Its length is the number of live keys, which is what
the memory tests count.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import msgspec
import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from reops.core.model import Event, Line, Result
from reops.streams.operators._clock import stamps, ticks
from reops.streams.operators._timer import after
from reops.streams.stream import Operator, Stream, derived

#: a deadline within this of the clock has passed (a virtual clock counts whole
#: microseconds; the event loop may wake a hair early)
SLACK = 1e-6


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
        #: seconds for the times an operator reports (wall clock, or virtual)
        self.now = stamps(scheduler)
        #: seconds deadlines are kept on (monotonic, or virtual)
        self.tick = ticks(scheduler)
        #: key → deadline, in deadline order (the order keys were last armed)
        self.deadlines: OrderedDict[Hashable, float] = OrderedDict()
        self.timer: abc.DisposableBase | None = None  # the one timer, for the head's deadline
        self.firing = False  # expiring keys: the timer is set for the new head afterwards
        self.closed = False

    # -- what a subclass defines ------------------------------------------------------
    def on_item(self, item: Any) -> None:
        """One upstream item, not a Line or a Notice (called with the lock held)."""
        raise NotImplementedError

    def expire(self, key: Hashable) -> None:
        """`key`'s deadline passed; its entry is already gone (called with the lock held)."""

    def flush(self) -> None:
        """Upstream completed: emit what completion settles (called with the lock held)."""

    def __len__(self) -> int:
        """Live keys: what this subscription holds right now."""
        return len(self.deadlines)

    # -- deadlines ------------------------------------------------------------------------
    def arm(self, key: Hashable, seconds: float) -> None:
        """`key` expires `seconds` from now (replacing its earlier deadline). Every call of
        one subscription uses the same `seconds`, which keeps the table in deadline order."""
        table = self.deadlines
        due = self.tick() + seconds
        if key in table:
            table.move_to_end(key)
        table[key] = due
        if self.timer is None and not self.firing and not self.closed:
            self.timer = after(seconds, self._fire, self.scheduler)

    def disarm(self, key: Hashable) -> None:
        """Forget `key`'s deadline (its timer, if it was the head, wakes up for nothing)."""
        self.deadlines.pop(key, None)

    def _fire(self) -> None:
        """The head's deadline came: expire every key whose deadline passed, in order."""
        with self.lock:
            self.timer = None
            if self.closed:
                return
            table = self.deadlines
            t = self.tick() + SLACK
            self.firing = True
            try:
                while table:
                    key = next(iter(table))
                    if table[key] > t:
                        break
                    del table[key]
                    self.expire(key)
                    if self.closed:
                        return
            except Exception as exc:  # a downstream failure ends the stream, loudly
                self.fail(exc)
                return
            finally:
                self.firing = False
            table = self.deadlines  # (close() replaces it)
            if table and self.timer is None and not self.closed:
                head = table[next(iter(table))]
                self.timer = after(max(head - self.tick(), 0.0), self._fire, self.scheduler)

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
        """Stop: cancel the timer and forget every key."""
        with self.lock:
            self.closed = True
            timer, self.timer = self.timer, None
            self.deadlines = OrderedDict()
            self.forget()
        if timer is not None:
            timer.dispose()

    def forget(self) -> None:
        """Drop the per-key state a subclass keeps beside its deadlines."""


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
