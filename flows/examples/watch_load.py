"""CPU busy over a threshold for a while → an alert on the bus (event.metric.crossed).

    reops flows start flows/examples/watch_load.py --selector all --condition 'cpu.busy > 90'
    reops tail 'event.metric.*'
"""

from __future__ import annotations

from pathlib import Path

from reops import collect, publish, threshold
from reops import inventory as load_inventory
from reops.flows import flow
from reops.streams.stream import Stream


@flow
def watch_load(selector: str = "all", condition: str = "cpu.busy > 90", lasting: str = "2m",
               every: float = 5.0, inventory: Path | None = None) -> Stream:
    """Sample CPU over SSH; publish `crossed` when a host meets `condition` for `for_`,
    and `recovered` when it stops.

    Args:
        selector: which hosts (all, web*, group:db, ...)
        condition: a metric and a bound (cpu.busy > 90, load.load1 >= 4, memory.used > 95)
        lasting: how long the condition must hold before the alert (0s: at once)
        every: seconds between samples
        inventory: the inventory [default: $REOPS_INVENTORY]
    """
    hosts = load_inventory(inventory).select(selector)
    return threshold(collect(hosts, ["cpu", "load", "memory"], every=every), condition,
                     for_=lasting) | publish()
