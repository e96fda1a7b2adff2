"""`partition`: split one stream into (matching, not matching) without running it twice."""

from __future__ import annotations

from reops.streams.operators.predicates import Predicate, successful
from reops.streams.operators.where import where
from reops.streams.stream import Stream


def partition(stream: Stream, pred: Predicate = successful) -> tuple[Stream, Stream]:
    """Split into (matching, not matching); the remote work still runs only once.

    Both branches are pure filters over the one shared upstream run. Marbles::

        --a--B--c--|
        [ partition(successful) ]
        --a-----c--|   (matching)
        -----B-----|   (not matching)
    """
    yes = stream | where(pred)
    no = stream | where(lambda r: not pred(r))
    return yes, no
