"""Reconnect delays: exponential backoff with full jitter.

When a hub restarts, every agent loses its connection at the same instant. Retrying on a
fixed schedule (libzmq's own reconnect adds at most one base interval of jitter) brings them
all back within the same fraction of a second, and the hub pays for thousands of CurveZMQ
handshakes, ZAP checks and registrations at once. Full jitter (a delay drawn uniformly
from [0, min(cap, base * 2**attempt)]) spreads each round over a window that doubles per
failed attempt, so the returning crowd arrives as a trickle the hub can absorb.
"""

from __future__ import annotations

import random


class Backoff:
    """The delays before successive reconnect attempts; `reset()` once connected."""

    def __init__(self, base: float = 0.1, cap: float = 30.0,
                 rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap (got base={base}, cap={cap})")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()  # (spreads load; not a secret)

    def window(self) -> float:
        """The upper bound of the next delay (doubles per attempt, up to `cap`)."""
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 62))

    def next(self) -> float:
        """The delay before the next attempt, in seconds."""
        delay = self._rng.uniform(0.0, self.window())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Connected: the next loss starts again from `base`."""
        self.attempt = 0
