"""Live trigger sources shared by the versions of one flow: what makes a reload lose no event.

Why: a reload builds the flow again, and its triggers with it. Without sharing, the new
`every("1s")` starts its schedule afresh and the old one fires in the overlap (an event
handled twice, or none in the gap). Here a trigger built while the runner builds a flow
(`reops.streams.triggers._trigger.sharing`) is looked up by its identity — its name, which
holds its constructor and arguments (`every('1s')`, `vm_events('typed:redis')`), and its
rank among same-named triggers of the flow — and both versions read the SAME live source.

A source delivers each event to ONE version: the `active` one. `switch(gen)` moves every
source of the flow to the new version under each source's lock, which is also held while an
event is delivered: an event is handed to the old pipeline entirely before the switch, or
to the new one after it; none to both, none to neither. The upstream subscription lives
while any version reads it, so the schedule (next due time, tick count) goes on.

Every shared source passes the flow's `squelch` (storm protection, `[flows] max_rate`);
its `Squelched`/`Resumed` notices go to the runner (announced on topic `flows`), not down
the pipeline.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from reactivex import Observable, abc, create
from reactivex.disposable import Disposable

from reops.core.model import Hosts
from reops.streams.operators._keyed import Notice
from reops.streams.operators.squelch import squelch
from reops.streams.stream import Stream

Share = Callable[[str, Observable[Any]], Observable[Any]]


class LiveSource:
    """One trigger's upstream, subscribed once, delivering to the active version only."""

    def __init__(self, key: str, events: Observable[Any], active: int,
                 notice: Callable[[Notice], None], closed: Callable[[LiveSource], None]
                 ) -> None:
        self.key = key
        self.events = events
        self.active = active
        self._notice = notice
        self._closed = closed
        self._lock = threading.RLock()
        self._observers: dict[int, abc.ObserverBase[Any]] = {}
        self._sub: abc.DisposableBase | None = None

    def view(self, gen: int) -> Observable[Any]:
        """What version `gen` subscribes to: the live events while `gen` is active."""

        def subscribe(observer: abc.ObserverBase[Any],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            with self._lock:
                if not self._observers:
                    self.active = gen  # the only reader: it is the one that gets events
                self._observers[gen] = observer
                if self._sub is None:
                    self._sub = self.events.subscribe(self._next, self._error,
                                                      self._completed)

            def stop() -> None:
                with self._lock:
                    if self._observers.get(gen) is observer:
                        del self._observers[gen]
                    sub = self._sub if not self._observers else None
                    if sub is not None:
                        self._sub = None
                if sub is not None:
                    sub.dispose()
                    self._closed(self)

            return Disposable(stop)

        return create(subscribe)

    def switch(self, gen: int) -> None:
        with self._lock:  # waits for an event being delivered to the old version
            self.active = gen

    def _next(self, item: Any) -> None:
        if isinstance(item, Notice):
            self._notice(item)
            return
        with self._lock:
            observer = self._observers.get(self.active)
            if observer is not None:
                observer.on_next(item)

    def _error(self, e: Exception) -> None:
        with self._lock:
            observers = list(self._observers.values())
        for o in observers:
            o.on_error(e)

    def _completed(self) -> None:
        with self._lock:
            observers = list(self._observers.values())
        for o in observers:
            o.on_completed()


class FlowSources:
    """The live sources of one flow, kept across its versions."""

    def __init__(self, rate: str, notice: Callable[[Notice], None]) -> None:
        self.rate = rate  # "" or "off": no squelch
        self.notice = notice
        self.live: dict[str, LiveSource] = {}
        self._lock = threading.Lock()

    def builder(self, gen: int, used: list[str]) -> Share:
        """The `sharing` hook for building version `gen` (appends the keys it reads)."""
        seen: collections.Counter[str] = collections.Counter()

        def share(name: str, events: Observable[Any]) -> Observable[Any]:
            seen[name] += 1
            key = f"{name}#{seen[name]}"
            with self._lock:
                src = self.live.get(key)
                if src is None:
                    src = self.live[key] = LiveSource(key, self._squelched(events), gen,
                                                      self.notice, self._forget)
            used.append(key)
            return src.view(gen)

        return share

    def _squelched(self, events: Observable[Any]) -> Observable[Any]:
        if self.rate in ("", "off"):
            return events
        return (Stream(events, Hosts(), replay=False, shared=False) | squelch(self.rate)
                ).observable

    def _forget(self, src: LiveSource) -> None:
        with self._lock:
            if self.live.get(src.key) is src:
                del self.live[src.key]

    def switch(self, gen: int) -> None:
        """From now on every source delivers to version `gen`."""
        with self._lock:
            sources = list(self.live.values())
        for src in sources:
            src.switch(gen)
