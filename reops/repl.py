"""`reops repl`: a live Python session with the reops API loaded and the runtime running.

Pipelines run on the background loop, so the prompt stays usable while they work.
IPython is used when installed, else the standard interactive console.
"""

from __future__ import annotations

import code
import os
from pathlib import Path
from typing import Any

import click

import reops
from reops.core.inventory import default_path, inventory

BANNER = """reops {version} — live operations. Loaded: the whole reops API{inv}.
  hosts = inv.select("group:web")            # or inventory("path.toml")
  out = run(exec_(hosts, "uptime") | pretty())
  df = to_table(out)
"""


def namespace(inventory_path: Path | None) -> dict[str, Any]:
    """What the session starts with: every public reops name, plus `inv`: the inventory given,
    else the one every command would use ($REOPS_INVENTORY, ./inventory.toml …) if it exists."""
    ns: dict[str, Any] = {name: getattr(reops, name) for name in reops.__all__}
    ns["reops"] = reops
    if inventory_path is None and (os.environ.get("REOPS_INVENTORY") or default_path().exists()):
        inventory_path = default_path()
    if inventory_path is not None:
        ns["inv"] = inventory(inventory_path)
    return ns


@click.command("repl")
@click.option("-i", "--inventory", "inventory_path", type=click.Path(path_type=Path),
              default=None, help="Load this inventory as `inv` [default: $REOPS_INVENTORY, "
              "./inventory.toml, ./lab/inventory.toml].")
def repl(inventory_path: Path | None) -> None:
    """A live Python session: the reops API loaded, pipelines running in the background."""
    ns = namespace(inventory_path)
    inv = f"; inv = {ns['inv']!r}" if "inv" in ns else ""
    banner = BANNER.format(version=reops.__version__, inv=inv)
    try:
        from IPython import start_ipython
    except ImportError:
        code.interact(banner=banner, local=ns, exitmsg="")
        return
    print(banner)
    start_ipython(argv=[], user_ns=ns)
