"""`results_only`: drop the output Lines, for sinks that only care about Results."""

from __future__ import annotations

from reactivex import operators as ops

from reops.core.model import Result
from reops.streams.stream import Operator, Stream


def results_only() -> Operator:
    """Drop Lines: for sinks that only care about Results.

    Marbles (`.` an output Line, `a` host a's Result)::

        -.-.-a--.-b--|
        [ results_only() ]
        -----a----b--|
    """

    def apply(up: Stream) -> Stream:
        return Stream(up.observable.pipe(ops.filter(lambda e: isinstance(e, Result))),
                      up.hosts, lambda hs: apply(up.rebuild(hs)), shared=False)

    return Operator(apply, "results_only")
