"""Operators over Result streams, one module each (like RxPY's `reactivex.operators`).

Every operator is per host: a host moves on as soon as its own previous step is done,
never waiting for the slowest host (no lock-step). Lines pass through untouched.

    ls(hosts, "/")  ──r1──r2──────r3──|
    | then(exec_, "uname -r")
                    ────u1───u2─────u3──|   (each u starts right after its r)

Each operator's docstring has a marble diagram: `-` is one tick of time, a lowercase
letter a host's successful Result, an uppercase one a failed Result, `|` the end.
The time-based ones (`timeout`, `retry(delay=)`) take `scheduler=` so tests drive
them in virtual time. To add an operator: a new module here, exported below.

Event operators (for endless trigger streams; generic over items, grouped by `key=`):
`once_within`, `debounce`, `accumulate`, `all_of`/`any_of`/`not_all`, `limit`,
`ignoring` and `squelch` (storm protection). Each keeps bounded per-key state that
expires with its window, never a history of events.
"""

from __future__ import annotations

from reops.streams.operators.accumulate import Accumulated, accumulate
from reops.streams.operators.correlate import Correlated, all_of, any_of, not_all
from reops.streams.operators.debounce import debounce
from reops.streams.operators.ignoring import ignoring
from reops.streams.operators.limit import Drained, Overflowed, limit
from reops.streams.operators.once_within import once_within
from reops.streams.operators.partition import partition
from reops.streams.operators.pick import pick
from reops.streams.operators.predicates import (
    Predicate,
    failed,
    lost,
    successful,
    unreachable,
)
from reops.streams.operators.results_only import results_only
from reops.streams.operators.retry import retry
from reops.streams.operators.rolling import rolling
from reops.streams.operators.squelch import Resumed, Squelched, squelch
from reops.streams.operators.then import then
from reops.streams.operators.timeout import timeout
from reops.streams.operators.where import where

__all__ = [
    "Accumulated",
    "Correlated",
    "Drained",
    "Overflowed",
    "Predicate",
    "Resumed",
    "Squelched",
    "accumulate",
    "all_of",
    "any_of",
    "debounce",
    "failed",
    "ignoring",
    "limit",
    "lost",
    "not_all",
    "once_within",
    "partition",
    "pick",
    "results_only",
    "retry",
    "rolling",
    "squelch",
    "successful",
    "then",
    "timeout",
    "unreachable",
    "where",
]
