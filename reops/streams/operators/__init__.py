"""Operators over Result streams: partition, pick, then, retry, rolling, timeout.

Every operator is per host: a host moves on as soon as its own previous step is done,
never waiting for the slowest host (no lock-step). Lines pass through untouched.

    ls(hosts, "/")  ──r1──r2──────r3──|
    | then(exec_, "uname -r")
                    ────u1───u2─────u3──|   (each u starts right after its r)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable, Disposable

from reops.core.model import Event, Hosts, Line, Outcome, Result, failure_result
from reops.core.runtime import get_runtime
from reops.streams.source import as_step
from reops.streams.stream import Operator, Stream

Predicate = Callable[[Result], bool]


def successful(r: Result) -> bool:
    """A host whose step succeeded (status ok)."""
    return r.status == "ok"


def failed(r: Result) -> bool:
    """A host whose step did not succeed, for any reason."""
    return r.status != "ok"


def unreachable(r: Result) -> bool:
    """A host never reached: the command did not start, so running it again is safe."""
    return r.status == "unreachable"


def lost(r: Result) -> bool:
    """A host lost mid-command: it may have run, so re-running it is the caller's call."""
    return r.status == "lost"


def _keep(pred: Predicate) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, Line) or pred(e)


def where(pred: Predicate) -> Operator:
    """Keep the Results that satisfy `pred` (Lines pass)."""

    def apply(up: Stream) -> Stream:
        return Stream(up.observable.pipe(ops.filter(_keep(pred))), up.hosts,
                      lambda hs: apply(up.rebuild(hs)), shared=False)

    return Operator(apply, f"where({getattr(pred, '__name__', 'pred')})")


def pick(pred: Predicate, outcome: Outcome | None = None, hosts: Hosts | None = None
         ) -> Any:
    """In a pipeline, keep the hosts whose Result satisfies `pred`.

    With an Outcome (and the Hosts it ran on), return those hosts as a new Hosts,
    re-ops style: `pick(successful, out, hosts)`.
    """
    if outcome is None:
        return where(pred)
    names = outcome.pick(pred)
    if hosts is None:
        raise TypeError("pick(pred, outcome) needs the Hosts the outcome ran on: "
                        "pick(pred, outcome, hosts)")
    return hosts.only(names)


def partition(stream: Stream, pred: Predicate = successful) -> tuple[Stream, Stream]:
    """Split into (matching, not matching); the remote work still runs only once."""
    yes = stream | where(pred)
    no = stream | where(lambda r: not pred(r))
    return yes, no


def then(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Operator:
    """Run the next step on each host as soon as that host's previous step succeeded.

    Hosts that failed keep their failure Result (it flows on unchanged).
    """
    make = as_step(fn)

    def apply(up: Stream) -> Stream:
        def next_for(e: Event) -> Observable[Event]:
            if isinstance(e, Line) or not e.ok:
                return reactivex.just(e)
            host = up.hosts.get(e.host)
            if host is None:
                return reactivex.just(e)
            return make(Hosts([host]), *args, **kwargs).observable

        return Stream(up.observable.pipe(ops.flat_map(next_for)), up.hosts,
                      lambda hs: apply(up.rebuild(hs)))

    return Operator(apply, f"then({getattr(fn, '__name__', fn)})")


def retry(times: int, *, when: Predicate = unreachable, delay: float = 0.0) -> Operator:
    """Re-run the whole pipeline for a host whose Result matches `when`, up to `times`.

    By default only hosts never reached (`unreachable`): a command that started may have
    changed something, so re-running a failed, timed-out or `lost` host must be asked for
    (`when=failed`, `when=lost`, or any predicate).
    """
    if times < 0:
        raise ValueError("retry(times): times must be >= 0")

    def apply(up: Stream) -> Stream:
        def again(e: Event, left: int) -> Observable[Event]:
            if isinstance(e, Line) or left == 0 or not when(e):
                return reactivex.just(e)
            host = up.hosts.get(e.host)
            if host is None:
                return reactivex.just(e)
            def deeper(x: Event) -> Observable[Event]:
                return again(x, left - 1)

            rerun = up.rebuild(Hosts([host])).observable.pipe(ops.flat_map(deeper))
            return rerun if delay <= 0 else _after(delay, rerun)

        def first(e: Event) -> Observable[Event]:
            return again(e, times)

        return Stream(up.observable.pipe(ops.flat_map(first)), up.hosts,
                      lambda hs: apply(up.rebuild(hs)))

    return Operator(apply, f"retry({times})")


def _after(seconds: float, then_: Observable[Event]) -> Observable[Event]:
    """Subscribe to `then_` after a delay measured on the runtime loop (no thread timer)."""

    def subscribe(observer: abc.ObserverBase[Event],
                  scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        rt = get_runtime()
        inner = CompositeDisposable()

        def go() -> None:
            inner.add(then_.subscribe(observer))

        handle: list[asyncio.TimerHandle] = []
        rt.call_soon(lambda: handle.append(rt.loop.call_later(seconds, go)))
        inner.add(Disposable(lambda: rt.call_soon(_cancel_all, handle)))
        return inner

    return reactivex.create(subscribe)


def _cancel_all(handles: list[asyncio.TimerHandle]) -> None:
    for h in handles:
        h.cancel()


def rolling(batch: int, *, max_failed: int | None = None) -> Operator:
    """Run the pipeline on `batch` hosts at a time, each batch after the previous ended.

    With `max_failed`, stop starting batches once that many hosts failed; the hosts not
    started get an error Result saying so (Ansible's serial + max_fail_percentage).
    """
    if batch < 1:
        raise ValueError("rolling(batch): batch must be >= 1")

    def apply(up: Stream) -> Stream:
        names = up.hosts.names
        chunks = [up.hosts.only(names[i:i + batch]) for i in range(0, len(names), batch)]

        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            current = CompositeDisposable()
            state = {"i": 0, "failed": 0, "stopped": False}

            def next_batch() -> None:
                i = state["i"]
                if i >= len(chunks):
                    observer.on_completed()
                    return
                if max_failed is not None and state["failed"] >= max_failed:
                    for chunk in chunks[i:]:
                        for h in chunk:
                            observer.on_next(failure_result(
                                h.name, "rolling", f"not started: {state['failed']} hosts "
                                f"failed in earlier batches (max_failed={max_failed})",
                                status="error"))
                    observer.on_completed()
                    return
                state["i"] = i + 1

                def on_next(e: Event) -> None:
                    if isinstance(e, Result) and not e.ok:
                        state["failed"] += 1
                    observer.on_next(e)

                current.add(up.rebuild(chunks[i]).observable.subscribe(
                    on_next, observer.on_error, next_batch))

            next_batch()
            return current

        return Stream(reactivex.create(subscribe), up.hosts,
                      lambda hs: apply(up.rebuild(hs)))

    return Operator(apply, f"rolling({batch})")


def timeout(seconds: float) -> Operator:
    """Give each host at most `seconds` for the whole pipeline so far; late hosts time out."""

    def apply(up: Stream) -> Stream:
        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            rt = get_runtime()
            done: set[str] = set()
            upstream: list[abc.DisposableBase] = []
            timer: list[asyncio.TimerHandle] = []
            finished = {"v": False}

            def finish() -> None:
                if not finished["v"]:
                    finished["v"] = True
                    rt.call_soon(_cancel_all, timer)
                    observer.on_completed()
                    for d in upstream:
                        d.dispose()

            def on_next(e: Event) -> None:
                if isinstance(e, Result):
                    if e.host in done:
                        return
                    done.add(e.host)
                observer.on_next(e)

            def expire() -> None:
                for name in up.hosts.names:
                    if name not in done:
                        done.add(name)
                        observer.on_next(failure_result(
                            name, "timeout", f"host did not finish within {seconds:g} s "
                            "(pipeline timeout)", status="timeout"))
                finish()

            rt.call_soon(lambda: timer.append(rt.loop.call_later(seconds, expire)))
            upstream.append(up.observable.subscribe(on_next, observer.on_error, finish))

            def dispose() -> None:
                rt.call_soon(_cancel_all, timer)
                for d in upstream:
                    d.dispose()

            return Disposable(dispose)

        return Stream(reactivex.create(subscribe), up.hosts,
                      lambda hs: apply(up.rebuild(hs)))

    return Operator(apply, f"timeout({seconds:g})")


def results_only() -> Operator:
    """Drop Lines: for sinks that only care about Results."""

    def apply(up: Stream) -> Stream:
        return Stream(up.observable.pipe(ops.filter(lambda e: isinstance(e, Result))),
                      up.hosts, lambda hs: apply(up.rebuild(hs)), shared=False)

    return Operator(apply, "results_only")
