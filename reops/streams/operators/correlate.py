"""`all_of`, `any_of`, `not_all`: correlate several triggers per key within a timeout
("disk full" and "service down" on the same host within 5 minutes)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal

import msgspec
import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops

from reops.core.durations import positive
from reops.core.model import Event, Host, Hosts, Result
from reops.streams.operators._keyed import PASS_THROUGH, Keyed, carried, keyed_observable
from reops.streams.operators._keys import Key, KeyOf, key_of
from reops.streams.stream import Stream

Mode = Literal["all_of", "any_of", "not_all"]


class Correlated(msgspec.Struct, frozen=True, kw_only=True):
    """The triggers of one key that fired within the timeout: `items[i]` is the last item of
    the i-th stream (None where it did not fire), from `since` (the first) to `time`."""

    key: Any
    items: tuple[Any, ...]
    since: float
    time: float

    @property
    def missing(self) -> tuple[int, ...]:
        """The indexes of the streams that did not fire (what `not_all` reports)."""
        return tuple(i for i, item in enumerate(self.items) if item is None)

    @property
    def host(self) -> Any:
        """The host of the first item that fired (the key's host, for `key="host"`)."""
        for item in self.items:
            if item is not None:
                return getattr(item, "host", None)
        return None


def all_of(*streams: Stream, key: Key = "key", timeout: float | str,
           scheduler: abc.SchedulerBase | None = None) -> Stream:
    """Fire when every stream had an item of a key within `timeout` of that key's first one.

    The window opens at a key's first item; if the others do not all come before it closes,
    the key is forgotten and nothing fires. Over Results (what `on(trigger)` gives) the
    firing is the Result that completed it, its `data` the Correlated, so `| then(step)`
    runs on that host (the same holds for `any_of` and `not_all`, whose Result is the
    first that came). Marbles (timeout 5; `C` the Correlated of key
    a; the second pair is 6 ticks apart, too far to fire)::

        s0:  a-------a----|
        s1:  ---a----------a|
        [ all_of(s0, s1, timeout=5) ]
             ---C-----------|
    """
    return _correlate("all_of", streams, key, timeout, scheduler)


def any_of(*streams: Stream, key: Key = "key", timeout: float | str,
           scheduler: abc.SchedulerBase | None = None) -> Stream:
    """Fire at once on a key's first item from any stream, then stay quiet for that key until
    `timeout` has passed (one firing per key per window, however many streams agree)::

        s0:  a-----a-|
        s1:  --a-----a|
        [ any_of(s0, s1, timeout=5) ]
             C-----C--|
    """
    return _correlate("any_of", streams, key, timeout, scheduler)


def not_all(*streams: Stream, key: Key = "key", timeout: float | str,
            scheduler: abc.SchedulerBase | None = None) -> Stream:
    """Fire at the timeout when some but not all streams had an item of the key (a service
    went down and did not come back; a heartbeat without its answer). `Correlated.missing`
    names the silent streams. When they all come in time, nothing fires. Completion fires
    the open windows at once (they can no longer complete). Marbles (keys a and b)::

        s0:  a----b-------|
        s1:  --a----------|
        [ not_all(s0, s1, timeout=5) ]
             ----------C--|        (b at 5, alone until 10)
    """
    return _correlate("not_all", streams, key, timeout, scheduler)


def _correlate(mode: Mode, streams: tuple[Stream, ...], key: Key, timeout: float | str,
               scheduler: abc.SchedulerBase | None) -> Stream:
    if len(streams) < 2 or not all(isinstance(s, Stream) for s in streams):
        raise ValueError(f"{mode}(*streams): give two or more Streams (triggers) to correlate")
    span = positive(timeout, f"{mode}(timeout)")
    key_fn = key_of(key, mode)
    n = len(streams)

    hosts = _JoinedHosts()
    for s in streams:
        for h in s.hosts:
            if h.name not in hosts:
                hosts.learn(h)

    def tagged(i: int, s: Stream) -> Observable[Any]:
        def tag(e: Any) -> Any:
            if isinstance(e, PASS_THROUGH):
                return e
            if isinstance(e, Result):  # a host the trigger learned (or moved) since
                known = s.hosts.get(e.host)
                if known is not None and hosts.get(e.host) is not known:
                    hosts.learn(known)
            return (i, e)

        return s.observable.pipe(ops.map(tag))

    merged = reactivex.merge(*(tagged(i, s) for i, s in enumerate(streams)))

    def machine(observer: abc.ObserverBase[Any]) -> Keyed:
        return _Correlate(observer, scheduler, mode, n, span, key_fn)

    def rebuild(hs: Hosts) -> Stream:
        return _correlate(mode, tuple(s.rebuild(hs) for s in streams), key, timeout, scheduler)

    events: Observable[Event] = keyed_observable(merged, machine)
    return Stream(events, hosts, rebuild, replay=all(s.replay for s in streams))


class _JoinedHosts(Hosts):
    """The streams' hosts, and those they learn as events arrive (`on(trigger)` learns a
    VM's address from its event), so `then` after a correlation finds them."""

    __slots__ = ()

    def learn(self, host: Host) -> None:
        self._by_name[host.name] = host


class _Correlate(Keyed):
    def __init__(self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None,
                 mode: Mode, n: int, timeout: float, key_fn: KeyOf) -> None:
        super().__init__(observer, scheduler)
        self.mode = mode
        self.n = n
        self.timeout = timeout
        self.key_fn = key_fn
        #: per open key: (when its window opened, the last item of each stream)
        self.open: dict[Hashable, tuple[float, list[Any]]] = {}

    def on_item(self, tagged: tuple[int, Any]) -> None:
        i, item = tagged
        k = self.key_fn(item)
        t = self.now()
        window = self.open.get(k)
        if window is None:
            window = self.open[k] = (t, [None] * self.n)
            self.arm(k, self.timeout)
            if self.mode == "any_of":
                window[1][i] = item
                self.observer.on_next(carried(Correlated(key=k, items=tuple(window[1]),
                                                         since=t, time=t), item))
                return
        if self.mode == "any_of":
            return
        window[1][i] = item
        if all(x is not None for x in window[1]):
            del self.open[k]
            self.disarm(k)
            if self.mode == "all_of":
                self.observer.on_next(carried(Correlated(key=k, items=tuple(window[1]),
                                                         since=window[0], time=t), item))

    def expire(self, key: Hashable) -> None:
        """The key's window closed."""
        since, items = self.open.pop(key)
        if self.mode == "not_all":
            self._partial(key, since, items)

    def _partial(self, k: Hashable, since: float, items: list[Any]) -> None:
        first = next(x for x in items if x is not None)
        self.observer.on_next(carried(Correlated(key=k, items=tuple(items), since=since,
                                                 time=self.now()), first))

    def flush(self) -> None:
        if self.mode == "not_all":
            for k, (since, items) in self.open.items():
                self._partial(k, since, items)
        self.open = {}

    def forget(self) -> None:
        self.open = {}
