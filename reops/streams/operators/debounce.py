"""`debounce`: per key, the last item once that key has been quiet for a while."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from reactivex import abc

from reops.core.durations import positive
from reops.streams.operators._keyed import Keyed, keyed_operator
from reops.streams.operators._keys import Key, KeyOf, key_of
from reops.streams.stream import Operator


def debounce(quiet: float | str, *, key: Key = "key",
             scheduler: abc.SchedulerBase | None = None) -> Operator:
    """Emit each key's last item once `quiet` (seconds or "10s") passed without a newer one.

    Keys are independent: a chatty key never holds back another. A key holds one pending
    item until it is emitted; completion emits the pending ones at once (in the order of
    their last arrival) and then completes. Lines pass untouched. Marbles (quiet 3 ticks;
    the second `a` restarts a's quiet time, `b` has its own)::

        aa-b-a-----|
        [ debounce(3) ]
        ----a-b-a--|
    """
    span = positive(quiet, "debounce(quiet)")
    key_fn = key_of(key, "debounce")

    def machine(observer: abc.ObserverBase[Any]) -> Keyed:
        return _Debounce(observer, scheduler, span, key_fn)

    return keyed_operator(f"debounce({quiet!r})", machine)


class _Debounce(Keyed):
    def __init__(self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None,
                 quiet: float, key_fn: KeyOf) -> None:
        super().__init__(observer, scheduler)
        self.quiet = quiet
        self.key_fn = key_fn
        self.pending: dict[Hashable, Any] = {}

    def on_item(self, item: Any) -> None:
        k = self.key_fn(item)
        self.pending[k] = item
        self.arm(k, self.quiet)  # the deadlines' order is the order of last arrival

    def expire(self, key: Hashable) -> None:
        self.observer.on_next(self.pending.pop(key))

    def flush(self) -> None:
        order, pending = list(self.deadlines), self.pending
        self.deadlines.clear()
        self.pending = {}
        for k in order:
            self.observer.on_next(pending[k])

    def forget(self) -> None:
        self.pending = {}
