"""`accumulate`: fire when a key has seen n items within a window ("3 failures in 10 min")."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any

import msgspec
from reactivex import abc

from reops.core.durations import positive
from reops.streams.operators._keyed import Keyed, carried, keyed_operator
from reops.streams.operators._keys import Key, KeyOf, key_of
from reops.streams.stream import Operator


class Accumulated(msgspec.Struct, frozen=True, kw_only=True):
    """n items of one key arrived within the window: the count, when the first of them came,
    when the last did, and the last item itself (its host is the accumulated host)."""

    key: Any
    count: int
    since: float
    time: float
    last: Any

    @property
    def host(self) -> Any:
        """The last item's host (a Result's host name, an event's Host), so `key="host"`
        and steps downstream see the same host as upstream."""
        return getattr(self.last, "host", None)


def accumulate(n: int, *, within: float | str, key: Key = "key",
               scheduler: abc.SchedulerBase | None = None) -> Operator:
    """Emit one `Accumulated` when `n` items of a key arrived within `within`, then start over.

    Over Results (what `on(trigger)` gives) it emits the n-th Result itself, its `data` the
    Accumulated (whose `last` keeps the original), so `| then(step)` runs on that host.
    An item counts while it is younger than `within` (seconds or "10m"); after a firing that
    key counts from zero again, so a steady storm fires once per n items, not on each one.
    A key holds at most n arrival times and is forgotten `within` after its last item.
    Lines pass untouched. Marbles (n=3, within 5 ticks; `X` the Accumulated of key a)::

        a-a---a-a-a--|
        [ accumulate(3, within=5) ]
        ----------X--|
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"accumulate(n): n must be a whole number >= 1, not {n!r}")
    span = positive(within, "accumulate(within)")
    key_fn = key_of(key, "accumulate")

    def machine(observer: abc.ObserverBase[Any]) -> Keyed:
        return _Accumulate(observer, scheduler, n, span, key_fn)

    return keyed_operator(f"accumulate({n}, within={within!r})", machine)


class _Accumulate(Keyed):
    def __init__(self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None,
                 n: int, within: float, key_fn: KeyOf) -> None:
        super().__init__(observer, scheduler)
        self.n = n
        self.within = within
        self.key_fn = key_fn
        self.arrivals: dict[Hashable, deque[float]] = {}

    def on_item(self, item: Any) -> None:
        k = self.key_fn(item)
        t = self.now()
        times = self.arrivals.get(k)
        if times is None:
            times = self.arrivals[k] = deque(maxlen=self.n)
        while times and t - times[0] >= self.within:
            times.popleft()
        times.append(t)
        if len(times) < self.n:
            self.arm(k, self.within)
            return
        del self.arrivals[k]
        self.disarm(k)
        self.observer.on_next(carried(Accumulated(key=k, count=self.n, since=times[0],
                                                  time=t, last=item), item))

    def expire(self, key: Hashable) -> None:
        """The key's newest item is out of the window: so is the rest."""
        self.arrivals.pop(key, None)

    def forget(self) -> None:
        self.arrivals = {}
