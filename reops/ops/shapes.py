"""One shape per word: the agent built-ins `facts` and `metrics` give the same typed data
as the SSH ops of those names.

The agent cannot import reops, so it returns plain dicts with the field names and types
of `Facts` and `Metrics`; `typed()` decodes them with msgspec.convert, so `Result.data` is
the same Struct whichever transport ran it. Data that does not fit (an agent older than
this schema) makes an error Result that says so, never a silently different shape.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from reops.core.model import Result
from reops.ops.facts import Facts
from reops.ops.metrics import Metrics

#: agent built-in name → the typed data its Results carry
SHAPES: dict[str, type[msgspec.Struct]] = {"facts": Facts, "metrics": Metrics}

E = TypeVar("E")


def typed(fn: str, event: E) -> E:
    """`event` with its data decoded into the shape of built-in `fn` (other functions,
    Lines and Results without a successful dict pass through unchanged)."""
    shape = SHAPES.get(fn)
    if shape is None or not isinstance(event, Result) or event.status != "ok" \
            or not isinstance(event.data, dict):
        return event
    # unknown keys would be dropped silently (an old agent's facts would decode to an
    # empty Facts), so they are refused like a field of the wrong type
    unknown = sorted(set(event.data) - set(shape.__struct_fields__))
    try:
        if unknown:
            raise msgspec.ValidationError(f"unknown fields {unknown}")
        data = msgspec.convert(event.data, shape)
    except msgspec.ValidationError as e:
        return msgspec.structs.replace(
            event, status="error",
            err=f"{event.err}{fn}: the agent's data is not a {shape.__name__} ({e}); "
                "is the agent older than this reops? Upgrade it")
    return msgspec.structs.replace(event, data=data)


__all__ = ["SHAPES", "typed"]
