"""Ansible host patterns and INI values: `web[01:20].example:2222`, `db-[a:f]`, `x=1`.

Ansible expands a host line into many hosts with numeric or letter ranges (with an optional
stride, `[1:10:2]`) and accepts a trailing `:port`; INI values are Python literals where they
parse as one. The same rules here, so an inventory means the same hosts in reops as in Ansible.
"""

from __future__ import annotations

import ast
import re
import string
import warnings
from typing import Any

__all__ = ["PatternError", "expand", "parse_value", "split_port"]


class PatternError(ValueError):
    """A host pattern Ansible would refuse too; the message says what is wrong."""


# a [..] range: what Ansible's parse_address(allow_ranges=True) accepts inside brackets
_RANGE = r"\[[a-zA-Z0-9]*:[a-zA-Z0-9]+(?::[0-9]+)?\]"
_HOST_PORT = re.compile(rf"^((?:[^\[\]:]|{_RANGE})+):([0-9]+)$")
_IPV6_PORT = re.compile(r"^\[([0-9a-fA-F:.]+(?:%[^\]]+)?)\]:([0-9]+)$")


def split_port(pattern: str) -> tuple[str, int | None]:
    """`host:2222` → (host, 2222); `[::1]:2222` → ('::1', 2222); a bare IPv6 has no port."""
    m = _IPV6_PORT.match(pattern)
    if m:
        return m.group(1), int(m.group(2))
    m = _HOST_PORT.match(pattern)
    if m:
        return m.group(1), int(m.group(2))
    if pattern.endswith(":"):
        raise PatternError(
            f"host pattern {pattern!r} ends in ':' (reserved for a port: write host:PORT)"
        )
    return pattern, None


def expand(pattern: str) -> list[str]:
    """Every host name a pattern stands for, in Ansible's order: `web[1:3]` → web1 web2 web3."""
    if "[" not in pattern:
        return [pattern]
    if "]" not in pattern[pattern.index("[") :]:
        raise PatternError(f"host range in {pattern!r} is not closed with ']'")
    head, rest = pattern.split("[", 1)
    span, tail = rest.split("]", 1)
    bounds = span.split(":")
    if len(bounds) not in (2, 3):
        raise PatternError(f"host range [{span}] must be [begin:end] or [begin:end:step]")
    beg, end = bounds[0] or "0", bounds[1]
    if not end:
        raise PatternError(f"host range [{span}] has no end value")
    try:
        step = int(bounds[2]) if len(bounds) == 3 else 1
    except ValueError:
        raise PatternError(f"host range [{span}]: step {bounds[2]!r} is not a number") from None
    if step < 1:
        raise PatternError(f"host range [{span}]: step must be 1 or more")
    width = 0
    if beg[0] == "0" and len(beg) > 1:
        width = len(beg)
        if len(end) != width:
            raise PatternError(
                f"host range [{span}]: begin and end must have the same width "
                f"(write [{beg}:{end.zfill(width)}])"
            )
    letters = string.ascii_letters
    seq: list[str]
    if beg in letters and end in letters and len(beg) == len(end) == 1:
        i, j = letters.index(beg), letters.index(end)
        if i > j:
            raise PatternError(f"host range [{span}] must have begin <= end")
        seq = list(letters[i : j + 1 : step])
    else:
        try:
            seq = [str(n).zfill(width) for n in range(int(beg), int(end) + 1, step)]
        except ValueError:
            raise PatternError(
                f"host range [{span}] must be numbers ([01:20]) or single letters ([a:f])"
            ) from None
    out: list[str] = []
    for item in seq:
        out.extend(expand(f"{head}{item}{tail}"))
    return out


def parse_value(text: str) -> Any:
    """An INI value as Ansible reads it: a Python literal when it is one, else the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _plain(value)


def _plain(value: Any) -> Any:
    """Literal types Ansible turns into plain ones: tuples and sets → lists, bytes → str."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is ...:
        return "..."
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value
