"""From systems to Hosts: run SSH/agent operations on machines (`reops exec --systems SEL`).

Reads the store only — no queue, no hypervisor connection — so it is cheap and safe to
call from any command while a hub runs the machines.
"""

from __future__ import annotations

from pathlib import Path

from reops.core.model import Hosts
from reops.store.engines import machines_store
from reops.systems.machines import reachable_hosts
from reops.systems.select import select


def hosts(selector: str = "running", root: Path | None = None) -> Hosts:
    """Hosts for the systems matching `selector`, e.g. hosts('typed:redis & running')."""
    store = machines_store(root)
    try:
        return reachable_hosts(select(store.systems(), selector))
    finally:
        store.close()
