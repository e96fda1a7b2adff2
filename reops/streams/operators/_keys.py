"""What an event operator groups by: `key=` names an attribute or is a function.

The default, "key", is the attribute a trigger event carries; an item without one (a Result,
a Line) falls back to its `host`. A Host as a key counts by its name, so `key="host"` means
the same for a Result (a host name) and for an event that carries a Host.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from reops.core.model import Host

#: what `key=` accepts: an attribute name, or a function of the item
Key = str | Callable[[Any], Hashable]
KeyOf = Callable[[Any], Hashable]

_MISSING = object()


class BadKey(ValueError):
    """An item has no usable key: the stream ends with this one line."""


def key_of(key: Key, what: str) -> KeyOf:
    """The function that gives an item's key; a missing attribute is one clear error."""
    if callable(key):
        fn = key
        return lambda item: _name(fn(item), what)
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what}: key= must be an attribute name or a function, not {key!r}")
    name = key

    def get(item: Any) -> Hashable:
        value = getattr(item, name, _MISSING)
        if type(value) is str:  # the usual key (a host name): no further checks
            return value
        if value is _MISSING and name == "key":
            value = getattr(item, "host", _MISSING)
        if value is _MISSING:
            nor = " nor 'host'" if name == "key" else ""
            raise BadKey(f"{what}: a {type(item).__name__} has no attribute {name!r}{nor} "
                         "(give key= an attribute it has, or a function)")
        return _name(value, what)

    return get


def _name(value: Any, what: str) -> Hashable:
    if type(value) is str:
        return value
    if isinstance(value, Host):
        return value.name
    if not isinstance(value, Hashable):
        raise BadKey(f"{what}: a key must be hashable (a str, a number, a tuple), "
                     f"not a {type(value).__name__}")
    return value
