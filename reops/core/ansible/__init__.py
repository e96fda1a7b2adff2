"""Ansible inventories read directly: `-i hosts.ini`, `-i hosts.yml`, group_vars/, host_vars/.

`load(text, path)` gives the same `Inventory` a TOML file would, so selectors, the CLI and the
API need nothing new: `group:NAME` covers a group's children too, host vars are `vars`, and
scalar vars are tags (`tag:env=prod`). See docs/inventory.md for what maps to what.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from reops.core.ansible import ini, yml
from reops.core.ansible.tree import Tree, Var
from reops.core.inventory import Inventory, InventoryError

__all__ = ["SUFFIXES", "is_ansible", "load"]

#: file name endings read as Ansible inventories (anything else is TOML)
SUFFIXES = {".ini": "ini", ".cfg": "ini", ".yml": "yaml", ".yaml": "yaml", ".json": "yaml"}
_VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")


def is_ansible(path: Path, text: str) -> bool:
    """An Ansible file by its suffix; or, with no suffix (Ansible's `hosts`), by not being
    TOML — a TOML inventory has a .toml name or parses as TOML."""
    if path.suffix.lower() in SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return True
    return False


def load(text: str, path: Path) -> Inventory:
    """The Inventory of Ansible INI or YAML `text` read from `path` (its suffix decides)."""
    if text.startswith("$ANSIBLE_VAULT"):
        raise InventoryError(f"{path}:1: vault-encrypted inventory is not supported: decrypt it "
                             "first (ansible-vault decrypt)")
    if text.startswith("#!"):
        raise InventoryError(f"{path}:1: dynamic inventory scripts are not supported: run "
                             f"`ansible-inventory -i {path.name} --list --yaml > hosts.yml` "
                             "and use hosts.yml")
    tree = Tree(path)
    if SUFFIXES.get(path.suffix.lower()) == "yaml":  # no suffix: INI, as Ansible's `hosts`
        yml.parse(tree, text)
    else:
        ini.parse(tree, text)
    _vars_dirs(tree)
    return tree.build()


def _vars_dirs(tree: Tree) -> None:
    """group_vars/NAME[.yml|.yaml|.json] and host_vars/… beside the file, as Ansible reads them."""
    base = tree.path.parent
    for name, group in tree.groups.items():
        group.file_vars = _read(base / "group_vars", name)
    for name, host in tree.hosts.items():
        host.file_vars = _read(base / "host_vars", name)


def _read(folder: Path, name: str) -> dict[str, Var]:
    found: dict[str, Var] = {}
    if not folder.is_dir():
        return found
    for suffix in _VARS_SUFFIXES:
        f = folder / f"{name}{suffix}"
        if f.is_file():
            found.update(yml.read_vars(f))
    d = folder / name
    if d.is_dir():
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            if f.suffix in _VARS_SUFFIXES and not f.name.startswith("."):
                found.update(yml.read_vars(f))
    return found
