"""Selecting systems, re-core style, in the inventory's grammar (`,` `&` `!` parentheses).

Words: `all`, `running` (has an ip), `typed:TYPE`, `hyp:HYPERVISOR`, `state:STATE`,
`id:PREFIX`, `KEY=VALUE` (hostname, type, os, hypervisor, state, ip, user, domain, cpu,
ram), a bare hex word of 4+ characters that prefixes an id, or a hostname glob.
Examples: `typed:redis & running`, `hyp:lab & !web*`, `3fa9c1`, `os=debian-12,cpu=4`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from reops.core.selector import AtomFactory, Predicate, SelectorError, compile, hint, is_glob
from reops.store.model import MIN_PREFIX, System

FIELDS = ("hostname", "type", "os", "hypervisor", "state", "ip", "user", "domain", "cpu", "ram")


def field(s: System, key: str) -> str:
    """The value of a selectable field of `s`, as text."""
    m, p = s.machine, s.placement
    values = {
        "hostname": m.hostname, "type": s.type, "os": m.os, "hypervisor": p.hypervisor,
        "state": s.state, "ip": m.ip or "", "user": m.user, "domain": m.domain,
        "cpu": str(m.cpu), "ram": str(m.ram),
    }
    return values[key]


def _is_hex(word: str) -> bool:
    return len(word) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in word)


def atoms(systems: Sequence[System]) -> dict[str, AtomFactory[System]]:
    """The words systems understand, checked against `systems` for helpful errors."""

    def key_value(word: str) -> Predicate[System]:
        key, _, value = word.partition("=")
        if key not in FIELDS:
            raise SelectorError(f"unknown field {key!r}{hint(key, FIELDS)}; known: {FIELDS}")
        return lambda s: fnmatch.fnmatchcase(field(s, key), value)

    def id_prefix(prefix: str) -> Predicate[System]:
        if not _is_hex(prefix):
            raise SelectorError(f"id: needs {MIN_PREFIX}+ hex characters, got {prefix!r}")
        return lambda s: s.id.startswith(prefix)

    def bare(word: str) -> Predicate[System]:
        if "=" in word:
            return key_value(word)
        names = [s.hostname for s in systems]
        if _is_hex(word) and any(s.id.startswith(word) for s in systems):
            return lambda s: s.id.startswith(word) or s.hostname == word
        if not is_glob(word) and word not in names:
            raise SelectorError(f"no system named or with id {word!r}{hint(word, names)}")
        return lambda s: fnmatch.fnmatchcase(s.hostname, word)

    return {
        "all": lambda _: lambda s: True,
        "running": lambda _: lambda s: bool(s.machine.ip),
        "typed:": lambda t: lambda s: s.type == t,
        "hyp:": lambda h: lambda s: s.placement.hypervisor == h,
        "state:": lambda st: lambda s: s.state == st,
        "id:": id_prefix,
        "": bare,
    }


def select(systems: Sequence[System], selector: str) -> list[System]:
    """The systems matching `selector`, in order; SelectorError says what is wrong and where."""
    pred = compile(selector, atoms(systems))
    return [s for s in systems if pred(s)]
