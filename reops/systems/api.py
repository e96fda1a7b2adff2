"""One async interface to Machines for the CLI and REPL: in this process, or in `reops hub`.

`connect()` picks the hub when one answers on the control socket (jobs and hypervisor
connections then live there and outlast the command); otherwise Machines runs here, with
the job queue in this process until the command ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from reops.control.client import HubClient, HubError, HubNotRunning
from reops.control.wire import Event, Item
from reops.store.model import Job, JobEvent, JobOp, MachinesError, System, Type
from reops.systems.libvirt.events import HypervisorEvent
from reops.systems.machines import Machines
from reops.systems.physical.ssh import open_machines

T = TypeVar("T")

#: seconds `wait` gives already-sent job events to arrive after the hub's final answer
FOLLOW_GRACE = 5.0
OnJob = Callable[[JobEvent], None]
OnEvent = Callable[[HypervisorEvent], None]


class MachinesAPI(Protocol):
    """What the CLI does with machines, wherever they are run."""

    where: str  # "in-process" or "hub"

    async def systems(self, selector: str = "all") -> list[System]: ...
    async def types(self) -> list[Type]: ...
    async def add_type(self, name: str, description: str, provision: str | None,
                       args: dict[str, Any]) -> Type: ...
    async def remove_type(self, name: str) -> None: ...
    async def create(self, type_name: str, presets: Sequence[str], count: int | None,
                     hypervisor: str | None, hostname: str | None) -> list[Job]: ...
    async def submit(self, op: JobOp, selector: str, **args: Any) -> list[Job]: ...
    async def sync(self, hypervisor: str | None) -> Job: ...
    async def register(self, hostname: str, mac: str, ip: str | None, type_name: str,
                       hypervisor: str | None, user: str = "root") -> System: ...
    async def jobs(self, limit: int | None, controller: str | None = None) -> list[Job]: ...
    async def job(self, id_or_prefix: str) -> Job: ...
    async def wait(self, jobs: Sequence[Job], on_job: OnJob | None = None) -> list[Job]: ...
    async def follow(self) -> None: ...
    async def watch(self, names: Sequence[str], on_event: OnEvent,
                    on_ready: Callable[[], None] | None = None) -> None: ...
    async def aclose(self) -> None: ...


class LocalMachines:
    """Machines in this process; the queue runs here (recovering a crashed run first)."""

    where = "in-process"

    def __init__(self, machines: Machines) -> None:
        self.m = machines
        self.recovered: list[Job] = []

    async def start(self) -> None:
        # on a shared store a command runs only the jobs it queues: it must not pick up,
        # and on exit interrupt, the controllers' work (SQLite: the one queue, as before)
        self.recovered = await self.m.run_queue(own_only=True)

    async def systems(self, selector: str = "all") -> list[System]:
        return self.m.systems(selector)

    async def types(self) -> list[Type]:
        return self.m.types()

    async def add_type(self, name: str, description: str, provision: str | None,
                       args: dict[str, Any]) -> Type:
        return self.m.add_type(name, description, provision, args)

    async def remove_type(self, name: str) -> None:
        self.m.remove_type(name)

    async def create(self, type_name: str, presets: Sequence[str], count: int | None,
                     hypervisor: str | None, hostname: str | None) -> list[Job]:
        return await self.m.create(type_name, presets, count=count, hypervisor=hypervisor,
                                   hostname=hostname)

    async def submit(self, op: JobOp, selector: str, **args: Any) -> list[Job]:
        return self.m.submit(op, selector, **args)

    async def sync(self, hypervisor: str | None) -> Job:
        return await self.m.sync(hypervisor)

    async def register(self, hostname: str, mac: str, ip: str | None, type_name: str,
                       hypervisor: str | None, user: str = "root") -> System:
        return self.m.register_physical(hostname, mac, ip=ip, type_name=type_name,
                                        hypervisor=hypervisor, user=user)

    async def jobs(self, limit: int | None, controller: str | None = None) -> list[Job]:
        return self.m.jobs(limit, controller)

    async def job(self, id_or_prefix: str) -> Job:
        return self.m.job(id_or_prefix)

    async def wait(self, jobs: Sequence[Job], on_job: OnJob | None = None) -> list[Job]:
        ids = {j.id for j in jobs}

        def relay(ev: JobEvent) -> None:
            if on_job is not None and ids & {ev.job.id, ev.job.retry_of, ev.job.follows}:
                ids.add(ev.job.id)
                on_job(ev)

        sub = self.m.job_events.subscribe(relay)
        try:
            return await self.m.wait(jobs)
        finally:
            sub.dispose()

    async def follow(self) -> None:
        """Nothing to do: jobs cannot start here before `wait` listens."""

    async def watch(self, names: Sequence[str], on_event: OnEvent,
                    on_ready: Callable[[], None] | None = None) -> None:
        """Call `on_event` for every event until cancelled; `on_ready` once listening."""
        for name in names or _libvirt_names(self.m):
            (await self.m.hypervisor_events(name)).subscribe(on_event)
        if on_ready is not None:
            on_ready()
        await asyncio.Event().wait()  # until cancelled (Ctrl-C)

    async def aclose(self) -> None:
        await self.m.aclose()

    close = aclose  # the runtime closes resources through `close`


def _libvirt_names(m: Machines) -> list[str]:
    return [n for n, c in m.config.hypervisors.items() if c.kind == "libvirt"]


class HubMachines:
    """Machines in `reops hub`, over its control socket."""

    where = "hub"

    def __init__(self, client: HubClient) -> None:
        self.client = client
        self._seen: list[JobEvent] | None = None  # job events since `follow`
        self._listeners: list[OnJob] = []
        self._following: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        """Record job events from now on, so `wait` shows jobs that start before it runs."""
        if self._following is not None:
            return
        subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seen = []

        async def run() -> None:
            async for item in self.client.pieces("subscribe", topics=["jobs"]):
                match item:
                    case Event(topic="subscribed"):
                        subscribed.set_result(None)
                    case Event(data=data):
                        ev = msgspec.convert(data, JobEvent)
                        assert self._seen is not None
                        self._seen.append(ev)
                        for fn in list(self._listeners):
                            fn(ev)

        self._following = asyncio.ensure_future(run())
        await asyncio.wait([subscribed, self._following], return_when=asyncio.FIRST_COMPLETED)
        if self._following.done():
            self._following.result()  # raises why the subscription ended

    async def _call(self, cls: type[T], method: str, **params: Any) -> T:
        try:
            value = await self.client.request(method, **params)
        except HubError as e:
            raise MachinesError(str(e)) from None
        return msgspec.convert(value, cls)

    async def systems(self, selector: str = "all") -> list[System]:
        return await self._call(list[System], "machines.systems", selector=selector)

    async def types(self) -> list[Type]:
        return await self._call(list[Type], "machines.types")

    async def add_type(self, name: str, description: str, provision: str | None,
                       args: dict[str, Any]) -> Type:
        return await self._call(Type, "machines.types.add", name=name,
                                description=description, provision=provision, args=args)

    async def remove_type(self, name: str) -> None:
        await self._call(type(None), "machines.types.rm", name=name)

    async def create(self, type_name: str, presets: Sequence[str], count: int | None,
                     hypervisor: str | None, hostname: str | None) -> list[Job]:
        return await self._call(list[Job], "machines.create", type=type_name,
                                presets=list(presets), count=count, hypervisor=hypervisor,
                                hostname=hostname)

    async def submit(self, op: JobOp, selector: str, **args: Any) -> list[Job]:
        return await self._call(list[Job], "machines.submit", op=op, selector=selector,
                                args=args)

    async def sync(self, hypervisor: str | None) -> Job:
        return await self._call(Job, "machines.sync", hypervisor=hypervisor)

    async def register(self, hostname: str, mac: str, ip: str | None, type_name: str,
                       hypervisor: str | None, user: str = "root") -> System:
        return await self._call(System, "machines.register", hostname=hostname, mac=mac,
                                ip=ip, type=type_name, hypervisor=hypervisor, user=user)

    async def jobs(self, limit: int | None, controller: str | None = None) -> list[Job]:
        return await self._call(list[Job], "machines.jobs", limit=limit, controller=controller)

    async def job(self, id_or_prefix: str) -> Job:
        return await self._call(Job, "machines.job", id=id_or_prefix)

    async def wait(self, jobs: Sequence[Job], on_job: OnJob | None = None) -> list[Job]:
        ids = {j.id for j in jobs}
        ended: set[str] = set()
        news = asyncio.Event()

        def mine(ev: JobEvent) -> None:
            if ids & {ev.job.id, ev.job.retry_of, ev.job.follows}:
                ids.add(ev.job.id)
                if ev.event not in ("queued", "started"):
                    ended.add(ev.job.id)
                    news.set()
                if on_job is not None:
                    on_job(ev)

        following = self._seen is not None
        if following:
            for ev in list(self._seen or ()):  # what happened before this wait
                mine(ev)
            self._listeners.append(mine)
        try:
            # a job that had finished before this wait has no end event to come: answer it
            # from its record, and give the grace below only to jobs that end while we wait
            before = [await self._followed(j.id) for j in jobs]
            if all(f.done for f in before):
                return before
            done_before = {f.id for f in before if f.done}
            async for reply in self.client.replies("machines.wait", ids=[j.id for j in jobs]):
                if isinstance(reply, Item) and not following:
                    mine(msgspec.convert(reply.value, JobEvent))
            final = [await self._followed(j.id) for j in jobs]
            # the hub sent each job's last event before its answer; let it reach `mine`
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FOLLOW_GRACE if following else 0):
                    while not {f.id for f in final} - done_before <= ended:
                        news.clear()
                        await news.wait()
            return final
        except HubError as e:
            raise MachinesError(str(e)) from None
        finally:
            if mine in self._listeners:
                self._listeners.remove(mine)

    async def _followed(self, job_id: str) -> Job:
        """The job, or the last of its retries and the jobs it queued (provisioning)."""
        job = await self.job(job_id)
        while job.next_id:
            job = await self.job(job.next_id)
        return job

    async def watch(self, names: Sequence[str], on_event: OnEvent,
                    on_ready: Callable[[], None] | None = None) -> None:
        """Call `on_event` for every event until cancelled; `on_ready` once subscribed."""
        topics = [f"hypervisor.{n}" for n in names] or ["hypervisor."]
        async for item in self.client.pieces("subscribe", topics=topics):
            match item:
                case Event(topic="subscribed"):
                    if on_ready is not None:
                        on_ready()
                case Event(topic=topic, data=data) if topic.startswith("hypervisor."):
                    on_event(msgspec.convert(data, HypervisorEvent))

    async def aclose(self) -> None:
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        await self.client.close()

    close = aclose  # the runtime closes resources through `close`


async def connect(root: Path | None = None, *, hub: bool | None = None,
                  queue: bool = True) -> MachinesAPI:
    """The hub's Machines when a hub answers (or `hub=True`), else Machines in this process
    (running the job queue here unless `queue=False`, e.g. to only watch events)."""
    if hub is not False:
        client = HubClient()
        try:
            await client.connect()
            return HubMachines(client)
        except HubNotRunning:
            await client.close()
            if hub:
                raise
    local = LocalMachines(open_machines(root))
    if not queue:
        return local
    try:
        await local.start()
    except BaseException:
        await local.aclose()
        raise
    return local
