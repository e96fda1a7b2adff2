"""`rolling`: run the pipeline batch by batch (Ansible's serial + max_fail_percentage)."""

from __future__ import annotations

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable

from reops.core.model import Event, Result, failure_result
from reops.streams.stream import Operator, Stream, derived


def rolling(batch: int, *, max_failed: int | None = None) -> Operator:
    """Run the pipeline on `batch` hosts at a time, each batch after the previous ended.

    With `max_failed`, stop starting batches once that many hosts failed; the hosts not
    started get an error Result saying so. Marbles (hosts a, b, c; c starts only when
    both a and b have ended)::

        a:  ---a|
        b:  -----b|
        c:       --c|
        [ rolling(2) ]
            ---a-b-c|
    """
    if batch < 1:
        raise ValueError("rolling(batch): batch must be >= 1")

    def make(up: Stream) -> Observable[Event]:
        names = up.hosts.names
        chunks = [up.hosts.only(names[i:i + batch]) for i in range(0, len(names), batch)]

        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            current = CompositeDisposable()
            state = {"i": 0, "failed": 0}

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

        return reactivex.create(subscribe)

    return derived(make, f"rolling({batch})", shared=True)
