"""Value types of the machines layer: System, Type, Job and the events they emit.

msgspec Structs so they go to SQLite (JSON), over the control socket (msgpack) and into
polars without custom encoders. Frozen: a change is a new value written to the store.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import msgspec

JobState = Literal["queued", "running", "succeeded", "failed", "interrupted"]
JobOp = Literal[
    "create", "start", "stop", "reload", "destroy", "clear", "snapshot", "revert", "sync",
    "provision",
]
SystemState = Literal["creating", "running", "stopped", "paused", "unknown", "missing",
                      "booting", "unreachable"]
ProviderKind = Literal["libvirt", "physical"]
JobEventKind = Literal["queued", "started", "succeeded", "failed", "interrupted"]

#: characters of an id shown to users; any unique prefix (>= 4 chars) also matches
SHORT = 7
MIN_PREFIX = 4


def new_id() -> str:
    """A random 40-hex id, shown git-style by its first SHORT characters."""
    return os.urandom(20).hex()


def short(id_: str) -> str:
    return id_[:SHORT]


class Volume(msgspec.Struct, frozen=True, kw_only=True):
    """One disk: a qcow2 overlay on `base` (a volume in the pool), or blank when no base."""

    name: str
    size_gb: int
    base: str | None = None


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    """The guest as a host: how to reach and size it."""

    hostname: str
    domain: str = ""
    user: str = "root"
    os: str = ""
    cpu: int = 1
    ram: int = 512  # MiB
    ip: str | None = None
    mac: str | None = None
    adapters: tuple[str, ...] = ()  # libvirt networks (VMs) or NIC names (physical)
    #: guests from an image (reops.systems.images): where SSH answers and how to log in;
    #: `ip` is set only once SSH's banner was seen (running = reachable)
    port: int = 22
    image: str = ""
    key: str | None = None  # the controller's private key injected at creation
    known_hosts: str | None = None  # reops' known_hosts holding the host key made at creation

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{self.domain}" if self.domain else self.hostname


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """Where a system lives: a configured hypervisor by name and its objects there."""

    hypervisor: str
    kind: ProviderKind = "libvirt"
    domain: str = ""  # libvirt domain name
    uuid: str = ""
    pool: str = ""
    volumes: tuple[Volume, ...] = ()
    broadcast: str = ""  # physical: where the Wake-on-LAN packet goes ("addr:port")
    #: pool files of this system besides volumes (a guest's initrd seed, console log)
    files: tuple[str, ...] = ()


class System(msgspec.Struct, frozen=True, kw_only=True):
    """A machine reops manages: a VM on a hypervisor or a physical box."""

    id: str
    type: str
    machine: Machine
    placement: Placement
    description: str = ""
    state: SystemState = "creating"
    created_at: float = msgspec.field(default_factory=time.time)
    updated_at: float = msgspec.field(default_factory=time.time)

    @property
    def short_id(self) -> str:
        return short(self.id)

    @property
    def hostname(self) -> str:
        return self.machine.hostname


class Type(msgspec.Struct, frozen=True, kw_only=True):
    """A provisioning recipe: what a system of this type is for and the flow that makes it so."""

    name: str
    description: str = ""
    provision: str | None = None  # a flow path or name, run after create
    args: dict[str, Any] = msgspec.field(default_factory=dict)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One queued operation on one system (or on a hypervisor, for sync)."""

    id: str
    op: JobOp
    system_id: str | None = None
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    state: JobState = "queued"
    error: str = ""
    result: dict[str, Any] = msgspec.field(default_factory=dict)
    #: why it ended when not succeeded: "timeout" (its deadline), "crash", "shutdown"
    reason: str = ""
    attempt: int = 1
    retry_of: str | None = None
    retried_by: str | None = None
    #: the job queued when this one succeeded (provisioning after create), and back
    followed_by: str | None = None
    follows: str | None = None
    pid: int | None = None  # the process that ran (or last ran) it
    controller: str | None = None  # the controller that ran it (`[hub] name`)
    created_at: float = msgspec.field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def short_id(self) -> str:
        return short(self.id)

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed") or (
            self.state == "interrupted" and self.retried_by is None
        )

    @property
    def next_id(self) -> str | None:
        """The job that carries on this one's work: its retry, or the job it queued."""
        return self.retried_by or (self.followed_by if self.state == "succeeded" else None)


class JobEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A job changed state: queued, started, succeeded, failed or interrupted."""

    event: JobEventKind
    job: Job
    time: float = msgspec.field(default_factory=time.time)


class MachinesError(Exception):
    """Bad input or an unreachable hypervisor: one line for the user, nothing half-done."""
