""""A run finished" callbacks: how streams' `run()` tells the sinks above it (the run
history) without importing them — a lower layer never imports a higher one.

A sink registers its hooks when it is imported. `lazy("reops.sinks.history")` (what
`import reops` does) names a module that is imported only when the first Result or Outcome
arrives, so importing reops stays fast and nothing heavy loads for a run that never ends.

Hooks run on the thread that finished the run (or delivered the Result: often the
runtime's event loop), so they must be quick — hand the work to a thread — and must not
raise; one that does is reported in one line and the run goes on unchanged.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reops.core.model import Outcome, Result, RunInfo

OutcomeHook = Callable[["Outcome"], None]
ResultHook = Callable[["Result", "RunInfo"], None]

_outcome_hooks: tuple[OutcomeHook, ...] = ()
_result_hooks: tuple[ResultHook, ...] = ()
_lazy: tuple[str, ...] = ()
_reported: set[str] = set()


def on_outcome(hook: OutcomeHook) -> Callable[[], None]:
    """Call `hook(outcome)` after every finite run; returns a function that unregisters it."""
    global _outcome_hooks
    _outcome_hooks = (*_outcome_hooks, hook)  # a new tuple: callers iterate without a lock

    def remove() -> None:
        global _outcome_hooks
        _outcome_hooks = tuple(h for h in _outcome_hooks if h is not hook)

    return remove


def on_result(hook: ResultHook) -> Callable[[], None]:
    """Call `hook(result, run)` for each Result of an endless or subscribed stream as it
    arrives (those runs have no final Outcome); returns a function that unregisters it."""
    global _result_hooks
    _result_hooks = (*_result_hooks, hook)

    def remove() -> None:
        global _result_hooks
        _result_hooks = tuple(h for h in _result_hooks if h is not hook)

    return remove


def lazy(module: str) -> None:
    """Import `module` (which registers its hooks) when the first hook would be called."""
    global _lazy
    if module not in _lazy:
        _lazy = (*_lazy, module)


def active() -> bool:
    """Whether anything listens: lets a stream skip the per-Result work when nothing does."""
    return bool(_outcome_hooks or _result_hooks or _lazy)


def _load() -> None:
    global _lazy
    if not _lazy:
        return
    pending, _lazy = _lazy, ()
    for module in pending:  # (imports are serialised by Python's import lock)
        try:
            importlib.import_module(module)
        except Exception as e:  # a broken sink must not break the run
            _report(module, e)


def _report(where: object, e: Exception) -> None:
    text = f"reops: warning: {getattr(where, '__qualname__', where)} failed after a run: " \
           f"{type(e).__name__}: {e}; the run itself is unaffected\n"
    if text not in _reported:  # once per distinct failure, never a flood
        _reported.add(text)
        sys.stderr.write(text)


def outcome_finished(outcome: Outcome) -> None:
    """A finite run ended with `outcome`: tell every outcome hook; never raises."""
    _load()
    for hook in _outcome_hooks:
        try:
            hook(outcome)
        except Exception as e:
            _report(hook, e)


def result_finished(result: Result, run: RunInfo) -> None:
    """One Result of an endless (or subscribed) run arrived: tell every result hook."""
    _load()
    for hook in _result_hooks:
        try:
            hook(result, run)
        except Exception as e:
            _report(hook, e)
