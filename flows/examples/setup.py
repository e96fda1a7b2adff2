"""When a VM of these types starts: wait for SSH, install the agent, provision it.

    reops flows start flows/examples/setup.py --types 'typed:redis'   # inside `reops hub`
    reops run flows/examples/setup.py --dry-run --events started.jsonl  # what would run
"""

from __future__ import annotations

from pathlib import Path

from reops import deploy_agent, on, once_within, provision, publish, then, vm_started, wait_ssh
from reops import inventory as load_inventory
from reops.flows import flow
from reops.streams.stream import Stream


@flow
def setup(types: str = "typed:redis", window: str = "5m", ssh_timeout: float = 300.0,
          stand_ins: str = "", inventory: Path | None = None, endpoint: str = "",
          wheels: Path | None = None, hub: Path | None = None) -> Stream:
    """When a VM of these types starts: wait for SSH, install the agent, provision it.

    Args:
        types: which systems (typed:redis, hyp:lab & web*, ... as in `reops systems ls`)
        window: a VM that starts again within this is set up once
        ssh_timeout: seconds a VM may take to answer SSH before it is reported unreachable
        stand_ins: inventory entries that stand in for the VMs by name (their user, key,
            address), a selector; empty: the address each VM's job recorded
        inventory: the inventory for stand_ins [default: $REOPS_INVENTORY]
        endpoint: where the agents connect (tcp://10.0.0.1:7720) [default: the hub's bind]
        wheels: a directory of wheels to install the agent from, offline [default: the
            agent's dependencies from each host's own package index]
        hub: the hub's control socket [default: the configured one]
    """
    hosts = load_inventory(inventory).select(stand_ins) if stand_ins else None
    return (on(vm_started(types, hub=hub), hosts=hosts) | once_within(window, key="host")
            | then(wait_ssh, timeout=ssh_timeout)
            | then(deploy_agent, endpoint=endpoint or None, wheels=wheels, hub=hub)
            | then(provision, hub=hub) | publish())
