"""Streams: lazy, run-once ReactiveX pipelines of per-host events, and the `|` DSL.

A Stream is an Observable of `Result` (and optional `Line`) events over a known set of
hosts, plus the recipe to build the same pipeline again for fewer hosts (`rebuild`),
which is what per-host `retry`, `rolling` batches and `then` need. Sources are cold, and
each Stream runs its remote work at most once however many branches subscribe.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from reops.core import hooks
from reops.core.identity import identity
from reops.core.model import (
    Event,
    Host,
    Hosts,
    Line,
    Outcome,
    Result,
    RunInfo,
    failure_result,
    run_outcome,
)
from reops.core.runtime import deferred_interrupts, get_runtime, interrupted_by_user

T = TypeVar("T")
Rebuild = Callable[[Hosts], "Stream"]
Make = Callable[["Stream"], Observable[Event]]
RunOne = Callable[[Host, Callable[[Line], None] | None], Awaitable[Result]]


class Stream:
    """A pipeline over hosts; `|` applies operators, `run()`/`await` give the Outcome.

    `replay=False` marks an endless stream (events, metrics, schedules): sharing then keeps
    no history, and everything derived from it (`derive`, `|`) inherits that.
    """

    __slots__ = ("_once", "hosts", "rebuild", "replay", "stages")

    def __init__(self, source: Observable[Event], hosts: Hosts,
                 rebuild: Rebuild | None = None, *, replay: bool = True,
                 shared: bool = True) -> None:
        self._once: _Once | Observable[Event] = _Once(source, replay) if shared else source
        self.hosts = hosts
        self.rebuild: Rebuild = rebuild or _no_rebuild
        self.replay = replay
        #: what it is made of, trigger first (`on(trigger) | op | …`); None: not known
        #: (a Stream over a raw Observable, or over hosts: nothing to keep across reloads)
        self.stages: tuple[Stage, ...] | None = None

    @property
    def endless(self) -> bool:
        """True for streams over an endless source: they keep no history for late subscribers."""
        return not self.replay

    @property
    def observable(self) -> Observable[Event]:
        """The events; every subscriber sees the same single run.

        Streams made `shared=False` (pure filters over a shared stream) pass subscribers
        straight through: they have no side effects to run twice.
        """
        once = self._once
        return once.observable if isinstance(once, _Once) else once

    def derive(self, make: Make, *, shared: bool) -> Stream:
        """The one way to build a Stream from this one: `make(self)` gives its events.

        The result keeps these hosts, the endless/replay nature, and a rebuild recipe that
        re-applies `make` to this stream rebuilt for fewer hosts (what `retry`, `rolling` and
        `then` need). `shared=True` when `make` has side effects (runs remote work, writes a
        file) so that several subscribers still run it once; `shared=False` for pure
        transformations (filters, maps), which then cost nothing per extra subscriber.
        """
        up = self

        def rebuild(hs: Hosts) -> Stream:
            return up.rebuild(hs).derive(make, shared=shared)

        return Stream(make(up), up.hosts, rebuild, replay=up.replay, shared=shared)

    def __or__(self, operator: Any) -> Stream:
        if isinstance(operator, Operator):
            return staged(operator.apply(self), self, Stage(operator.name, operator.apply))
        if callable(operator):  # a plain reactivex operator: keep hosts and the recipe
            fn = operator
            return staged(self.derive(lambda up: fn(up.observable), shared=True), self,
                          Stage(_operator_name(fn), fn))
        raise TypeError(f"cannot pipe a Stream into {operator!r}: not an operator")

    def subscribe(self, *args: Any, **kwargs: Any) -> abc.DisposableBase:
        """Keep a long-running pipeline alive; dispose the result to stop it."""
        return self.observable.subscribe(*args, **kwargs)

    def run(self) -> Outcome:
        return run(self)

    def __await__(self) -> Generator[Any, None, Outcome]:
        return outcome_async(self).__await__()

    def __reops_identity__(self) -> Any:
        """What a Stream given as an argument (a trigger's samples) is: its stages when
        known, else its hosts and nature."""
        if self.stages is not None:
            return ("stages", tuple(s.ident for s in self.stages))
        return ("stream", self.hosts, self.endless)

    def __repr__(self) -> str:
        kind = "endless Stream" if self.endless else "Stream"
        return f"<{kind} over {self.hosts!r}>"


class Operator:
    """A Stream → Stream transformation usable with `|`."""

    __slots__ = ("apply", "name")

    def __init__(self, apply: Callable[[Stream], Stream], name: str = "") -> None:
        self.apply = apply
        self.name = name or getattr(apply, "__name__", "operator")

    def __reops_identity__(self) -> Any:
        """An operator given to another (`limit(1, then(a))`) is what it was built from."""
        return (self.name, self.apply)

    def __repr__(self) -> str:
        return f"<operator {self.name}>"


def _operator_name(fn: Callable[..., Any]) -> str:
    """How a plain reactivex operator reads in a pipeline ("reactivex operator" when its
    name is an internal one, like `ops.map(...)`'s `_wrap_curried`)."""
    name = str(getattr(fn, "__name__", ""))
    return name if name and not name.startswith(("_", "<")) else "reactivex operator"


class Stage:
    """One stage of a pipeline as data: how it reads (`kind`: "once_within('5m')") and
    what it was built from (`source`: the operator's function with everything it closes
    over — arguments, keys, user callables — or a trigger's constructor arguments).

    `ident` (reops.core.identity) is equal for a stage built again from the same
    definition (a re-imported flow file) and differs when any of it was edited: what a hot
    reload compares to keep a stage's live state. Computed on first use only.
    """

    __slots__ = ("_ident", "kind", "source")

    def __init__(self, kind: str, source: Any) -> None:
        self.kind = kind
        self.source = source
        self._ident: str | None = None

    @property
    def ident(self) -> str:
        if self._ident is None:
            self._ident = identity((self.kind, self.source))
        return self._ident

    def __repr__(self) -> str:
        return self.kind


#: set by the hub's flow runner while it builds a flow: every Stream a stage makes (with
#: its `stages` known) goes through it, and it may give back the live Stream an earlier
#: version made from the same stages (reops.hub.flow_sources)
staging: contextvars.ContextVar[Callable[[Stream], Stream] | None] = contextvars.ContextVar(
    "reops_stream_staging", default=None)


def staged(stream: Stream, up: Any, stage: Stage) -> Stream:
    """`stream`, made from `up` by `stage`, knowing its stages (when `up`'s are known);
    while a flow is being built in the hub, what its runner makes of it (see `staging`)."""
    before = getattr(up, "stages", None)
    if before is None:
        return stream
    stream.stages = (*before, stage)
    hook = staging.get()
    return hook(stream) if hook is not None else stream


def pipeline_text(stages: tuple[Stage, ...]) -> str:
    """Stages as they were written: "on(every('1s')) | once_within('5m') | then(x)"."""
    parts: list[str] = []
    for s in stages:
        if s.kind == "on":  # reads as part of its trigger: on(every('1s'))
            parts[-1:] = [f"on({parts[-1] if parts else '…'})"]
        else:
            parts.append(s.kind)
    return " | ".join(parts)


def derived(make: Make, name: str, *, shared: bool) -> Operator:
    """An operator that is one function of the upstream Stream: `up.derive(make, shared=...)`.

    `make(up)` returns the new events (usually built from `up.observable`); hosts, the
    rebuild recipe and endlessness are carried by `Stream.derive`.
    """
    return Operator(lambda up: up.derive(make, shared=shared), name)


def _no_rebuild(hosts: Hosts) -> Stream:
    raise TypeError("this stream cannot be re-run for other hosts (it has no source recipe)")


class _Once:
    """Subscribe upstream once and share it; cancel when the last subscriber leaves.

    With `replay`, late subscribers first get every Result so far (finite op streams:
    `partition` branches subscribe one after another). Output `Line`s are never kept:
    a host printing 50 MB must not cost 50 MB (plus objects) per shared stream, and a late
    subscriber needs the Results, not a replay of the live view. Without `replay`, a late
    subscriber sees only what comes next (long-running streams must not buffer forever),
    and once the last subscriber has left, the next one starts the source again.
    A small hand-written subject: reactivex's ReplaySubject schedules every event
    through a trampoline and costs ~20x more per event.
    """

    __slots__ = ("_conn", "_done", "_events", "_lock", "_observers", "_replay", "_source",
                 "_started", "observable")

    def __init__(self, source: Observable[Event], replay: bool = True) -> None:
        self._source = source
        self._replay = replay
        self._events: list[Event] = []
        self._observers: tuple[abc.ObserverBase[Event], ...] = ()
        self._done: tuple[Exception | None] | None = None  # (None,) completed, (exc,) error
        self._started = False
        self._conn: abc.DisposableBase | None = None
        self._lock = threading.RLock()
        self.observable: Observable[Event] = reactivex.create(self._subscribe)

    def _subscribe(self, observer: abc.ObserverBase[Event],
                   scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        with self._lock:
            for e in self._events:
                observer.on_next(e)
            if self._done is not None:
                _finish(observer, self._done)
                return Disposable()
            self._observers = (*self._observers, observer)
            first = not self._started
            self._started = True
        if first:
            conn = self._source.subscribe(self._on_next, self._on_error, self._on_completed)
            with self._lock:
                orphan = not self._observers and self._done is None  # left meanwhile
                if orphan:
                    self._started = self._replay
                else:
                    self._conn = conn
            if orphan:
                conn.dispose()

        def dispose() -> None:
            with self._lock:
                self._observers = tuple(o for o in self._observers if o is not observer)
                last = not self._observers and self._done is None
                conn = self._conn if last else None
                if last:
                    self._conn = None
                    # an endless source starts afresh for the next subscriber (it has no
                    # history to give); a finite one ran its remote work and never re-runs
                    self._started = self._replay
            if conn is not None:
                conn.dispose()

        return Disposable(dispose)

    def _on_next(self, e: Event) -> None:
        with self._lock:
            if self._replay and not isinstance(e, Line):
                self._events.append(e)
            for o in self._observers:
                o.on_next(e)

    def _end(self, done: tuple[Exception | None]) -> None:
        with self._lock:
            if self._done is not None:
                return
            self._done = done
            observers, self._observers = self._observers, ()
            for o in observers:
                _finish(o, done)

    def _on_error(self, exc: Exception) -> None:
        self._end((exc,))

    def _on_completed(self) -> None:
        self._end((None,))


def _finish(observer: abc.ObserverBase[Event], done: tuple[Exception | None]) -> None:
    if done[0] is None:
        observer.on_completed()
    else:
        observer.on_error(done[0])


def from_async(pump: Callable[[Callable[[T], None]], Coroutine[Any, Any, None]]
               ) -> Observable[T]:
    """The one coroutine → Observable bridge: `pump(emit)` runs on the runtime loop.

    One run per subscription. Each `emit(x)` is an `on_next`; returning completes, raising
    errors the subscription; disposing cancels the coroutine (its `finally` cleans up, and
    `Runtime.settle` waits for it). Cancellation before it started runs nothing.
    """

    def subscribe(observer: abc.ObserverBase[T],
                  scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        rt = get_runtime()
        state: dict[str, Any] = {"task": None, "cancelled": False}

        async def main() -> None:
            try:
                await pump(observer.on_next)
            except asyncio.CancelledError:
                return
            except Exception as e:
                observer.on_error(e)
                return
            observer.on_completed()

        def start() -> None:
            if not state["cancelled"]:
                state["task"] = rt.spawn(main())

        def cancel() -> None:
            task = state["task"]
            if task is not None:
                task.cancel()

        def dispose() -> None:
            state["cancelled"] = True
            rt.call_soon(cancel)

        rt.call_soon(start)
        return Disposable(dispose)

    return reactivex.create(subscribe)


def fanout(hosts: Hosts, run_one: RunOne, *, lines: bool = False) -> Observable[Event]:
    """One task per host on the runtime loop; each host's Result flows as soon as it is done.

    Disposing the subscription cancels the hosts still running (and `Runtime.settle` waits
    for them to clean up); a sink that fails on a Result (a closed pipe) ends the stream
    with its error and cancels the rest.
    """

    async def pump(emit: Callable[[Event], None]) -> None:
        rt = get_runtime()
        if not hosts:
            return
        finished: asyncio.Future[None] = rt.loop.create_future()
        left = len(hosts)
        on_line = emit if lines else None

        async def one(host: Host) -> None:
            nonlocal left
            started = time.time()
            try:
                result = await run_one(host, on_line)
            except asyncio.CancelledError:
                return
            except Exception as e:  # an executor bug must not lose the host
                result = failure_result(host.name, "?", f"internal error: {type(e).__name__}: "
                                        f"{e}", status="error", started_at=started)
            if finished.done():
                return
            try:
                emit(result)
            except Exception as e:  # a sink failed (e.g. a closed pipe): end, don't hang
                if not finished.done():
                    finished.set_exception(e)
                return
            left -= 1
            if left == 0 and not finished.done():
                finished.set_result(None)

        tasks = [rt.spawn(one(h)) for h in hosts]
        try:
            await finished
        finally:
            running = [t for t in tasks if not t.done()]
            for t in running:
                t.cancel()
            if running:  # interrupted or failed: the hosts' cleanup (remote kill) first
                await asyncio.gather(*running, return_exceptions=True)

    return from_async(pump)


def run_info(info: RunInfo | None = None) -> RunInfo:
    """The run's identity: `info` as given (the CLI fills command and selector), else this
    process's argv as the command; the start time is now unless `info` has one."""
    if info is None:
        return RunInfo(command=" ".join(sys.argv) if sys.argv and sys.argv[0] else "")
    return info


def _last_results(stream: Stream | None = None, info: RunInfo | None = None
                  ) -> tuple[dict[str, Result], Callable[[Event], None]]:
    """Where a run keeps each host's last Result, and the `on_next` that fills it; for an
    endless `stream` it also records each Result as it arrives (there is no final Outcome
    worth recording: it keeps only each host's last Result)."""
    results: dict[str, Result] = {}
    each = stream is not None and info is not None and stream.endless and hooks.active()

    def on_next(e: Event) -> None:
        if isinstance(e, Result):
            results[e.host] = e
            if each:
                hooks.result_finished(e, info)  # type: ignore[arg-type]

    return results, on_next


def _finished(stream: Stream, out: Outcome) -> Outcome:
    """A finite run's Outcome, told to the "run finished" hooks (the run history)."""
    if not stream.endless and hooks.active():
        hooks.outcome_finished(out)
    return out


def run(stream: Stream, *, info: RunInfo | None = None) -> Outcome:
    """Run a pipeline to the end and return its Outcome (Ctrl-C gives a partial one).

    `info`: the run's identity (`RunInfo(command=…, selector=…)`); by default a new run id,
    this process's argv, the local user and the start and end times."""
    rt = get_runtime()
    if rt.in_loop:
        raise RuntimeError("run() blocks: inside the runtime loop use `await stream` instead")
    info = run_info(info)
    results, on_next = _last_results(stream, info)
    done = threading.Event()
    errors: list[Exception] = []

    def on_error(e: Exception) -> None:
        errors.append(e)
        done.set()

    interrupted = False
    sub: abc.DisposableBase | None = None
    try:
        with deferred_interrupts():  # a Ctrl-C right now must not lose the subscription
            sub = stream.observable.subscribe(on_next, on_error, done.set)
        done.wait()
    except KeyboardInterrupt:
        interrupted = True
        rt.barrier()  # events already being delivered on the loop reach `results` first
    finally:
        if sub is not None:
            sub.dispose()
    if interrupted:
        rt.settle()  # remote commands are killed and channels closed before we return
    if errors:
        raise errors[0]
    return _finished(stream, run_outcome(stream.hosts.names, dict(results), interrupted, info))


async def outcome_async(stream: Stream, *, info: RunInfo | None = None) -> Outcome:
    """`await stream`: the Outcome, from any event loop. Cancelled with
    `runtime.INTERRUPT` (Ctrl-C in the REPL), it returns the partial Outcome as `run()`
    does (interrupted=True); any other cancellation propagates."""
    info = run_info(info)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    results, on_next = _last_results(stream, info)

    def settle(exc: Exception | None = None) -> None:
        if fut.done():
            return
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

    def from_any_thread(exc: Exception | None = None) -> None:
        try:
            if asyncio.get_running_loop() is loop:
                settle(exc)
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(settle, exc)

    sub = stream.observable.subscribe(on_next, from_any_thread, from_any_thread)
    try:
        await fut
    except asyncio.CancelledError as e:
        sub.dispose()
        task = asyncio.current_task()
        if not interrupted_by_user(e) or task is None:
            raise
        task.uncancel()  # Ctrl-C in a live session (the REPL): the partial Outcome, as run()
        return _finished(stream, run_outcome(stream.hosts.names, dict(results), True, info))
    sub.dispose()
    return _finished(stream, run_outcome(stream.hosts.names, dict(results), False, info))
