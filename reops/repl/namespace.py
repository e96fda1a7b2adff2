"""What a REPL session starts with: the reops API, `inv`, `flows`, `pl`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import reops
from reops.core.inventory import default_path, inventory
from reops.repl.hubflows import Flows


def systems(selector: str = "all") -> Any:
    """The recorded systems (VMs, machines) matching `selector`, from the hub when it runs:
    a list that shows as a table."""
    from reops.systems.live import systems as recorded

    return recorded(selector)


def namespace(inventory_path: Path | None) -> dict[str, Any]:
    """Every public reops name, `reops`, `pl` (polars), `flows` (the hub's flows),
    `systems(selector)` (the store's machines) and `inv`:
    the inventory given, else the one every command would use ($REOPS_INVENTORY,
    ./inventory.toml …) if it exists."""
    import polars as pl

    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    broken: dict[str, str] = {}
    for name in reops.__all__:
        try:
            ns[name] = getattr(reops, name)
        except Exception as e:  # one broken part must not cost the whole session
            broken.setdefault(f"{type(e).__name__}: {e}", name)
    for why, name in broken.items():
        sys.stderr.write(f"reops: warning: {name} (and what shares its module) is not "
                         f"loaded: {why}\n")
    ns.update(reops=reops, pl=pl, flows=Flows(), systems=systems)
    if inventory_path is None and (os.environ.get("REOPS_INVENTORY") or default_path().exists()):
        inventory_path = default_path()
    if inventory_path is not None:
        ns["inv"] = inventory(inventory_path)
    return ns
