"""Bounds on what unauthenticated or unaccepted peers can make the hub do: rate and log.

A key that is not accepted yet costs the hub a file and a log line per new claim; anybody
who can reach the port can make claims, so both are rationed: a token bucket for new
pending entries, and a log that prints the first few lines of an interval and then one
summary line (so a flood is visible, but is one line, not thousands).
"""

from __future__ import annotations

import asyncio
import logging
import time


class TokenBucket:
    """`rate` events a second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.at = time.monotonic()

    def take(self) -> bool:
        """Whether one more event is allowed now (and count it)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RationedLog:
    """Log up to `lines` messages per `interval` s; then one summary of how many were held."""

    def __init__(self, log: logging.Logger, what: str, lines: int = 10,
                 interval: float = 60.0) -> None:
        self.log = log
        self.what = what
        self.lines = lines
        self.interval = interval
        self.started = float("-inf")
        self.said = 0
        self.held = 0
        self._flush: asyncio.TimerHandle | None = None

    def __call__(self, level: int, msg: str, *args: object) -> bool:
        """Log `msg % args` unless this interval's quota is spent; whether it was logged."""
        now = time.monotonic()
        if now - self.started >= self.interval:
            self.summary()
            self.started, self.said = now, 0
        if self.said < self.lines:
            self.said += 1
            self.log.log(level, msg, *args)
            return True
        self.held += 1
        if self._flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False  # no loop (a unit test): the next call after the interval says it
            self._flush = loop.call_later(self.interval - (now - self.started), self.summary)
        return False

    def summary(self) -> None:
        """Say how many lines were held back (once), if any."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.held:
            self.log.warning("%d more %s in the last %g s (not logged one by one)",
                             self.held, self.what, self.interval)
            self.held = 0
