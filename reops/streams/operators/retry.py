"""`retry`: re-run the pipeline for the hosts whose Result asks for it."""

from __future__ import annotations

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable

from reops.core.model import Event, Hosts, Line
from reops.streams.operators._timer import after
from reops.streams.operators.predicates import Predicate, unreachable
from reops.streams.stream import Operator, Stream, derived


def retry(times: int, *, when: Predicate = unreachable, delay: float = 0.0,
          scheduler: abc.SchedulerBase | None = None) -> Operator:
    """Re-run the whole pipeline for a host whose Result matches `when`, up to `times`.

    By default only hosts never reached (`unreachable`): a command that started may have
    changed something, so re-running a failed, timed-out or `lost` host must be asked for
    (`when=failed`, `when=lost`, or any predicate). Each re-run starts `delay` seconds
    after that host's Result, measured on `scheduler` (default: the runtime loop).

    Marbles (each run takes 2 ticks; `A` a failure, `a` a success)::

        a, run 1:  --A|
        a, run 2:         --A|
        a, run 3:                --a|
        [ retry(2, when=failed, delay=5) ]
                   ----------------a|
    """
    if times < 0:
        raise ValueError("retry(times): times must be >= 0")

    def make(up: Stream) -> Observable[Event]:
        def again(e: Event, left: int) -> Observable[Event]:
            if isinstance(e, Line) or left == 0 or not when(e):
                return reactivex.just(e)
            host = up.hosts.get(e.host)
            if host is None:
                return reactivex.just(e)

            def deeper(x: Event) -> Observable[Event]:
                return again(x, left - 1)

            rerun = up.rebuild(Hosts([host])).observable.pipe(ops.flat_map(deeper))
            return rerun if delay <= 0 else _later(delay, rerun, scheduler)

        def first(e: Event) -> Observable[Event]:
            return again(e, times)

        return up.observable.pipe(ops.flat_map(first))

    return derived(make, f"retry({times})", shared=True)


def _later(seconds: float, then_: Observable[Event],
           scheduler: abc.SchedulerBase | None) -> Observable[Event]:
    """`then_`, subscribed `seconds` after being subscribed to (no thread timer)."""

    def subscribe(observer: abc.ObserverBase[Event],
                  _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        inner = CompositeDisposable()
        inner.add(after(seconds, lambda: inner.add(then_.subscribe(observer)), scheduler))
        return inner

    return reactivex.create(subscribe)
