"""Job triggers: a machines job (create, start, stop, provision, …) changed state.

    on(job_failed(ops=["provision"])) | then(exec_, "journalctl -n 50")
    on(job_succeeded(ops=["create"])) | then(exec_, "cloud-init status --wait")

From the hub's durable queue (topic `jobs`). The key is the job's system's hostname (the
job id for jobs on no system, e.g. sync) and the Host that system's recorded address at
the time of the event: a `create` that succeeded has found it. Needs a running hub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from reops.control.client import HubClient
from reops.streams.triggers import _hub
from reops.streams.triggers._trigger import Emit, Trigger, pumped
from reops.streams.triggers.event import JobChange, TriggerEvent

KINDS = ("queued", "started", "succeeded", "failed", "interrupted")


def job_events(kinds: Iterable[str] = _hub.JOB_ENDED, *, ops: Iterable[str] | None = None,
               hub: Path | None = None,
               on_ready: Callable[[], None] | None = None) -> Trigger:
    """Job state changes of these `kinds` (default: ended ones) for jobs of these `ops`
    (default: all); `on_ready` once the hub streams them to this subscription."""
    wanted = tuple(kinds)
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"job_events(kinds=…): {unknown} are not job events; choose from "
                         f"{', '.join(KINDS)}")
    only = None if ops is None else frozenset(ops)

    async def pump(emit: Emit) -> None:
        client = HubClient(hub)
        try:
            async for _, data in _hub.events(client, ["jobs"], on_ready):
                ev = msgspec.convert(data, _hub.JobNews)
                if ev.event in wanted and (only is None or ev.job.op in only):
                    emit(await _resolve(client, ev))
        finally:
            await client.close()

    label = "/".join(wanted) + ("" if only is None else f", ops={sorted(only)}")
    return Trigger(pumped(pump), f"job_events({label!r})", hosted=True)


async def _resolve(client: HubClient, ev: _hub.JobNews) -> TriggerEvent:
    """The event, with the job's system as its key and Host when it has one."""
    job = ev.job
    rec = await _hub.system(client, job.system_id) if job.system_id else None
    return TriggerEvent(source="job", kind=ev.event,
                        key=rec.machine.hostname if rec else job.id, time=ev.time,
                        host=rec.host if rec else None,
                        payload=JobChange(job_id=job.id, op=job.op, state=ev.event,
                                          system_id=job.system_id or "", error=job.error))


def job_failed(ops: Iterable[str] | None = None, *, hub: Path | None = None,
               on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a job fails (or is interrupted by a hub crash: it may have run)."""
    return job_events(("failed", "interrupted"), ops=ops, hub=hub, on_ready=on_ready)


def job_succeeded(ops: Iterable[str] | None = None, *, hub: Path | None = None,
                  on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a job succeeds."""
    return job_events(("succeeded",), ops=ops, hub=hub, on_ready=on_ready)
