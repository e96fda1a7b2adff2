"""The agent's log: one line per event on stderr, `logging`'s default look, not its cost.

`logging` (with the traceback, string and tokenize modules it imports) is ~0.6 MB of an
idle agent's ~20 MB budget; the agent needs four levels and one format, so this is all it
keeps: `2026-12-01 03:03:07,906 reops-agent INFO registered with the hub as m0`.
"""

from __future__ import annotations

import sys
import threading
import time

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}


class Log:
    """`logging.Logger`'s debug/info/warning/exception, written as one line each."""

    def __init__(self, level: int = INFO) -> None:
        self.level = level
        self._lock = threading.Lock()  # (calls' threads log too: no interleaved lines)

    def _emit(self, level: int, msg: str, args: tuple[object, ...], extra: str = "") -> None:
        if level < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        text = (msg % args if args else msg) + extra
        with self._lock:
            try:
                sys.stderr.write(f"{stamp},{int(now % 1 * 1000):03d} reops-agent "
                                 f"{_NAMES[level]} {text}\n")
                sys.stderr.flush()
            except (OSError, ValueError):  # (stderr closed: nothing to tell)
                pass

    def debug(self, msg: str, *args: object) -> None:
        self._emit(DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._emit(INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit(WARNING, msg, args)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the traceback being handled (traceback imported only then)."""
        import traceback

        self._emit(ERROR, msg, args, "\n" + traceback.format_exc().rstrip())


log = Log()
