"""Machines as Streams: create, start, stop… give one Result per system, so they chain.

    from reops import run, then, exec_, pretty
    from reops.systems.streams import create, machines
    run(create("redis", ["small", "debian-12"], count=2) | then(exec_, "uptime") | pretty())
    run(machines("stop", "typed:redis"))

Jobs go through the durable queue (the hub's when one runs); each system's Result flows
when its own job ends (status ok when the job succeeded, `err` the job's error), and the
next step sees the machine's address as discovered by the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from reops.core.model import Host, Hosts, Line, Result, Status, failure_result
from reops.core.runtime import get_runtime
from reops.store.model import Job, JobOp, System
from reops.streams.stream import Stream, fanout
from reops.systems.api import MachinesAPI, connect
from reops.systems.machines import to_hosts


def _api() -> MachinesAPI:
    """One Machines connection per runtime (closed when the runtime shuts down)."""
    rt = get_runtime()
    api: MachinesAPI = rt.resource("machines", lambda: rt.call(connect()))
    return api


class _FreshHosts(Hosts):
    """Hosts whose entries are replaced as jobs learn addresses (for `then`)."""

    __slots__ = ()

    def update(self, host: Host) -> None:
        self._by_name[host.name] = host


def job_result(host: str, job: Job, started: float) -> Result:
    """A job's outcome as the Result of its system's step."""
    out = " ".join(f"{k}={v}" for k, v in job.result.items())
    if job.state == "succeeded":
        return Result(host=host, op=job.op, status="ok", code=0, out=out,
                      started_at=started, duration_s=time.time() - started,
                      transport="libvirt", data=job.result)
    # interrupted: it may have run (never re-run blindly); timeout: its deadline ended it
    status: Status = "lost" if job.state == "interrupted" else (
        "timeout" if job.reason == "timeout" else "failed")
    return failure_result(host, job.op, job.error or job.state, status=status, code=1,
                          started_at=started, duration_s=time.time() - started,
                          transport="libvirt")


def _stream(api: MachinesAPI, pairs: Sequence[tuple[Job, System]]) -> Stream:
    hosts = _FreshHosts(to_hosts([s for _, s in pairs]))
    job_of = {s.hostname: j for j, s in pairs}

    async def run_one(host: Host, on_line: Callable[[Line], None] | None) -> Result:
        started = time.time()
        (done,) = await api.wait([job_of[host.name]])
        fresh = await api.systems(f"id:{done.system_id}") if done.system_id else []
        if fresh:
            hosts.update(to_hosts(fresh)[host.name])
        return job_result(host.name, done, started)

    return Stream(fanout(hosts, run_one), hosts)


def _start(submit: Callable[[MachinesAPI], Any], api: MachinesAPI | None) -> Stream:
    api = api or _api()

    async def go() -> list[tuple[Job, System]]:
        await api.follow()
        jobs: list[Job] = await submit(api)
        by_id = {s.id: s for s in await api.systems()}
        return [(j, by_id[j.system_id]) for j in jobs if j.system_id in by_id]

    return _stream(api, get_runtime().call(go()))


def create(type_name: str, presets: Sequence[str] = (), *, count: int | None = None,
           hypervisor: str | None = None, hostname: str | None = None,
           api: MachinesAPI | None = None) -> Stream:
    """Queue new systems now (bad input raises here); the Stream gives each one's Result."""
    return _start(lambda a: a.create(type_name, presets, count, hypervisor, hostname), api)


def machines(op: JobOp, selector: str, *, api: MachinesAPI | None = None,
             **args: Any) -> Stream:
    """Queue `op` (start, stop, reload, destroy, snapshot name=…, …) for selected systems."""
    return _start(lambda a: a.submit(op, selector, **args), api)
