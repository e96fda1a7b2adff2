"""`where`: keep the Results that satisfy a predicate."""

from __future__ import annotations

from reactivex import operators as ops

from reops.streams.operators.predicates import Predicate, keep_lines
from reops.streams.stream import Operator, Stream


def where(pred: Predicate) -> Operator:
    """Keep the Results that satisfy `pred`; Lines pass. A pure filter: it runs nothing.

    Marbles (`a` host a's ok Result, `B` host b's failed one)::

        --a--B--c--|
        [ where(successful) ]
        --a-----c--|
    """

    def apply(up: Stream) -> Stream:
        return Stream(up.observable.pipe(ops.filter(keep_lines(pred))), up.hosts,
                      lambda hs: apply(up.rebuild(hs)), shared=False)

    return Operator(apply, f"where({getattr(pred, '__name__', 'pred')})")
