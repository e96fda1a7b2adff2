"""Ansible's YAML inventory format (`all: {hosts:, vars:, children:}`), and vars files.

PyYAML's node tree keeps each key's line, so a fault names `file:line`; `!vault` values and
inventory plugin configs (`plugin: aws_ec2`) are refused there with what to do instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reops.core.ansible.patterns import PatternError, expand, split_port
from reops.core.ansible.tree import Origin, Tree, Var
from reops.core.inventory import InventoryError

__all__ = ["parse", "read_vars"]

_SECTIONS = ("hosts", "vars", "children")
_MAP = "tag:yaml.org,2002:map"
_NULL = "tag:yaml.org,2002:null"


def _compose(text: str, path: Path) -> yaml.Node | None:
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise InventoryError(f"{path}:{line}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise InventoryError(f"{path}:1: invalid YAML: {e}") from None
    finally:
        loader.dispose()


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _value(node: yaml.Node, path: Path) -> Any:
    """A node as plain Python; a vault or unknown tag is an error at its line."""
    tag = node.tag or ""
    if tag.startswith("!vault") or (isinstance(node, yaml.ScalarNode)
                                    and str(node.value).startswith("$ANSIBLE_VAULT")):
        raise InventoryError(f"{path}:{_line(node)}: vault-encrypted values are not supported: "
                             "decrypt it (ansible-vault decrypt) or keep secrets out of the "
                             "inventory")
    if tag == "!unsafe":
        return str(node.value)
    if isinstance(node, yaml.MappingNode):
        return {str(_value(k, path)): _value(v, path) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_value(v, path) for v in node.value]
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise InventoryError(f"{path}:{_line(node)}: cannot read value: {e}") from None


def _pairs(node: yaml.Node, path: Path, what: str) -> list[tuple[str, yaml.Node]]:
    """A mapping's (key, value node) pairs; null is an empty mapping."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        return []
    if not isinstance(node, yaml.MappingNode):
        raise InventoryError(f"{path}:{_line(node)}: {what} must be a mapping, "
                             f"got {_value(node, path)!r}")
    return [(str(_value(k, path)), v) for k, v in node.value]


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def parse(tree: Tree, text: str) -> None:
    """Fill `tree` from a YAML (or JSON) inventory."""
    root = _compose(text, tree.path)
    if root is None:
        return
    pairs = _pairs(root, tree.path, "the inventory")
    keys = dict(pairs)
    if "plugin" in keys:
        raise tree.error(_line(keys["plugin"]),
                         f"inventory plugins (plugin: {_value(keys['plugin'], tree.path)}) are "
                         f"not supported: export the hosts with `ansible-inventory -i "
                         f"{tree.path.name} --list --yaml > hosts.yml` and use that file")
    for name, node in pairs:
        tree.group(name, _line(node))
        _group(tree, name, node)


def _group(tree: Tree, name: str, node: yaml.Node) -> None:
    path = tree.path
    for section, value in _pairs(node, path, f"group {name!r}"):
        if section not in _SECTIONS:
            raise tree.error(_line(value), f"group {name!r}: unknown key {section!r} "
                             "(a group has hosts:, vars: and children:; indent hosts under "
                             "hosts:)")
        if section == "vars":
            for key, v in _pairs(value, path, f"group {name!r} vars"):
                tree.groups[name].vars[key] = Var(_value(v, path), Origin(path, _line(v)))
        elif section == "children":
            for child, sub in _pairs(value, path, f"group {name!r} children"):
                tree.group(child, _line(sub))
                tree.add_child(name, child, _line(sub))
                if not _is_null(sub):
                    _group(tree, child, sub)
        else:
            for pattern, hvars in _pairs(value, path, f"group {name!r} hosts"):
                line = _line(hvars)
                try:
                    host, port = split_port(pattern)
                    names = expand(host)
                except PatternError as e:
                    raise tree.error(line, str(e)) from None
                own: dict[str, Var] = {}
                if port is not None:
                    own["ansible_port"] = Var(port, Origin(path, line))
                for key, v in _pairs(hvars, path, f"host {pattern!r}"):
                    own[key] = Var(_value(v, path), Origin(path, _line(v)))
                for h in names:
                    tree.host(h, line, name).vars.update(own)


def read_vars(path: Path) -> dict[str, Var]:
    """A group_vars/ or host_vars/ file (YAML or JSON): its top-level vars with their lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InventoryError(f"{path}: cannot read vars file: {e}") from None
    if text.startswith("$ANSIBLE_VAULT"):
        raise InventoryError(f"{path}:1: vault-encrypted file is not supported: decrypt it "
                             "(ansible-vault decrypt) or keep secrets out of the inventory")
    root = _compose(text, path)
    if root is None:
        return {}
    return {k: Var(_value(v, path), Origin(path, _line(v)))
            for k, v in _pairs(root, path, "a vars file")}
