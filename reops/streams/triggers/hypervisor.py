"""Hypervisor triggers: libvirt domain events of the systems a selector picks.

    on(vm_started("typed:redis")) | then(exec_, "uptime")

`vm_started`, `vm_stopped`, `vm_defined`, `vm_undefined`, `vm_crashed`, `vm_suspended`,
`vm_resumed` (or `vm_events(selector, kinds)`) fire for each domain event of a system the
selector matches — the selectors of `reops systems ls` (`typed:redis`, `hyp:lab & web*`,
`running`), evaluated when the event arrives, against the hub's record. The event's key is
the system's hostname (the domain name for a domain the hub does not record: only
selector `all` fires for those) and its Host is the recorded address. libvirt reports a
start before the job that started the VM has found its IP: such a `started`/`resumed`
event waits for that job to end and carries the address it recorded. A VM that still has
no address (no job found one, or it is stopped) fires with Host None; `on` makes that an
`unreachable` Result, which `then` passes on without running anything. `vm_crashed` is
libvirt's CRASHED event or a STOPPED one with detail CRASHED.

The hub owns the hypervisor connections and publishes their events (`reops hub` with the
machines service), so these triggers need a running hub; without one the subscription
ends at once with "no reops hub is running … start one with `reops hub`".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from reops.control.client import HubClient, HubError
from reops.streams.triggers import _hub
from reops.streams.triggers._trigger import Emit, Trigger, pumped
from reops.streams.triggers.event import Domain, TriggerEvent

KINDS = ("started", "stopped", "defined", "undefined", "suspended", "resumed", "shutdown",
         "pmsuspended", "crashed")


class _LibvirtEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A hypervisor event as the hub publishes it (`HypervisorEvent`)."""

    hypervisor: str
    kind: str
    name: str
    uuid: str = ""
    event: str
    detail: str = ""
    time: float = 0.0


def kind_of(event: str, detail: str) -> str:
    """Our kind for libvirt's (event, detail): "crashed" for a crash, else the event."""
    if event == "CRASHED" or (event == "STOPPED" and detail == "CRASHED"):
        return "crashed"
    return event.lower()


def vm_events(selector: str = "all", kinds: Iterable[str] = KINDS, *,
              hypervisors: Iterable[str] = (), hub: Path | None = None,
              on_ready: Callable[[], None] | None = None) -> Trigger:
    """Domain events of the selected systems, of these `kinds`, from these hypervisors
    (default: all). A bad selector ends the subscription with the hub's selector error;
    `on_ready` is called once the hub streams events to this subscription."""
    wanted = tuple(kinds)
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"vm_events(kinds=…): {unknown} are not domain events; choose "
                         f"from {', '.join(KINDS)}")
    names = list(hypervisors)
    topics = [f"hypervisor.{n}" for n in names] or ["hypervisor."]

    async def pump(emit: Emit) -> None:
        client = HubClient(hub)
        try:
            await _hub.systems(client, selector)  # a bad selector fails here, in one line
            addresses = _AddressWait(client, emit)
            async for topic, data in _hub.events(client, [*topics, "jobs"], on_ready):
                if topic == "jobs":
                    await addresses.job(msgspec.convert(data, _hub.JobNews))
                    continue
                ev = msgspec.convert(data, _LibvirtEvent)
                kind = kind_of(ev.event, ev.detail)
                if ev.kind != "domain" or kind not in wanted:
                    continue
                found = await _resolve(client, selector, ev, kind)
                if found is not None:
                    await addresses.event(*found)
        finally:
            await client.close()

    label = selector if set(wanted) == set(KINDS) else f"{selector}, {'/'.join(wanted)}"
    return Trigger(pumped(pump), f"vm_events({label!r})", hosted=True)


class _AddressWait:
    """Holds a started VM's event until the job starting it has recorded its address.

    libvirt says STARTED before the start (or create) job has found the guest's IP, so a
    `started` or `resumed` event of a system with no address yet while a job works on it
    waits for that job's end, then takes the address the job recorded (or fires without
    one if it found none). At most one event waits per system; any later event of that
    system sends the waiting one first, so each system's events keep their order.
    """

    def __init__(self, client: HubClient, emit: Emit) -> None:
        self.client = client
        self.emit = emit
        self.waiting: dict[str, TriggerEvent] = {}  # system id → its held event

    async def event(self, event: TriggerEvent, rec: _hub.SystemRecord | None) -> None:
        if rec is not None and rec.id in self.waiting:
            self.emit(self.waiting.pop(rec.id))
        if (rec is None or event.host is not None
                or event.kind not in ("started", "resumed")):
            self.emit(event)
        elif await _hub.job_running(self.client, rec.id):
            self.waiting[rec.id] = event
        else:  # no job: what is recorded now (a job may have ended since the lookup)
            self.emit(await self._addressed(event, rec.id))

    async def job(self, news: _hub.JobNews) -> None:
        sid = news.job.system_id
        if sid and sid in self.waiting and news.event in _hub.JOB_ENDED:
            self.emit(await self._addressed(self.waiting.pop(sid), sid))

    async def _addressed(self, event: TriggerEvent, system_id: str) -> TriggerEvent:
        rec = await _hub.system(self.client, system_id)
        host = rec.host if rec is not None else None
        return event if host is None else msgspec.structs.replace(event, host=host)


async def _resolve(client: HubClient, selector: str, ev: _LibvirtEvent, kind: str
                   ) -> tuple[TriggerEvent, _hub.SystemRecord | None] | None:
    """The event for a selected system (its Host: the recorded address) and the system's
    record; None when the selector does not pick it."""
    try:
        records = await _hub.systems(client, selector)
    except HubError:  # valid at subscription, no longer (its one named system is gone)
        records = []
    rec = next((s for s in records if s.placement.hypervisor == ev.hypervisor
                and (s.placement.domain or s.machine.hostname) == ev.name), None)
    if rec is None and selector.strip() != "all":
        return None
    payload = Domain(hypervisor=ev.hypervisor, domain=ev.name, uuid=ev.uuid, event=ev.event,
                     detail=ev.detail, system_id=rec.id if rec else "",
                     type=rec.type if rec else "")
    event = TriggerEvent(source="libvirt", kind=kind,
                         key=rec.machine.hostname if rec else ev.name,
                         time=ev.time or time.time(), host=rec.host if rec else None,
                         payload=payload)
    return event, rec


def vm_started(selector: str = "all", *, hypervisors: Iterable[str] = (),
               hub: Path | None = None, on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a selected system's domain is started: `vm_events(selector, ["started"])`."""
    return vm_events(selector, ("started",), hypervisors=hypervisors, hub=hub,
                     on_ready=on_ready)


def vm_stopped(selector: str = "all", *, hypervisors: Iterable[str] = (),
               hub: Path | None = None, on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a selected system's domain is stopped: `vm_events(selector, ["stopped"])`."""
    return vm_events(selector, ("stopped",), hypervisors=hypervisors, hub=hub,
                     on_ready=on_ready)


def vm_defined(selector: str = "all", *, hypervisors: Iterable[str] = (),
               hub: Path | None = None, on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a selected system's domain is defined: `vm_events(selector, ["defined"])`."""
    return vm_events(selector, ("defined",), hypervisors=hypervisors, hub=hub,
                     on_ready=on_ready)


def vm_undefined(selector: str = "all", *, hypervisors: Iterable[str] = (),
                 hub: Path | None = None, on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a selected system's domain is undefined: `vm_events(selector, ["undefined"])`."""
    return vm_events(selector, ("undefined",), hypervisors=hypervisors, hub=hub,
                     on_ready=on_ready)


def vm_crashed(selector: str = "all", *, hypervisors: Iterable[str] = (),
               hub: Path | None = None, on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a selected system's domain is crashed: `vm_events(selector, ["crashed"])`."""
    return vm_events(selector, ("crashed",), hypervisors=hypervisors, hub=hub,
                     on_ready=on_ready)


def vm_suspended(selector: str = "all", *, hypervisors: Iterable[str] = (),
                 hub: Path | None = None, on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a selected system's domain is suspended: `vm_events(selector, ["suspended"])`."""
    return vm_events(selector, ("suspended",), hypervisors=hypervisors, hub=hub,
                     on_ready=on_ready)


def vm_resumed(selector: str = "all", *, hypervisors: Iterable[str] = (),
               hub: Path | None = None, on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a selected system's domain is resumed: `vm_events(selector, ["resumed"])`."""
    return vm_events(selector, ("resumed",), hypervisors=hypervisors, hub=hub,
                     on_ready=on_ready)
