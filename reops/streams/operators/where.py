"""`where`: keep the Results that satisfy a predicate."""

from __future__ import annotations

from reactivex import Observable
from reactivex import operators as ops

from reops.core.model import Event
from reops.streams.operators.predicates import Predicate, keep_lines
from reops.streams.stream import Operator, Stream, derived


def where(pred: Predicate) -> Operator:
    """Keep the Results that satisfy `pred`; Lines pass. A pure filter: it runs nothing.

    Marbles (`a` host a's ok Result, `B` host b's failed one)::

        --a--B--c--|
        [ where(successful) ]
        --a-----c--|
    """

    def make(up: Stream) -> Observable[Event]:
        return up.observable.pipe(ops.filter(keep_lines(pred)))

    return derived(make, f"where({getattr(pred, '__name__', 'pred')})", shared=False)
