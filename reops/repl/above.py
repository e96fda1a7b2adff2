"""Output above the prompt: prompt_toolkit's `patch_stdout`, and a way to wait for it.

Text written from any thread (a stream's prints, the terminal sink, rich) goes through
prompt_toolkit's StdoutProxy: while the prompt is up it is printed above it, never into the
line being typed; escape sequences pass (`raw`), so colours and rich's views survive.
The proxy writes from its own thread, so a command's last lines could land after the next
prompt was drawn; `drain()` waits for what was written so far (bounded) before reading.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO, cast

from prompt_toolkit.patch_stdout import StdoutProxy

#: the longest a prompt waits for earlier output to reach the terminal
DRAIN_S = 2.0


class AboveThePrompt(StdoutProxy):
    """A StdoutProxy that counts what it was given and what it wrote."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queued = 0
        self._written = 0
        super().__init__(raw=True)
        put = self._flush_queue.put

        def counted(item: Any, block: bool = True, timeout: float | None = None) -> None:
            if isinstance(item, str):
                with self._cond:
                    self._queued += len(item)
            put(item, block, timeout)

        self._flush_queue.put = counted  # type: ignore[method-assign]

    def _write_and_flush(self, loop: Any, text: str) -> None:
        try:
            super()._write_and_flush(loop, text)
        finally:
            with self._cond:
                self._written += len(text)
                self._cond.notify_all()

    def drain(self, timeout: float = DRAIN_S) -> None:
        """Return once everything written before the call is on the terminal (bounded)."""
        self.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._queued
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)


@contextlib.contextmanager
def output_above_prompt() -> Iterator[AboveThePrompt]:
    """sys.stdout and sys.stderr print above the prompt for the block's duration."""
    proxy = AboveThePrompt()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = cast(TextIO, proxy)
    try:
        yield proxy
    finally:
        sys.stdout, sys.stderr = saved
        proxy.close()
