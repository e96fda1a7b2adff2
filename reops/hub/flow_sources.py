"""Live sources shared by the versions of one flow: what a reload keeps, and where it swaps.

Why: a reload builds the flow again. Without sharing, the new `every("1s")` starts its
schedule afresh (an event handled twice, or none in the gap) and every operator after the
trigger starts with empty windows (`heal` would restart a service again within its 10
minutes after an unrelated edit to its last step).

Two hooks are set while the runner builds a version (`gen`) of a flow:

- triggers (`reops.streams.triggers._trigger.sharing`): a trigger is looked up by its
  identity — its constructor and ALL its arguments, keywords included, plus its rank
  among same triggers of the flow — so both versions read the SAME live source;
- stages (`reops.streams.stream.staging`): every Stream `on(trigger) | op | …` makes is
  looked up by its stages — the identities of the trigger and of each operator so far
  (reops.core.identity: kind, arguments, user callables by their code). A Stream made of
  the same stages as one the previous version runs IS that live Stream: the same operator
  instances, their windows and counters, the hosts `on` learned. So the longest unchanged
  prefix of a pipeline is kept, and the first changed stage and all after it are new.

A source delivers each event to ONE reader: the `active` version's. `switch(gen, used)`
moves every source the new version reads directly (the point right before its first new
stage) to it, under the source's lock, which is also held while an event is delivered: an
event goes to the old suffix entirely before the switch, or to the new one after it; none
to both, none to neither. Sources the new version still reads through a kept stage go on
as they are; a trigger it no longer reads stops delivering (the old version retires, and
the stages only it has still deliver what its steps in flight give).
Each delivery runs in the context of the flow's current version (its action slots and
counters), so a kept stage's steps count for the version that runs now.

Every shared trigger passes the flow's `squelch` (storm protection, `[flows] max_rate`);
its `Squelched`/`Resumed` notices go to the runner (announced on `event.flow.*`), not down
the pipeline.
"""

from __future__ import annotations

import collections
import contextvars
import threading
from collections.abc import Callable
from typing import Any

from reactivex import Observable, abc, create
from reactivex.disposable import Disposable

from reops.core.model import Hosts
from reops.streams.operators._keyed import Notice
from reops.streams.operators.squelch import squelch
from reops.streams.stream import Stage, Stream, pipeline_text

Share = Callable[[str, Observable[Any]], Observable[Any]]
ShareStage = Callable[[Stream], Stream]


class LiveSource:
    """One trigger's upstream, subscribed once, delivering to the active version only."""

    def __init__(self, key: str, events: Observable[Any], active: int,
                 notice: Callable[[Notice], None] | None,
                 closed: Callable[[LiveSource], None], context: contextvars.Context,
                 template: Stream | None = None) -> None:
        self.key = key
        self.events = events
        self.active = active
        self.context = context  # the flow version's context its deliveries run in
        self.template = template  # a stage's Stream: its hosts and rebuild recipe go on
        self._notice = notice  # a trigger's storm notices go to the runner (None: a stage)
        self._closed = closed
        self._lock = threading.RLock()
        self._observers: dict[int, abc.ObserverBase[Any]] = {}
        self._sub: abc.DisposableBase | None = None
        self._starting = False  # subscribing upstream (outside the lock)

    def reads(self, gen: int) -> bool:
        """Whether version `gen` subscribed to this source itself."""
        with self._lock:
            return gen in self._observers

    def view(self, gen: int) -> Observable[Any]:
        """What version `gen` subscribes to: the live events while `gen` is active."""

        def subscribe(observer: abc.ObserverBase[Any],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            with self._lock:
                if not self._observers:
                    self.active = gen  # the only reader: it is the one that gets events
                self._observers[gen] = observer
                first = self._sub is None and not self._starting
                self._starting = self._starting or first
            if first:  # (not under the lock: an event it delivers at once takes it)
                sub = self.events.subscribe(self._next, self._error, self._completed)
                with self._lock:
                    self._starting = False
                    orphan = not self._observers  # its reader left meanwhile
                    if not orphan:
                        self._sub = sub
                if orphan:
                    sub.dispose()
                    self._closed(self)

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

    def switch(self, gen: int, context: contextvars.Context, *, to_reader: bool) -> None:
        """Deliver in `gen`'s context from now on; with `to_reader`, to `gen`'s reader
        (none, if it has none: the old version no longer gets this source's events)."""
        with self._lock:  # waits for an event being delivered to the old version
            if to_reader:
                self.active = gen
            self.context = context

    def _next(self, item: Any) -> None:
        if self._notice is not None and isinstance(item, Notice):
            self._notice(item)
            return
        with self._lock:
            observer = self._observers.get(self.active)
            if observer is not None:  # (a copy: a nested source may enter it again)
                self.context.copy().run(observer.on_next, item)

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


class Build:
    """What building one version of a flow met: the keys it reads, and for each trigger and
    stage prefix whether it is an earlier version's live one (kept) or new."""

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.context = contextvars.copy_context()  # set after the runner's own variables
        self.used: list[str] = []
        self.kept: dict[tuple[str, ...], bool] = {}  # stage idents so far -> kept?
        self.triggers: list[tuple[str, bool]] = []  # (name, kept) in build order

    def report(self, made: Any) -> tuple[list[str], list[str]]:
        """(kept, swapped) as text: the pipeline's longest kept prefix and the rest, or,
        for a flow that is not one reops pipeline, its triggers kept and what is not."""
        stages: tuple[Stage, ...] | None = getattr(made, "stages", None)
        if stages:
            idents = tuple(s.ident for s in stages)
            n = max((k for k in range(1, len(idents) + 1) if self.kept.get(idents[:k])),
                    default=0)
            rest = stages[n:]
            return ([pipeline_text(stages[:n])] if n else [],
                    [pipeline_text(rest)] if rest else [])
        kept = [name for name, k in self.triggers if k]
        new = [name for name, k in self.triggers if not k]
        return kept, [*new, "everything after the triggers (not a reops pipeline)"]


class FlowSources:
    """The live sources of one flow, kept across its versions."""

    def __init__(self, rate: str, notice: Callable[[Notice], None]) -> None:
        self.rate = rate  # "" or "off": no squelch
        self.notice = notice
        self.live: dict[str, LiveSource] = {}
        self._lock = threading.Lock()

    def builder(self, build: Build) -> Share:
        """The trigger `sharing` hook for building version `build.gen`."""
        seen: collections.Counter[str] = collections.Counter()

        def share(name: str, events: Observable[Any]) -> Observable[Any]:
            seen[name] += 1
            key = f"{name}#{seen[name]}"
            with self._lock:
                src = self.live.get(key)
                shown, _, ident = name.rpartition(" ")
                build.triggers.append((shown, src is not None))
                build.kept[(ident,)] = src is not None  # a pipeline's first stage
                if src is None:
                    src = self.live[key] = LiveSource(key, self._squelched(events), build.gen,
                                                      self.notice, self._forget, build.context)
            build.used.append(key)
            return src.view(build.gen)

        return share

    def stage_builder(self, build: Build) -> ShareStage:
        """The `staging` hook for building version `build.gen`: a Stream made of the same
        stages as a live one IS that live one (its operator instances go on)."""
        seen: collections.Counter[tuple[str, ...]] = collections.Counter()

        def share(stream: Stream) -> Stream:
            stages = stream.stages or ()
            idents = tuple(s.ident for s in stages)
            seen[idents] += 1
            key = f"stage {'|'.join(idents)}#{seen[idents]}"
            with self._lock:
                src = self.live.get(key)
                build.kept[idents] = src is not None
                if src is None:
                    src = self.live[key] = LiveSource(key, stream.observable, build.gen, None,
                                                      self._forget, build.context, stream)
            build.used.append(key)
            t = src.template or stream
            out = Stream(src.view(build.gen), t.hosts, t.rebuild, replay=t.replay)
            out.stages = stream.stages
            return out

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

    def switch(self, build: Build) -> None:
        """From now on: each source version `build.gen` reads itself delivers to it; one it
        reads through a kept stage goes on; one it does not read at all, to nobody."""
        used = set(build.used)
        with self._lock:
            sources = list(self.live.values())
        for src in sources:
            if src.key in used:
                src.switch(build.gen, build.context, to_reader=src.reads(build.gen))
            elif src.template is None:  # a trigger only the old version reads: it stops
                src.switch(build.gen, build.context, to_reader=True)
            # (a stage only the old version has: its steps in flight still deliver there)
