"""Cancelling work that runs in threads: a token the agent's loop flips, hooks that act.

The agent has no event loop to cancel tasks on, so each call or schedule carries a Token:
`cancel()` (the hub's Cancel, an Unschedule, the agent stopping) runs the hooks the work
registered — kill a command's process group, wake a wait — and the work then raises
Cancelled at its next step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Cancelled(Exception):
    """The call or schedule run was cancelled (its Done says "call cancelled")."""


class Token:
    """Whether a piece of work was cancelled, and what to do the moment it is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._hooks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        """Cancel once: run every hook (from the caller's thread)."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def on_cancel(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run `hook` on cancel (now, if already cancelled); returns its remover."""
        with self._lock:
            if not self._event.is_set():
                self._hooks.append(hook)
                return lambda: self._remove(hook)
        hook()
        return lambda: None

    def _remove(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)

    def sleep(self, seconds: float) -> bool:
        """Wait `seconds` unless cancelled first; True when cancelled."""
        return self._event.wait(max(0.0, seconds))
