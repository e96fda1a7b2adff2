"""The one typed event every trigger emits: what happened, about what, when, to which host.

    TriggerEvent(source="libvirt", kind="started", key="redis1", time=…, host=Host(…),
                 payload=Domain(hypervisor="lab", domain="redis1", …))

`key` is what the event is about (a domain, agent or host name, a path, a schedule): the
default key of the event operators (`once_within`, `debounce`, …). `host` is the machine
the next step runs on when the event concerns one (None for clock ticks, local files, or a
VM whose address is not known yet). `payload` is small and typed, one Struct per source,
so an event crosses the bus (msgpack) and the store (JSON) without custom encoders.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from reops.core.model import Host, Transport

Source = Literal["libvirt", "agent", "job", "clock", "cron", "file", "metric", "bus"]
SOURCES: tuple[str, ...] = ("libvirt", "agent", "job", "clock", "cron", "file", "metric", "bus")


class Payload(msgspec.Struct, frozen=True, kw_only=True, tag_field="of"):
    """Base of the per-source payloads; `of` names the kind on the wire."""


class Tick(Payload, frozen=True, kw_only=True, tag="tick"):
    """A clock or cron firing: the n-th (from 0) and the time it was due (epoch seconds)."""

    n: int
    due: float


class FileChange(Payload, frozen=True, kw_only=True, tag="file"):
    """One path that changed, as watchfiles reported it."""

    change: Literal["added", "modified", "deleted"]
    path: str


class Domain(Payload, frozen=True, kw_only=True, tag="domain"):
    """A libvirt domain lifecycle event, and the recorded system it belongs to (if any)."""

    hypervisor: str
    domain: str
    uuid: str
    event: str  # libvirt's name: STARTED, STOPPED, …
    detail: str  # BOOTED, DESTROYED, CRASHED, …
    system_id: str = ""
    type: str = ""  # the system's type (as in `typed:redis`)


class AgentChange(Payload, frozen=True, kw_only=True, tag="agent"):
    """An agent registry event from the hub (registered, lost, back, …)."""

    agent: str
    address: str = ""
    reason: str = ""


class JobChange(Payload, frozen=True, kw_only=True, tag="job"):
    """A machines job changed state in the hub's queue."""

    job_id: str
    op: str
    state: str  # the job event: queued, started, succeeded, failed, interrupted
    system_id: str = ""
    error: str = ""


class Crossing(Payload, frozen=True, kw_only=True, tag="metric"):
    """A metric crossed its threshold (or came back): the sample's value, since when."""

    condition: str
    value: float | None  # the sample's value (None for a condition given as a function)
    since: float  # when the condition began to hold (crossed) or stopped holding


class BusMessage(Payload, frozen=True, kw_only=True, tag="bus"):
    """A message from the bus (another flow's Result or event): its topic and body."""

    topic: str
    body: Any = None


AnyPayload = Tick | FileChange | Domain | AgentChange | JobChange | Crossing | BusMessage


class TriggerEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What happened (`source`, `kind`), about what (`key`), when, and on which host."""

    source: Source
    kind: str
    key: str
    time: float
    host: Host | None = None
    payload: AnyPayload | None = None

    @property
    def topic(self) -> str:
        """Its bus topic and the op name of its Result: `event.<source>.<kind>`."""
        return f"event.{self.source}.{self.kind}"

    @property
    def transport(self) -> Transport:
        """Where the event came from, as a Result's transport."""
        return "libvirt" if self.source == "libvirt" else (
            "agent" if self.source == "agent" else "local")
