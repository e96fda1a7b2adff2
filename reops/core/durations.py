"""Durations and rates as people write them ("30", "500ms", "10s", "5m", "1h30m", "100/10s").

One parser for triggers (`every("30s")`, `threshold(..., for_="2m")`) and event operators
(`once_within("5m")`, `squelch("100/10s")`), so both accept the same forms and fail the same
way: when the flow is built, in one clear line naming the argument, not at the first event.
It lives in core because streams' triggers and operators both import it.
"""

from __future__ import annotations

import re

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_EXAMPLES = 'e.g. 30, "500ms", "10s", "5m", "1h30m"'


def seconds(value: float | str, what: str = "duration") -> float:
    """`value` in seconds, >= 0: a number (seconds already) or text such as "1h30m".

    Raises a one-line ValueError naming `what` and the accepted forms otherwise.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a duration ({_EXAMPLES})")
    if isinstance(value, int | float):
        s = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = _PART.findall(text)
        if _NUMBER.fullmatch(text):
            s = float(text)
        elif parts and "".join(n + u for n, u in parts) == text:
            s = sum(float(n) * _UNIT_S[u] for n, u in parts)
        else:
            raise ValueError(f"{what}: {value!r} is not a duration ({_EXAMPLES})")
    else:
        raise ValueError(f"{what}: {value!r} is not a duration ({_EXAMPLES})")
    if not s >= 0:  # also NaN
        raise ValueError(f"{what}: the duration must be >= 0, not {value!r}")
    return s


def positive(value: float | str, what: str) -> float:
    """`seconds(value)`, which must be > 0: a period or a window of 0 means nothing."""
    s = seconds(value, what)
    if not s > 0:
        raise ValueError(f"{what}: the duration must be > 0, not {value!r}")
    return s


def rate(value: str | tuple[int, float | str], what: str) -> tuple[int, float]:
    """`"100/10s"` (or `(100, "10s")`) as (count, period in seconds); `"5/m"` is 5 a minute."""
    if isinstance(value, tuple) and len(value) == 2:
        count, period = value
    elif isinstance(value, str) and value.count("/") == 1:
        head, tail = value.replace(" ", "").split("/")
        count = int(head) if head.isdigit() else -1
        period = f"1{tail}" if tail in _UNIT_S else tail
    else:
        raise ValueError(f"{what}: {value!r} is not a rate (e.g. \"100/10s\", \"5/m\")")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{what}: the count in {value!r} must be a whole number >= 1 "
                         "(e.g. \"100/10s\")")
    return count, positive(period, f"{what}: the period of {value!r}")
