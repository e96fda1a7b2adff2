"""`timeout`: a deadline per host for the whole pipeline so far."""

from __future__ import annotations

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from reops.core.model import Event, Result, failure_result
from reops.streams.operators._timer import after
from reops.streams.stream import Operator, Stream, derived


def timeout(seconds: float, *, scheduler: abc.SchedulerBase | None = None) -> Operator:
    """Give each host at most `seconds` for the whole pipeline so far; late hosts time out.

    At the deadline every host without a Result gets a `timeout` Result and the upstream
    work is disposed (remote commands are killed). Time is measured on `scheduler`
    (default: the runtime loop). Marbles (`T` host b's timeout Result)::

        a:  -a|
        b:  --------b|
        [ timeout(3) ]
            -a-T|
    """

    def make(up: Stream) -> Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            done: set[str] = set()
            upstream: list[abc.DisposableBase] = []
            timer: list[abc.DisposableBase] = []
            finished = {"v": False}

            def stop() -> None:
                for t in timer:
                    t.dispose()
                for d in upstream:
                    d.dispose()

            def finish() -> None:
                if not finished["v"]:
                    finished["v"] = True
                    for t in timer:
                        t.dispose()
                    observer.on_completed()
                    for d in upstream:
                        d.dispose()

            def on_error(exc: Exception) -> None:
                if not finished["v"]:
                    finished["v"] = True
                    for t in timer:
                        t.dispose()
                    observer.on_error(exc)

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

            timer.append(after(seconds, expire, scheduler))
            upstream.append(up.observable.subscribe(on_next, on_error, finish))
            return Disposable(stop)

        return reactivex.create(subscribe)

    return derived(make, f"timeout({seconds:g})", shared=True)
