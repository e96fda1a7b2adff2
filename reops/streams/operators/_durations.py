"""Durations and rates as people write them ("10s", "5m", "1h30m", "100/10s"), parsed once
when an operator is built so a typo fails at once in one clear line, not at the first event."""

from __future__ import annotations

import re

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_EXAMPLES = 'e.g. 30, "500ms", "10s", "5m", "1h30m"'


def seconds(value: float | str, what: str) -> float:
    """`value` in seconds (a number is seconds already); > 0, or a ValueError naming `what`."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a duration ({_EXAMPLES})")
    if isinstance(value, int | float):
        s = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _PART.findall(text)
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            s = float(text)
        elif parts and "".join(n + u for n, u in parts) == text:
            s = sum(float(n) * _UNIT_S[u] for n, u in parts)
        else:
            raise ValueError(f"{what}: {value!r} is not a duration ({_EXAMPLES})")
    else:
        raise ValueError(f"{what}: {value!r} is not a duration ({_EXAMPLES})")
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
    return count, seconds(period, f"{what}: the period of {value!r}")
