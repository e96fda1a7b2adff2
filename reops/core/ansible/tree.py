"""The groups and hosts of an Ansible inventory, merged into reops Hosts as Ansible merges them.

Both formats (INI, YAML) fill one `Tree`: groups with their vars, children and hosts, hosts with
their vars, every var remembering the file and line it came from. `build()` applies Ansible's
rules — every group under `all`, hosts in no group in `ungrouped`, group_vars/ and host_vars/
beside the file, vars merged `all` < groups by (depth, ansible_group_priority, name) <
group_vars files < host < host_vars — then maps the connection vars onto Host fields. A value
reops cannot honour is an error at the line that set it, not a silent change of behaviour.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from reops.core.inventory import _NOT_IN_NAMES, Group, Inventory, InventoryError, _hop, _spec_host
from reops.core.model import Host, Hosts

__all__ = ["Origin", "Tree", "Var"]

#: Ansible connection vars → the Host field they set (the ansible_ssh_* spellings are older)
FIELDS = {
    "ansible_host": "address", "ansible_ssh_host": "address",
    "ansible_port": "port", "ansible_ssh_port": "port",
    "ansible_user": "user", "ansible_ssh_user": "user",
    "ansible_ssh_private_key_file": "key", "ansible_private_key_file": "key",
}
#: ansible_connection values that mean "over SSH", which is what reops does
SSH_CONNECTIONS = ("ssh", "smart", "paramiko", "paramiko_ssh", "ansible.builtin.ssh",
                   "ansible.builtin.paramiko_ssh")
PASSWORDS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password")
#: where Ansible users put a bastion: -o ProxyJump=…, -J …, or ProxyCommand="ssh -W %h:%p …"
SSH_ARGS = ("ansible_ssh_common_args", "ansible_ssh_extra_args")
MAX_JUMPS = 8


@dataclass(frozen=True)
class Origin:
    """Where a value was written: `file:line`."""

    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Var:
    value: Any
    origin: Origin


@dataclass
class GroupNode:
    name: str
    origin: Origin
    vars: dict[str, Var] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    hosts: dict[str, None] = field(default_factory=dict)  # an ordered set
    file_vars: dict[str, Var] = field(default_factory=dict)  # from group_vars/


@dataclass
class HostNode:
    name: str
    origin: Origin
    vars: dict[str, Var] = field(default_factory=dict)
    file_vars: dict[str, Var] = field(default_factory=dict)  # from host_vars/


class Tree:
    """What an inventory file says, before Ansible's rules are applied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        origin = Origin(path, 1)
        self.groups: dict[str, GroupNode] = {
            "all": GroupNode("all", origin), "ungrouped": GroupNode("ungrouped", origin)
        }
        self.hosts: dict[str, HostNode] = {}
        self._direct: dict[str, list[str]] = {}  # host -> the groups that list it
        self._ancestor_cache: dict[str, set[str]] = {}

    def error(self, origin: Origin | int, message: str) -> InventoryError:
        where = origin if isinstance(origin, Origin) else Origin(self.path, origin)
        return InventoryError(f"{where}: {message}")

    def group(self, name: str, line: int) -> GroupNode:
        if name not in self.groups:
            if not name or _NOT_IN_NAMES.search(name):
                raise self.error(line, f"group name {name!r} cannot be used in selectors; "
                                 "rename it without spaces and , & ! ( ) : * ? [ ] =")
            self.groups[name] = GroupNode(name, Origin(self.path, line))
        return self.groups[name]

    def host(self, name: str, line: int, group: str) -> HostNode:
        if name not in self.hosts:
            if not name or _NOT_IN_NAMES.search(name):
                raise self.error(
                    line, f"host name {name!r} cannot be used in selectors: name the host "
                    f"(e.g. h1) and set ansible_host={name}")
            self.hosts[name] = HostNode(name, Origin(self.path, line))
        self.groups[group].hosts[name] = None
        return self.hosts[name]

    def add_child(self, parent: str, child: str, line: int) -> None:
        if child == "all":
            raise self.error(line, f"group 'all' cannot be a child of {parent!r}")
        if parent == child or child in self._ancestors(parent):
            raise self.error(line, f"group {child!r} as a child of {parent!r} makes a loop")
        kids = self.groups[parent].children
        if child not in kids:
            kids.append(child)

    # ── Ansible's rules ────────────────────────────────────────────────────────────────

    def _parents(self) -> dict[str, list[str]]:
        parents: dict[str, list[str]] = {g: [] for g in self.groups}
        for g in self.groups.values():
            for c in g.children:
                parents.setdefault(c, []).append(g.name)
        return parents

    def _ancestors(self, name: str) -> set[str]:
        parents = self._parents()
        seen: set[str] = set()
        todo = list(parents.get(name, []))
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(parents.get(p, []))
        return seen

    def reconcile(self) -> None:
        """Every group hangs under `all`; hosts in no group are `ungrouped` (and only they)."""
        parents = self._parents()
        for name in self.groups:
            if name != "all" and not parents.get(name):
                self.groups["all"].children.append(name)
        direct: dict[str, list[str]] = {h: [] for h in self.hosts}
        for g in self.groups.values():
            for h in g.hosts:
                direct[h].append(g.name)
        ungrouped = self.groups["ungrouped"]
        for h, gs in direct.items():
            others = [g for g in gs if g not in ("all", "ungrouped")]
            if others:
                ungrouped.hosts.pop(h, None)
            else:
                ungrouped.hosts[h] = None
        self._direct = {h: [] for h in self.hosts}  # now that ungrouped is right
        for g in self.groups.values():
            for h in g.hosts:
                self._direct[h].append(g.name)

    def depths(self) -> dict[str, int]:
        depth = {"all": 0}
        todo = ["all"]
        while todo:
            g = todo.pop()
            for c in self.groups[g].children:
                if depth.get(c, -1) < depth[g] + 1:
                    depth[c] = depth[g] + 1
                    todo.append(c)
        return depth

    def host_groups(self, host: str) -> set[str]:
        out: set[str] = set()
        for g in self._direct[host]:
            out |= {g} | self._ancestor_cache.setdefault(g, self._ancestors(g))
        return out

    def build(self) -> Inventory:
        """The reops Inventory these groups and hosts make, vars merged as Ansible does."""
        self.reconcile()
        depth = self.depths()

        def priority(g: str) -> int:
            var = self.groups[g].vars.get("ansible_group_priority")
            try:
                return int(var.value) if var is not None else 1
            except (TypeError, ValueError):
                raise self.error(var.origin if var else 1,
                                 "ansible_group_priority must be an integer") from None

        def order(gs: set[str]) -> list[str]:
            return sorted(gs, key=lambda g: (depth.get(g, 1), priorities[g], g))

        priorities = {g: priority(g) for g in self.groups}
        for gnode in self.groups.values():  # a group's attribute in Ansible, not a var
            gnode.vars.pop("ansible_group_priority", None)
        members: dict[str, list[str]] = {g: [] for g in self.groups}
        hosts: list[Host] = []
        jumps: dict[str, tuple[tuple[str, ...] | None, Origin]] = {}
        for name, node in self.hosts.items():
            groups = order(self.host_groups(name) - {"all"})
            merged: dict[str, Var] = dict(self.groups["all"].vars)
            for g in groups:
                merged.update(self.groups[g].vars)
            merged.update(self.groups["all"].file_vars)
            for g in groups:
                merged.update(self.groups[g].file_vars)
            merged.update(node.vars)
            merged.update(node.file_vars)
            hosts.append(self._host(name, sorted(groups), merged))
            jump = next((merged[k] for k in reversed(SSH_ARGS) if k in merged), None)
            if jump is not None:
                jumps[name] = (self._jump(jump, f"host {name!r}"), jump.origin)
            for g in groups:
                members[g].append(name)
        structs = {
            g: self._group(g, members[g]) for g in self.groups
            if g != "all" and (g != "ungrouped" or members[g])
        }
        return Inventory(self.path, Hosts(self._resolve_jumps(hosts, jumps)), structs)

    # ── onto reops fields ──────────────────────────────────────────────────────────────

    def _host(self, name: str, groups: list[str], merged: dict[str, Var]) -> Host:
        fields, rest = self._fields(merged, f"host {name!r}")
        tags = {k: t for k, v in rest.items() if (t := _tag(v.value)) is not None}
        return Host(
            name=name,
            address=fields.get("address", name),
            port=fields.get("port", 22),
            user=fields.get("user"),
            key=fields.get("key"),
            groups=tuple(groups),
            tags=tags,
            vars={k: v.value for k, v in rest.items()},
            # what only falls back (the name, port 22) ssh_config's HostName/Port may replace
            implicit=frozenset(f for f in ("address", "port") if f not in fields),
        )

    def _jump(self, var: Var, who: str) -> tuple[str, ...] | None:
        """The bastions in ansible_ssh_common_args / _extra_args, first hop first."""
        if not isinstance(var.value, str):
            return None
        try:
            args = shlex.split(var.value)
        except ValueError as e:
            raise self.error(var.origin, f"{who}: cannot read the ssh args: {e}") from None
        found: tuple[str, ...] | None = None
        for i, arg in enumerate(args):
            value = None
            if arg in ("-J", "-o") and i + 1 < len(args):
                value = args[i + 1] if arg == "-J" else None
                option = args[i + 1] if arg == "-o" else ""
            elif arg.startswith(("-J", "-o")) and len(arg) > 2:
                value = arg[2:] if arg.startswith("-J") else None
                option = arg[2:] if arg.startswith("-o") else ""
            else:
                continue
            key, _, rest = option.replace("=", " ", 1).partition(" ")
            if key.lower() == "proxyjump":
                value = rest.strip()
            elif key.lower() == "proxycommand":
                value = self._proxy_command(rest.strip(), var, who)
            if value:
                found = tuple(h.strip() for h in value.split(",") if h.strip())
                for hop in found:
                    if _hop(hop) is None:
                        raise self.error(var.origin, f"{who}: jump host {hop!r} is not "
                                         "[user@]host[:port]")
        if found == ("none",):
            return ()
        return found

    def _proxy_command(self, command: str, var: Var, who: str) -> str:
        """`ssh -W %h:%p [-q] [-p PORT] [-l USER] [user@]bastion` as a ProxyJump hop."""
        words = shlex.split(command)
        if not words or os.path.basename(words[0]) != "ssh" or "-W" not in words:
            raise self.error(var.origin, f"{who}: ProxyCommand {command!r} is not supported: "
                             "write the bastion as -o ProxyJump=[user@]bastion[:port]")
        user = port = target = None
        i = 1
        while i < len(words):
            w = words[i]
            if w in ("-W", "-p", "-l", "-i", "-o", "-F"):
                if w == "-p":
                    port = words[i + 1] if i + 1 < len(words) else None
                elif w == "-l":
                    user = words[i + 1] if i + 1 < len(words) else None
                i += 2
                continue
            if not w.startswith("-"):
                target = w
            i += 1
        if target is None:
            raise self.error(var.origin, f"{who}: ProxyCommand {command!r} names no bastion")
        if user and "@" not in target:
            target = f"{user}@{target}"
        return f"{target}:{port}" if port else target

    def _resolve_jumps(self, hosts: list[Host],
                       jumps: dict[str, tuple[tuple[str, ...] | None, Origin]]) -> list[Host]:
        """Each host's bastions as Hosts: inventory hosts (with their own jumps) or
        `[user@]host[:port]`; a bastion never jumps through itself; loops are errors."""
        by_name = {h.name: h for h in hosts}
        done: dict[str, Host] = {}

        def resolve(name: str, trail: tuple[str, ...]) -> Host:
            if name in done:
                return done[name]
            specs, origin = jumps.get(name, (None, Origin(self.path, 1)))
            if specs is None:
                done[name] = by_name[name]
                return done[name]
            chain: list[Host] = []
            for spec in specs:
                if spec == name:
                    continue
                if spec in trail or len(trail) >= MAX_JUMPS:
                    raise self.error(origin, f"host {name!r}: jump loops or nests deeper than "
                                     f"{MAX_JUMPS}: {' -> '.join((*trail, name, spec))}")
                chain.append(resolve(spec, (*trail, name)) if spec in by_name
                             else _spec_host(spec, {}))
            done[name] = msgspec.structs.replace(by_name[name], jump=tuple(chain))
            return done[name]

        return [resolve(h.name, ()) for h in hosts]

    def _group(self, name: str, hosts: list[str]) -> Group:
        g = self.groups[name]
        merged = {**g.vars, **g.file_vars}
        fields, rest = self._fields(merged, f"group {name!r}")
        return Group(name=name, hosts=tuple(hosts), vars={k: v.value for k, v in rest.items()},
                     user=fields.get("user"), port=fields.get("port"), key=fields.get("key"))

    def _fields(self, merged: dict[str, Var], who: str) -> tuple[dict[str, Any], dict[str, Var]]:
        """Connection vars checked and mapped to Host fields; the other vars as they are."""
        fields: dict[str, Any] = {}
        rest: dict[str, Var] = {}
        for k, var in merged.items():
            v = var.value
            if k in PASSWORDS:
                raise self.error(var.origin, f"{who}: {k}: passwords in inventories are not "
                                 "supported; use a key or ssh-agent (ansible_ssh_private_key_file)")
            if k == "ansible_connection":
                if v not in SSH_CONNECTIONS:
                    raise self.error(var.origin, f"{who}: ansible_connection={v}: reops reaches "
                                     "hosts over SSH only; remove the host or use "
                                     "ansible_connection=ssh")
                continue
            if k not in FIELDS:
                rest[k] = var
                continue
            target = FIELDS[k]
            if isinstance(v, str) and "{{" in v:
                raise self.error(var.origin, f"{who}: {k}: Jinja templates are not evaluated by "
                                 "reops; write the value out")
            if target == "port":
                try:
                    port = int(v)
                except (TypeError, ValueError):
                    port = 0
                if isinstance(v, bool) or not 1 <= port <= 65535:
                    raise self.error(var.origin, f"{who}: {k} must be a port between 1 and "
                                     f"65535, got {v!r}")
                fields["port"] = port
            elif not isinstance(v, str) or not v:
                raise self.error(var.origin, f"{who}: {k} must be a string, got {v!r}")
            elif target == "key":
                p = Path(os.path.expanduser(v))
                fields["key"] = str(p if p.is_absolute() else (self.path.parent / p).resolve())
            else:
                fields[target] = v
        return fields, rest


def _tag(value: Any) -> str | None:
    """A var as a selector tag value: strings, numbers and booleans (`tag:env=prod`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None
