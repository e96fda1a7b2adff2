"""Machines: Systems and Types, presets, the embedded store, the durable job queue.

    from reops.systems import Machines
    async with Machines.open() as m:                      # runs the job queue here
        m.add_type("redis", "redis server")
        jobs = await m.create("redis", ["small", "debian-12"], count=2)
        await m.wait(jobs)
        (await m.hypervisor_events()).subscribe(print)   # domain lifecycle events
        m.hosts("typed:redis & running")                 # Hosts for SSH/agent ops

Names load lazily: `reops.systems.libvirt.hypervisor` imports leaf modules of this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Machines": "reops.systems.machines", "to_hosts": "reops.systems.machines",
    "System": "reops.store.model", "Type": "reops.store.model",
    "Job": "reops.store.model", "JobEvent": "reops.store.model",
    "MachinesError": "reops.store.model", "Spec": "reops.systems.presets",
    "resolve": "reops.systems.presets",
    "Store": "reops.store.sqlite", "JobQueue": "reops.store.queue",
    "HypervisorEvent": "reops.systems.libvirt.events", "hosts": "reops.systems.bridge",
    "connect": "reops.systems.api", "setup": "reops.systems.service",
    "hypervisor_events": "reops.systems.live", "systems": "reops.systems.live",
    "create": "reops.systems.streams",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reops.systems' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
