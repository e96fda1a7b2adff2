"""`pick`: keep the hosts whose Result satisfies a predicate, in a pipeline or after one."""

from __future__ import annotations

from typing import Any

from reops.core.model import Hosts, Outcome
from reops.streams.operators.predicates import Predicate
from reops.streams.operators.where import where


def pick(pred: Predicate, outcome: Outcome | None = None, hosts: Hosts | None = None
         ) -> Any:
    """In a pipeline, keep the hosts whose Result satisfies `pred` (the same as `where`).

    With an Outcome (and the Hosts it ran on), return those hosts as a new Hosts,
    re-ops style: `pick(successful, out, hosts)`.

    Marbles::

        --a--B--c--|
        [ pick(successful) ]
        --a-----c--|
    """
    if outcome is None:
        return where(pred)
    names = outcome.pick(pred)
    if hosts is None:
        raise TypeError("pick(pred, outcome) needs the Hosts the outcome ran on: "
                        "pick(pred, outcome, hosts)")
    return hosts.only(names)
