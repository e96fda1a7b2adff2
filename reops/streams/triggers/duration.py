"""Durations as people write them: `"30s"`, `"5m"`, `"1h30m"`, `"250ms"`, or plain seconds.

Triggers and event operators take windows and periods in this form, so a flow reads
`every("30s")` and `threshold(..., for_="2m")` instead of bare numbers of seconds.
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def seconds(value: str | float, what: str = "duration") -> float:
    """`value` in seconds: a number, or text such as "30s", "5m", "1h30m", "250ms".

    Raises ValueError naming `what` and the accepted forms when it is neither.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a duration (e.g. 30, \"30s\", \"5m\")")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip().lower().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{what}: {value!r} is not a duration (e.g. 30, \"30s\", \"5m\", "
                         "\"1h30m\", \"250ms\")")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def positive(value: str | float, what: str) -> float:
    """`seconds(value)`, which must be > 0 (a period, a window)."""
    s = seconds(value, what)
    if s <= 0:
        raise ValueError(f"{what}: must be more than 0 seconds, got {value!r}")
    return s
