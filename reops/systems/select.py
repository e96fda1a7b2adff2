"""Selecting systems, re-core style, in the inventory's grammar (`,` `&` `!` parentheses).

Words: `all`, `running` (has an ip), `typed:TYPE`, `hyp:HYPERVISOR`, `state:STATE`,
`id:PREFIX`, `KEY=VALUE` (hostname, type, os, hypervisor, state, ip, user, domain, cpu,
ram), a bare hex word of 4+ characters that prefixes an id, or a hostname glob.
A typo (a glob matching no name, a type or hypervisor close to one in use, an unknown
state) is an error saying what it is close to, as for hosts.
Examples: `typed:redis & running`, `hyp:lab & !web*`, `3fa9c1`, `os=debian-12,cpu=4`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import get_args

from reops.core.selector import AtomFactory, Predicate, SelectorError, compile, hint, is_glob
from reops.store.model import MIN_PREFIX, System, SystemState

#: the words that are neither names nor `prefix:` kinds (offered for typos of them)
KEYWORDS = ("all", "running")
STATES: tuple[str, ...] = get_args(SystemState)
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
        if is_glob(word):
            if systems and not any(fnmatch.fnmatchcase(n, word) for n in names):
                stem = word.split("*")[0].split("?")[0].split("[")[0]
                raise SelectorError(f"no system matches {word!r}{hint(stem, names)}")
            return lambda s: fnmatch.fnmatchcase(s.hostname, word)
        if word not in names:
            types = sorted({s.type for s in systems if s.type})
            near = (f" (did you mean 'typed:{word}'?)" if word in types else
                    hint(word, [*names, *KEYWORDS]))
            raise SelectorError(f"no system named or with id {word!r}{near}")
        return lambda s: s.hostname == word

    def in_use(what: str, value: str, values: Sequence[str], known: Sequence[str] = ()) -> None:
        """A value no system has is an error when it looks like a typo of one in use (or is
        no value at all, for states); else it simply selects nothing (a type not used yet)."""
        if value in values or value in known:
            return
        near = hint(value, [*known, *values])
        if near or known:
            listed = f"; known: {', '.join(known)}" if known else ""
            raise SelectorError(f"no system has {what} {value!r}{near}{listed}")

    def typed(t: str) -> Predicate[System]:
        in_use("type", t, [s.type for s in systems if s.type])
        return lambda s: s.type == t

    def hyp(h: str) -> Predicate[System]:
        in_use("hypervisor", h, [s.placement.hypervisor for s in systems])
        return lambda s: s.placement.hypervisor == h

    def state(st: str) -> Predicate[System]:
        in_use("state", st, [], STATES)
        return lambda s: s.state == st

    return {
        "all": lambda _: lambda s: True,
        "running": lambda _: lambda s: bool(s.machine.ip),
        "typed:": typed,
        "hyp:": hyp,
        "state:": state,
        "id:": id_prefix,
        "": bare,
    }


def select(systems: Sequence[System], selector: str) -> list[System]:
    """The systems matching `selector`, in order; SelectorError says what is wrong and where."""
    pred = compile(selector, atoms(systems))
    return [s for s in systems if pred(s)]
