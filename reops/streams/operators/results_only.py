"""`results_only`: drop the output Lines, for sinks that only care about Results."""

from __future__ import annotations

from reactivex import Observable
from reactivex import operators as ops

from reops.core.model import Event, Result
from reops.streams.stream import Operator, Stream, derived


def results_only() -> Operator:
    """Drop Lines: for sinks that only care about Results.

    Marbles (`.` an output Line, `a` host a's Result)::

        -.-.-a--.-b--|
        [ results_only() ]
        -----a----b--|
    """

    def make(up: Stream) -> Observable[Event]:
        return up.observable.pipe(ops.filter(lambda e: isinstance(e, Result)))

    return derived(make, "results_only", shared=False)
