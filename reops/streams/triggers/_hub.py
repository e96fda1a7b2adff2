"""The hub side of the hub-fed triggers (libvirt, jobs): its event topics, and its record
of systems, read over the control socket.

The hub owns hypervisor connections and the job queue (DESIGN §1), so these triggers
subscribe to what it publishes (`hypervisor.NAME`, `jobs`) and ask it for systems
(`machines.systems`). This layer may not import the machines layer: the few fields read
here are declared as they travel (msgpack of `reops.store.model.System`), and unknown
fields are ignored, so the record can grow without breaking them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from reops.control.client import HubClient, HubError
from reops.control.wire import Event as WireEvent
from reops.core.model import Host


class SystemMachine(msgspec.Struct, frozen=True, kw_only=True):
    hostname: str
    domain: str = ""
    user: str = "root"
    os: str = ""
    ip: str | None = None


class SystemPlacement(msgspec.Struct, frozen=True, kw_only=True):
    hypervisor: str
    domain: str = ""


class SystemRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A system as the hub records it (the fields triggers need)."""

    id: str
    type: str = ""
    machine: SystemMachine
    placement: SystemPlacement
    state: str = ""

    @property
    def host(self) -> Host | None:
        """The Host to run steps on: its recorded IP, as `reops systems ls` shows it;
        None while it has none (a VM that has not got an address yet)."""
        m = self.machine
        if not m.ip:
            return None
        return Host(name=m.hostname, address=m.ip, user=m.user,
                    groups=(self.type,) if self.type else (),
                    tags={"type": self.type, "hypervisor": self.placement.hypervisor,
                          "id": self.id[:7], "os": m.os})


async def systems(client: HubClient, selector: str) -> list[SystemRecord]:
    """The hub's systems matching `selector` (HubError with its message when it is bad)."""
    value = await client.request("machines.systems", selector=selector)
    return msgspec.convert(value, list[SystemRecord])


async def events(client: HubClient, topics: list[str],
                 on_ready: Callable[[], None] | None) -> AsyncIterator[tuple[str, Any]]:
    """(topic, data) of what the hub publishes on `topics`; `on_ready` once subscribed."""
    async for item in client.pieces("subscribe", topics=topics):
        if not isinstance(item, WireEvent):
            continue
        if item.topic == "subscribed":
            if on_ready is not None:
                on_ready()
            continue
        yield item.topic, item.data


async def system(client: HubClient, system_id: str) -> SystemRecord | None:
    """The hub's record of one system by id (None when it has none: destroyed)."""
    try:
        found = await systems(client, f"id:{system_id}")
    except HubError:  # an id the hub cannot select by
        return None
    return found[0] if found else None


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the hub publishes and lists it (`reops.store.model.Job`)."""

    id: str
    op: str
    system_id: str | None = None
    state: str = ""
    error: str = ""


class JobNews(msgspec.Struct, frozen=True, kw_only=True):
    """A job event as the hub publishes it on `jobs` (`reops.store.model.JobEvent`)."""

    event: str
    job: JobRecord
    time: float


#: job events after which a job does nothing more
JOB_ENDED = ("succeeded", "failed", "interrupted")
#: how many of the newest jobs are searched for one still working on a system
RECENT_JOBS = 200


async def job_running(client: HubClient, system_id: str) -> bool:
    """Whether a queued or running job (among the newest) works on this system."""
    jobs = msgspec.convert(await client.request("machines.jobs", limit=RECENT_JOBS),
                           list[JobRecord])
    return any(j.system_id == system_id and j.state in ("queued", "running") for j in jobs)
