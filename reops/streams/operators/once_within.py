"""`once_within`: fire on a key's first event, then ignore that key for a window."""

from __future__ import annotations

from typing import Any

from reactivex import abc

from reops.core.durations import positive
from reops.streams.operators._keyed import Keyed, keyed_operator
from reops.streams.operators._keys import Key, KeyOf, key_of
from reops.streams.stream import Operator


def once_within(window: float | str, *, key: Key = "key",
                scheduler: abc.SchedulerBase | None = None) -> Operator:
    """Pass the first item of each key, then drop that key's items for `window`.

    `window` is seconds or a duration ("5m"); once it has passed the key may fire again
    (Salt's `onchanges`-style dedup, per key). A key's state is one deadline that ends with
    its window (one timer per subscription, not per key), so a million distinct keys over a
    day cost only the keys of the last window.
    Lines pass untouched. Marbles (window 6 ticks; `a`, `b` two keys)::

        a-a-ba----a-b|
        [ once_within(6) ]
        a---b-----a-b|
    """
    span = positive(window, "once_within(window)")
    key_fn = key_of(key, "once_within")

    def machine(observer: abc.ObserverBase[Any]) -> Keyed:
        return _OnceWithin(observer, scheduler, span, key_fn)

    return keyed_operator(f"once_within({window!r})", machine)


class _OnceWithin(Keyed):
    def __init__(self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None,
                 window: float, key_fn: KeyOf) -> None:
        super().__init__(observer, scheduler)
        self.window = window
        self.key_fn = key_fn

    def on_item(self, item: Any) -> None:
        k = self.key_fn(item)
        if k in self.deadlines:
            return  # within the window of the key's last firing
        self.arm(k, self.window)
        self.observer.on_next(item)
