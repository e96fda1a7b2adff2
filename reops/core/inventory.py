"""Load and validate TOML inventories; select hosts from them.

An inventory file has three tables (see DESIGN.md §3)::

    [defaults]          user, port, key, known_hosts, jump, vars: for every host
    [groups.NAME]       the same fields, for the group's members
    [hosts.NAME]        address, port, user, key, known_hosts, jump, groups, tags, vars,
                        agent_key (the fingerprint its agent must have, see reops keys)

`jump` is a bastion or a chain of them (first hop first), as ssh's ProxyJump: each the name
of another host of the inventory (reached with its own settings) or `[user@]host[:port]`;
`"none"` (or `[]`) means direct, overriding ssh_config. A host never jumps through itself,
so `[defaults] jump = "bastion1"` leaves bastion1 itself direct.

Fields the file leaves out stay unset, so the user's ssh_config (HostName, Port, User,
IdentityFile, ProxyJump …) may fill them in (`Host.implicit`).

Settings resolve host > groups (the first group listed in the host's `groups` wins) >
defaults; `vars` merge key by key in the same order. `address` defaults to the host's name;
`key` and `known_hosts` expand `~` and resolve against the inventory file's directory.
Groups a host names without a `[groups.X]` table exist implicitly, as in Ansible.

Every problem is an `InventoryError` naming the file, the line and the field, because an
inventory is edited by hand and a typo must never silently change which hosts a command hits.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from reops.core.model import Host, Hosts
from reops.core.selector import SelectorError, hint, select, standard_atoms

__all__ = ["Group", "Inventory", "InventoryError", "SelectorError", "default_path", "inventory",
           "loads"]

SECTIONS = ("defaults", "groups", "hosts")
SHARED_FIELDS = ("user", "port", "key", "known_hosts", "jump", "vars")
HOST_FIELDS = ("address", "port", "user", "key", "known_hosts", "jump", "groups", "tags",
               "vars", "agent_key")
#: how deep a chain of bastions (each with its own jump) may nest before it is a loop
MAX_JUMPS = 8
# characters that mean something in a selector, so a name holding them could not be selected
_NOT_IN_NAMES = re.compile(r"[\s,&!():*?\[\]=]")


class InventoryError(ValueError):
    """A problem in an inventory file: one line, `file:line: where: what`."""


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """A named set of hosts with settings and vars for its members."""

    name: str
    hosts: tuple[str, ...] = ()
    vars: dict[str, Any] = msgspec.field(default_factory=dict)
    user: str | None = None
    port: int | None = None
    key: str | None = None
    known_hosts: str | None = None
    jump: tuple[str, ...] | None = None
    defined: bool = True  # False for a group only named in some host's `groups`


# ── finding the line of a value: tomllib reports none ───────────────────────────────────

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_path(s: str, i: int) -> tuple[list[str], int] | None:
    """Parse a dotted TOML key at s[i:]; return its parts and the index after it."""
    parts: list[str] = []
    n = len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] == '"':
            j = i + 1
            while j < n and s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            try:
                parts.append(json.loads(s[i : j + 1]))
            except ValueError:
                parts.append(s[i + 1 : j])
            i = j + 1
        elif i < n and s[i] == "'":
            j = s.find("'", i + 1)
            if j == -1:
                return None
            parts.append(s[i + 1 : j])
            i = j + 1
        else:
            m = _BARE_KEY.match(s, i)
            if not m:
                return None
            parts.append(m.group())
            i = m.end()
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] == ".":
            i += 1
            continue
        return parts, i


class _Lines:
    """Where each table header and key assignment of a TOML source is, by full key path."""

    def __init__(self, text: str) -> None:
        self.where: dict[tuple[str, ...], int] = {}
        self.count = text.count("\n") + 1
        table: list[str] = []
        in_multiline: str | None = None
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                start = 2 if line.startswith("[[") else 1
                parsed = _key_path(line, start)
                if parsed and parsed[1] < len(line) and line[parsed[1]] == "]":
                    table = parsed[0]
                    for k in range(1, len(table) + 1):  # [a.b] also defines a
                        self.where.setdefault(tuple(table[:k]), lineno)
                continue
            parsed = _key_path(line, 0)
            if parsed and parsed[1] < len(line) and line[parsed[1]] == "=":
                path = (*table, *parsed[0])
                for k in range(len(table) + 1, len(path) + 1):  # dotted keys define tables
                    self.where.setdefault(path[:k], lineno)
                rest = line[parsed[1] + 1 :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote

    def line(self, path: tuple[str, ...]) -> int:
        """The line of `path`, or of its nearest enclosing table or key; 1 if unknown."""
        for k in range(len(path), 0, -1):
            if path[:k] in self.where:
                return self.where[path[:k]]
        return 1


# ── validation ──────────────────────────────────────────────────────────────────────────


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML, roughly: 'abc', 3, true, [...], {...}."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


class _Loader:
    """Validates parsed TOML into Groups and Hosts, raising with file:line on the first fault."""

    def __init__(self, text: str, path: Path) -> None:
        self.path = path
        self.text = text
        self.base = path.parent if path.name else Path.cwd()
        self.lines = _Lines(text)
        self.jumps: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {}

    def fail(self, where: tuple[str, ...], message: str) -> InventoryError:
        if len(where) > 1 and where[0] in ("hosts", "groups"):
            who = f"{where[0][:-1]} {where[1]!r}: "
        elif where and where[0] in SECTIONS:
            who = f"{where[0]}: "
        else:
            who = ""
        return InventoryError(f"{self.path}:{self.lines.line(where)}: {who}{message}")

    def table(self, value: Any, where: tuple[str, ...], what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            must = f"{what} must" if what else "must"
            raise self.fail(where, f"{must} be a table, got {_show(value)}")
        return value

    def check_fields(
        self,
        data: Mapping[str, Any],
        where: tuple[str, ...],
        valid: tuple[str, ...],
        noun: str = "field",
    ) -> None:
        for name in data:
            if name not in valid:
                help_ = hint(name, valid, limit=1) or f" (valid {noun}s: {', '.join(valid)})"
                raise self.fail((*where, name), f"unknown {noun} {name!r}{help_}")

    def check_name(self, name: str, where: tuple[str, ...], kind: str = "") -> None:
        """Reject names a selector could not express; `kind` when naming another thing."""
        if not name or _NOT_IN_NAMES.search(name):
            what = f"{kind} name {name!r}" if kind else "name"
            raise self.fail(
                where,
                f"{what} cannot be used in selectors; avoid spaces and , & ! ( ) : * ? [ ] =",
            )

    def path_field(self, value: Any, where: tuple[str, ...], field: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"{field} must be a path (a string), got {_show(value)}")
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (self.base / p).resolve())

    def settings(self, data: Mapping[str, Any], where: tuple[str, ...]) -> dict[str, Any]:
        """The validated shared fields (user, port, key, known_hosts, vars) present in data."""
        out: dict[str, Any] = {}
        if "user" in data:
            user = data["user"]
            if not isinstance(user, str) or not user:
                raise self.fail((*where, "user"), f"user must be a string, got {_show(user)}")
            out["user"] = user
        if "port" in data:
            port = data["port"]
            if isinstance(port, bool) or not isinstance(port, int):
                raise self.fail((*where, "port"), f"port must be an integer, got {_show(port)}")
            if not 1 <= port <= 65535:
                raise self.fail((*where, "port"), f"port must be between 1 and 65535, got {port}")
            out["port"] = port
        for field in ("key", "known_hosts"):
            if field in data:
                out[field] = self.path_field(data[field], (*where, field), field)
        if "jump" in data:
            out["jump"] = self.jump_field(data["jump"], (*where, "jump"))
        if "vars" in data:
            out["vars"] = dict(self.table(data["vars"], (*where, "vars"), "vars"))
        return out

    def jump_field(self, value: Any, where: tuple[str, ...]) -> tuple[str, ...]:
        """`"b1"`, `["b1", "user@b2:2222"]`, `"none"`/`[]` (direct) as a tuple of hops."""
        hops = [value] if isinstance(value, str) else value
        if not isinstance(hops, list) or not all(isinstance(h, str) and h.strip()
                                                 for h in hops):
            raise self.fail(where, "jump must be a bastion (a host name or user@host:port) "
                            f"or a list of them, got {_show(value)}")
        if [h.lower() for h in hops] == ["none"]:
            return ()
        for h in hops:
            if _hop(h) is None:
                raise self.fail(where, f"jump {h!r} is not a host name or "
                                "[user@]host[:port]")
        return tuple(h.strip() for h in hops)

    def groups_field(self, value: Any, where: tuple[str, ...]) -> tuple[str, ...]:
        if isinstance(value, str):
            raise self.fail(
                where,
                f"groups must be a list of group names, got {value!r} "
                f"(write groups = [{json.dumps(value)}])",
            )
        if not isinstance(value, list):
            raise self.fail(where, f"groups must be a list of group names, got {_show(value)}")
        for i, g in enumerate(value):
            if not isinstance(g, str):
                raise self.fail(where, f"groups[{i}] must be a group name, got {_show(g)}")
            self.check_name(g, where, "group")
        return tuple(dict.fromkeys(value))

    def tags_field(self, value: Any, where: tuple[str, ...]) -> dict[str, str]:
        tags = self.table(value, where, "tags")
        for k, v in tags.items():
            if not isinstance(v, str):
                raise self.fail(
                    (*where, k), f"tags.{k} must be a string, got {_show(v)} (quote it)"
                )
        return dict(tags)

    def load(self) -> Inventory:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as e:
            raise self.syntax_error(e) from None
        self.check_fields(data, (), SECTIONS, "section")
        defaults_raw = self.table(data.get("defaults", {}), ("defaults",), "")
        self.check_fields(defaults_raw, ("defaults",), SHARED_FIELDS)
        defaults = self.settings(defaults_raw, ("defaults",))

        groups: dict[str, dict[str, Any]] = {}
        for name, raw in self.table(data.get("groups", {}), ("groups",), "").items():
            where = ("groups", name)
            self.check_name(name, where)
            raw = self.table(raw, where, "")
            self.check_fields(raw, where, SHARED_FIELDS)
            groups[name] = self.settings(raw, where)

        hosts: list[Host] = []
        for name, raw in self.table(data.get("hosts", {}), ("hosts",), "").items():
            where = ("hosts", name)
            self.check_name(name, where)
            if name == "all":
                raise self.fail(where, "'all' is reserved: the selector 'all' means every host")
            raw = self.table(raw, where, "")
            hosts.append(self.host(name, raw, defaults, groups))
        hosts = self.resolve_jumps(hosts, defaults)

        return Inventory(self.path, Hosts(hosts), self.group_structs(groups, hosts))

    def host(
        self,
        name: str,
        raw: dict[str, Any],
        defaults: dict[str, Any],
        groups: dict[str, dict[str, Any]],
    ) -> Host:
        where = ("hosts", name)
        self.check_fields(raw, where, HOST_FIELDS)
        own = self.settings(raw, where)
        member_of = self.groups_field(raw.get("groups", []), (*where, "groups"))
        if "address" in raw:
            address = raw["address"]
            if not isinstance(address, str) or not address.strip():
                raise self.fail(
                    (*where, "address"), f"address must be a non-empty string, got {_show(address)}"
                )
        else:
            address = name
        implicit = {"address"} if "address" not in raw else set()
        tags = self.tags_field(raw.get("tags", {}), (*where, "tags"))
        agent_key = raw.get("agent_key")
        if agent_key is not None and (not isinstance(agent_key, str) or not agent_key.strip()):
            raise self.fail((*where, "agent_key"), "agent_key must be the agent's key "
                            f"fingerprint (reops keys), got {_show(agent_key)}")
        # lowest precedence first: defaults, groups from last-listed to first, the host itself
        layers = [defaults, *(groups.get(g, {}) for g in reversed(member_of)), own]
        merged: dict[str, Any] = {}
        host_vars: dict[str, Any] = {}
        for layer in layers:
            merged.update({k: v for k, v in layer.items() if k != "vars"})
            host_vars.update(layer.get("vars", {}))
        if "port" not in merged:
            implicit.add("port")
        self.jumps[name] = (merged.get("jump"), self.jump_where(name, member_of))
        return Host(
            name=name,
            address=address,
            port=merged.get("port", 22),
            user=merged.get("user"),
            key=merged.get("key"),
            known_hosts=merged.get("known_hosts"),
            groups=member_of,
            tags=tags,
            vars=host_vars,
            agent_key=agent_key,
            implicit=frozenset(implicit),
        )

    def jump_where(self, name: str, member_of: tuple[str, ...]) -> tuple[str, ...]:
        """Where a host's `jump` was written: itself, its first group that has one, defaults."""
        for where in (("hosts", name), *(("groups", g) for g in member_of), ("defaults",)):
            if (*where, "jump") in self.lines.where:
                return (*where, "jump")
        return ("hosts", name)

    def resolve_jumps(self, hosts: list[Host], defaults: dict[str, Any]) -> list[Host]:
        """Each host's `jump` names as Hosts: inventory hosts (with their own jumps) or
        `[user@]host[:port]` bastions that take the defaults' key and known_hosts."""
        by_name = {h.name: h for h in hosts}
        done: dict[str, Host] = {}

        def resolve(name: str, trail: tuple[str, ...]) -> Host:
            if name in done:
                return done[name]
            host = by_name[name]
            specs, where = self.jumps.get(name, (None, ("hosts", name)))
            if specs is None:
                done[name] = host
                return host
            chain: list[Host] = []
            for spec in specs:
                if spec == name:
                    continue  # a host never jumps through itself
                if spec in trail:
                    loop = " -> ".join((*trail, name, spec))
                    raise self.fail(where, f"jump loops: {loop}")
                if len(trail) >= MAX_JUMPS:
                    raise self.fail(where, f"jump chain deeper than {MAX_JUMPS} bastions")
                if spec in by_name:
                    chain.append(resolve(spec, (*trail, name)))
                else:
                    chain.append(_spec_host(spec, defaults))
            done[name] = msgspec.structs.replace(host, jump=tuple(chain))
            return done[name]

        return [resolve(h.name, ()) for h in hosts]

    def group_structs(
        self, groups: dict[str, dict[str, Any]], hosts: list[Host]
    ) -> dict[str, Group]:
        names = list(groups) + [g for h in hosts for g in h.groups if g not in groups]
        return {
            g: Group(
                name=g,
                hosts=tuple(h.name for h in hosts if g in h.groups),
                defined=g in groups,
                **groups.get(g, {}),
            )
            for g in dict.fromkeys(names)
        }

    def syntax_error(self, e: tomllib.TOMLDecodeError) -> InventoryError:
        message = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if m:
            line, col = int(m.group(1)), int(m.group(2))
            return InventoryError(
                f"{self.path}:{line}: invalid TOML: {message[: m.start()]} (column {col})"
            )
        m = re.search(r"\s*\(at end of document\)$", message)
        if m:
            return InventoryError(
                f"{self.path}:{self.lines.count}: invalid TOML: "
                f"{message[: m.start()]} (at end of file)"
            )
        return InventoryError(f"{self.path}:1: invalid TOML: {message}")


_HOP = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]\s]+\]|[^@:\s\[\]]+)"
                  r"(?::(?P<port>\d{1,5}))?$")


def _hop(spec: str) -> tuple[str | None, str, int | None] | None:
    """`[user@]host[:port]` (IPv6 in brackets) as (user, host, port), or None."""
    m = _HOP.match(spec.strip())
    if m is None:
        return None
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        return None
    return m["user"], m["host"].strip("[]"), port


def _spec_host(spec: str, defaults: dict[str, Any]) -> Host:
    """A bastion written as `[user@]host[:port]`: a Host named by the spec."""
    parsed = _hop(spec)
    assert parsed is not None  # checked by jump_field
    user, address, port = parsed
    # like a ProxyJump hop, the name may be an ssh_config alias (HostName, Port)
    return Host(name=spec, address=address, port=port or 22,
                user=user or defaults.get("user"), key=defaults.get("key"),
                known_hosts=defaults.get("known_hosts"),
                implicit=frozenset({"address"} | ({"port"} if port is None else set())))


# ── the public face ─────────────────────────────────────────────────────────────────────


class Inventory:
    """The hosts and groups of one inventory file; `select` picks hosts by selector."""

    __slots__ = ("groups", "hosts", "path")

    def __init__(self, path: Path, hosts: Hosts, groups: dict[str, Group]) -> None:
        self.path = path
        self.hosts = hosts
        self.groups = groups

    def select(self, selector: str) -> Hosts:
        """Hosts matching `selector` (e.g. `group:web & !web3`), in inventory order.

        Raises SelectorError on bad syntax or a name, group or tag that exists nowhere.
        """
        atoms = standard_atoms(list(self.hosts), known_groups=self.groups)
        return Hosts(select(self.hosts, selector, atoms))

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __repr__(self) -> str:
        return f"Inventory({str(self.path)!r}, {len(self.hosts)} hosts, {len(self.groups)} groups)"


def loads(text: str, path: str | os.PathLike[str] = "<inventory>") -> Inventory:
    """An Inventory from TOML text; `path` names it in errors and anchors relative keys."""
    return _Loader(text, Path(path)).load()


def default_path() -> Path:
    """$REOPS_INVENTORY, else ./inventory.toml, else ./lab/inventory.toml: where every entry
    point (CLI, flows, REPL, `inventory()`) looks when not given a path."""
    env = os.environ.get("REOPS_INVENTORY")
    if env:
        return Path(env)
    for candidate in (Path("inventory.toml"), Path("lab/inventory.toml")):
        if candidate.exists():
            return candidate
    return Path("inventory.toml")


def inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Load and validate the inventory at `path` (default: `default_path()`): TOML, or an
    Ansible INI/YAML file by its suffix (.ini, .yml, .yaml; see reops.core.ansible)."""
    if path is None:
        path = default_path()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InventoryError(f"{p}: inventory file not found") from None
    except IsADirectoryError:
        raise InventoryError(f"{p}: is a directory, not an inventory file") from None
    except OSError as e:
        raise InventoryError(f"{p}: cannot read inventory: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InventoryError(f"{p}:{line}: inventory is not valid UTF-8") from None
    if p.suffix.lower() != ".toml":  # a .toml name never pays for the Ansible readers (yaml)
        from reops.core import ansible  # imports this module: loaded on first use

        if ansible.is_ansible(p, text):
            return ansible.load(text, p)
    return _Loader(text, p).load()


class _CallableModule(types.ModuleType):
    """`reops.core.inventory` is this module once imported, and `inventory(path)` the function:
    making the module callable keeps `from reops import inventory` a loader either way."""

    def __call__(self, path: str | os.PathLike[str] | None = None) -> Inventory:
        return inventory(path)


sys.modules[__name__].__class__ = _CallableModule
