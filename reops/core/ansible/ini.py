"""Ansible's INI inventory format: `[group]`, `[group:children]`, `[group:vars]`, host lines.

Read line by line the way Ansible's ini plugin reads it (hosts before any section are
`ungrouped`; a `[x:vars]` or `[y:children]` entry may name a group declared further down;
values are Python literals where they parse as one), so `file:line` can name any fault.
"""

from __future__ import annotations

import re
import shlex

from reops.core.ansible.patterns import PatternError, expand, parse_value, split_port
from reops.core.ansible.tree import Origin, Tree, Var

__all__ = ["parse"]

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")
_GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")


def parse(tree: Tree, text: str) -> None:
    """Fill `tree` from INI `text`; raise InventoryError at the first line Ansible refuses."""
    group, state = "ungrouped", "hosts"
    # groups named by a [x:vars] or [y:children] section before their own declaration
    pending: dict[str, tuple[int, str, str]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = _SECTION.match(line)
        if m:
            group, kind = m.group(1), m.group(2) or "hosts"
            if kind not in ("hosts", "children", "vars"):
                raise tree.error(lineno, f"section [{group}:{kind}] has unknown type {kind!r} "
                                 "(use [NAME], [NAME:children] or [NAME:vars])")
            state = kind
            if group not in tree.groups:
                tree.group(group, lineno)
                if kind == "vars":
                    pending[group] = (lineno, "vars", group)
            if kind != "vars":
                pending.pop(group, None)  # declared at last
            continue
        if line.startswith("[") and line.endswith("]"):
            raise tree.error(lineno, f"invalid section {line!r}: no spaces inside [ ], and "
                             "only [NAME], [NAME:children] or [NAME:vars]")
        origin = Origin(tree.path, lineno)
        if state == "hosts":
            _host_line(tree, line, group, origin)
        elif state == "vars":
            if "=" not in line:
                raise tree.error(lineno, f"[{group}:vars]: expected key=value, got {line!r}")
            key, value = (part.strip() for part in line.split("=", 1))
            if value.startswith("$ANSIBLE_VAULT") or value.startswith("!vault"):
                raise _vault(tree, lineno)
            tree.groups[group].vars[key] = Var(parse_value(value), origin)
        else:  # children
            m = _GROUP_NAME.match(line)
            if not m:
                raise tree.error(lineno, f"[{group}:children]: expected a group name, got {line!r}")
            child = m.group(1)
            if child not in tree.groups:
                tree.group(child, lineno)
                pending[child] = (lineno, "children", group)
            elif child in pending and pending[child][1] == "children":
                pending[child] = (lineno, "children", group)
            tree.add_child(group, child, lineno)
    for name, (lineno, kind, parent) in pending.items():
        if kind == "vars":
            raise tree.error(lineno, f"section [{name}:vars] is for group {name!r}, which is "
                             f"declared nowhere: add a [{name}] section or fix the name")
        raise tree.error(lineno, f"[{parent}:children] names group {name!r}, which is declared "
                         f"nowhere: add a [{name}] section or fix the name")


def _host_line(tree: Tree, line: str, group: str, origin: Origin) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:
        raise tree.error(origin, f"cannot read host line {line!r}: {e}") from None
    if not tokens:
        return
    try:
        pattern, port = split_port(tokens[0])
        names = expand(pattern)
    except PatternError as e:
        raise tree.error(origin, str(e)) from None
    if pattern.strip() == "---":
        raise tree.error(origin, "'---' starts a YAML document: name the file .yml or .yaml")
    variables: dict[str, Var] = {}
    if port is not None:
        variables["ansible_port"] = Var(port, origin)
    for token in tokens[1:]:
        if "=" not in token:
            raise tree.error(origin, f"expected key=value after the host name, got {token!r}")
        key, value = token.split("=", 1)
        if value.startswith("$ANSIBLE_VAULT") or value.startswith("!vault"):
            raise _vault(tree, origin.line)
        variables[key] = Var(parse_value(value), origin)
    for name in names:
        node = tree.host(name, origin.line, group)
        node.vars.update(variables)


def _vault(tree: Tree, line: int) -> Exception:
    return tree.error(line, "vault-encrypted values are not supported: decrypt it "
                      "(ansible-vault decrypt) or keep secrets out of the inventory")
