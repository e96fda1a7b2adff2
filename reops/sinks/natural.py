"""Host names in the order people count (`web2` before `web10`) and folded like
ClusterShell's node sets (`web[1-3,7],db1`), so a summary of 200 hosts stays one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_DIGITS = re.compile(r"(\d+)")
_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: digit runs compare as numbers, the rest as text (`web2` < `web10`)."""
    return tuple((1, int(part)) if part.isdigit() else (0, part)
                 for part in _DIGITS.split(name) if part)


def natural_sorted(names: Iterable[str]) -> list[str]:
    """`names` in natural order."""
    return sorted(names, key=natural_key)


def _ranges(numbers: list[int], pad: int) -> str:
    """`[1, 2, 3, 7]` → `1-3,7` (zero-padded to `pad` digits)."""
    out: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        a, b = str(start).zfill(pad), str(prev).zfill(pad)
        out.append(a if start == prev else f"{a}-{b}")
        if n is not None:
            start = prev = n
    return ",".join(out)


def fold(names: Iterable[str], limit: int | None = None) -> str:
    """Names folded on their last number, natural order: `web[1-3,7],db1`.

    Each name appears once; with `limit`, only the first `limit` names (natural order) are
    folded and the rest are counted: `web[1-20],… +5 more`. Names that already hold `[`,
    `]` or `,` are listed as they are (folding them would be ambiguous).
    """
    unique = natural_sorted(set(names))
    rest = 0
    if limit is not None and len(unique) > limit:
        unique, rest = unique[:limit], len(unique) - limit
    groups: dict[tuple[str, str, int], list[int]] = {}
    order: list[tuple[str, str, int] | str] = []
    for name in unique:
        m = _LAST_NUMBER.match(name)
        if m is None or any(c in name for c in "[],"):
            order.append(name)
            continue
        prefix, digits, suffix = m.groups()
        pad = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        if not pad and (prefix, suffix, len(digits)) in groups:
            pad = len(digits)  # web10 joins web01..web09 (same width)
        key = (prefix, suffix, pad)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(int(digits))
    parts: list[str] = []
    for item in order:
        if isinstance(item, str):
            parts.append(item)
            continue
        prefix, suffix, pad = item
        numbers = sorted(set(groups[item]))
        if len(numbers) == 1:
            parts.append(f"{prefix}{str(numbers[0]).zfill(pad)}{suffix}")
        else:
            parts.append(f"{prefix}[{_ranges(numbers, pad)}]{suffix}")
    if rest:
        parts.append(f"… +{rest} more")
    return ",".join(parts)
