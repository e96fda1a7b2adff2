"""Predicates over Results, for `where`, `pick`, `partition` and `retry(when=...)`.

Each names one status so a pipeline reads as what it means: re-running an `unreachable`
host is always safe, re-running a `lost` or `failed` one is the caller's call.
"""

from __future__ import annotations

from collections.abc import Callable

from reops.core.model import Event, Line, Result

Predicate = Callable[[Result], bool]


def successful(r: Result) -> bool:
    """A host whose step succeeded (status ok)."""
    return r.status == "ok"


def failed(r: Result) -> bool:
    """A host whose step did not succeed, for any reason."""
    return r.status != "ok"


def unreachable(r: Result) -> bool:
    """A host never reached: the command did not start, so running it again is safe."""
    return r.status == "unreachable"


def lost(r: Result) -> bool:
    """A host lost mid-command: it may have run, so re-running it is the caller's call."""
    return r.status == "lost"


def keep_lines(pred: Predicate) -> Callable[[Event], bool]:
    """`pred` over Results, true for every Line: filters act on Results, output flows on."""
    return lambda e: isinstance(e, Line) or pred(e)
