"""A service check fails → restart it, once per host per window.

    reops flows start flows/examples/heal.py --selector 'group:web' --name webapp
"""

from __future__ import annotations

from pathlib import Path

from reops import Result, every, on, once_within, publish, service, then, where
from reops import inventory as load_inventory
from reops.flows import flow
from reops.ops.service import ServiceStatus
from reops.streams.stream import Stream


def down(r: Result) -> bool:
    """The status check says the service is not running (a failed check is no verdict:
    an unreachable host is not restarted, it is reported). In a dry run (`reops run
    --dry-run`) no check really runs, so each counts as down: you see what would restart."""
    if isinstance(r.data, dict) and "dry_run" in r.data:
        return True
    return isinstance(r.data, ServiceStatus) and not r.data.active


@flow
def heal(selector: str = "all", name: str = "webapp", check_every: str = "30s",
         window: str = "10m", sudo: bool = True, inventory: Path | None = None) -> Stream:
    """Check a service on every host; restart it where it is down, once per host per window.

    Args:
        selector: which hosts (all, web*, group:web, ...)
        name: the service to keep running
        check_every: how often to check (30s, 1m, ...)
        window: after a restart, a host's service is not restarted again within this
        sudo: restart with sudo
        inventory: the inventory [default: $REOPS_INVENTORY]
    """
    hosts = load_inventory(inventory).select(selector)
    return (on(every(check_every, immediately=True), hosts=hosts)
            | then(service.status, name) | where(down)
            | once_within(window, key="host")
            | then(service.restart, name, sudo=sudo) | publish())
