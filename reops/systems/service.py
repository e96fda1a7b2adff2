"""Machines inside the controller (`reops hub`): the queue and hypervisors live there.

The hub calls `attach(controller)` (a `[hub] services` entry): it registers the
`machines.*` control methods and runs `setup` in the background, which runs the job queue
in the hub's loop, opens the configured hypervisors, and publishes job events on topic
`jobs` and domain/network/pool events on `hypervisor.NAME`. A VM started through the hub
keeps running, and its events keep flowing, after the CLI command that asked has exited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from reops.core.selector import SelectorError
from reops.store.model import Job, JobEvent, MachinesError
from reops.systems.libvirt.hypervisor import Hypervisor
from reops.systems.machines import Machines
from reops.systems.physical.ssh import open_machines

log = logging.getLogger("reops.systems")


class Session(Protocol):
    """What a control handler gets (reops.hub.control.Session)."""

    @property
    def params(self) -> dict[str, Any]: ...
    def emit(self, value: Any) -> None: ...


class Controller(Protocol):
    """What this service needs from the hub's Controller."""

    def register(self, name: str, handler: Callable[[Any], Awaitable[Any]]) -> None: ...
    def publish(self, topic: str, data: dict[str, Any]) -> None: ...


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


class MachinesService:
    """The control methods of Machines; every input error goes back as one line.

    Methods can be registered before Machines is ready (the hub attaches services
    synchronously); each call waits for `bind` (or reports why setup failed).
    """

    def __init__(self, machines: Machines | None = None) -> None:
        self._ready: asyncio.Future[Machines] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        if machines is not None:
            self.bind(machines)

    def bind(self, machines: Machines) -> None:
        if not self._ready.done():
            self._ready.set_result(machines)

    def fail(self, error: BaseException) -> None:
        if not self._ready.done():
            self._ready.set_exception(MachinesError(f"machines are not available: {error}"))
            self._ready.exception()  # retrieved: each call gets it from `m`

    @property
    def m(self) -> Machines:
        if not self._ready.done():
            raise MachinesError("machines are starting; try again")
        return self._ready.result()

    async def ready(self) -> Machines:
        return await asyncio.shield(self._ready)

    def methods(self) -> dict[str, Callable[[Session], Awaitable[Any]]]:
        return {
            "machines.types": self.types, "machines.types.add": self.add_type,
            "machines.types.rm": self.remove_type, "machines.systems": self.systems,
            "machines.create": self.create, "machines.submit": self.submit,
            "machines.sync": self.sync, "machines.register": self.register,
            "machines.jobs": self.jobs, "machines.job": self.job, "machines.wait": self.wait,
        }

    async def types(self, s: Session) -> Any:
        return _plain(self.m.types())

    async def add_type(self, s: Session) -> Any:
        p = s.params
        return _plain(self.m.add_type(p["name"], p.get("description", ""),
                                      p.get("provision"), p.get("args") or {}))

    async def remove_type(self, s: Session) -> None:
        self.m.remove_type(s.params["name"])

    async def systems(self, s: Session) -> Any:
        return _plain(self.m.systems(s.params.get("selector") or "all"))

    async def create(self, s: Session) -> Any:
        p = s.params
        jobs = await self.m.create(p["type"], p.get("presets") or (), count=p.get("count"),
                                   hypervisor=p.get("hypervisor"), hostname=p.get("hostname"))
        return _plain(jobs)

    async def submit(self, s: Session) -> Any:
        p = s.params
        return _plain(self.m.submit(p["op"], p["selector"], **(p.get("args") or {})))

    async def sync(self, s: Session) -> Any:
        return _plain(await self.m.sync(s.params.get("hypervisor")))

    async def register(self, s: Session) -> Any:
        p = s.params
        return _plain(self.m.register_physical(
            p["hostname"], p["mac"], ip=p.get("ip"), type_name=p.get("type") or "physical",
            hypervisor=p.get("hypervisor"), user=p.get("user") or "root"))

    async def jobs(self, s: Session) -> Any:
        return _plain(self.m.jobs(limit=s.params.get("limit"),
                                  controller=s.params.get("controller")))

    async def job(self, s: Session) -> Any:
        return _plain(self.m.job(s.params["id"]))

    async def wait(self, s: Session) -> Any:
        """Stream the events of these jobs (and their retries) until all have finished."""
        ids = set(s.params["ids"])

        def relay(ev: JobEvent) -> None:
            if ids & {ev.job.id, ev.job.retry_of, ev.job.follows}:
                ids.add(ev.job.id)
                s.emit(_plain(ev))

        sub = self.m.job_events.subscribe(relay)
        try:
            todo = [self.m.job(i) for i in list(ids)]
            return _plain(await self.m.wait(todo))
        finally:
            sub.dispose()


def _guard(service: MachinesService,
           fn: Callable[[Session], Awaitable[Any]]) -> Callable[[Session], Awaitable[Any]]:
    """Wait for Machines; its input errors become the control socket's one-line errors."""
    async def handler(s: Session) -> Any:
        try:
            await service.ready()
            return await fn(s)
        except (MachinesError, SelectorError) as e:
            raise ValueError(str(e)) from None
    return handler


async def setup(controller: Controller, machines: Machines | None = None,
                service: MachinesService | None = None) -> Machines:
    """Host Machines in `controller`; the caller closes it (`await m.aclose()`) at shutdown."""
    m = machines or Machines.open()
    for j in await m.run_queue():
        log.warning("job %s %s: %s", j.short_id, j.op, j.error)

    def publish_events(hyp: Hypervisor) -> None:
        topic = f"hypervisor.{hyp.name}"
        hyp.events.subscribe(lambda ev: controller.publish(topic, _plain(ev)))

    m.on_connect(publish_events)
    m.job_events.subscribe(lambda ev: controller.publish("jobs", _plain(ev)))
    for name, cfg in m.config.hypervisors.items():
        if cfg.kind == "libvirt":
            try:
                await m.hypervisor(name)
            except MachinesError as e:  # reachable later: connections open on first use
                log.warning("%s", e)
    if service is None:
        service = MachinesService(m)
        _register(controller, service)
    else:
        service.bind(m)
    return m


def _register(controller: Controller, service: MachinesService) -> None:
    for name, fn in service.methods().items():
        controller.register(name, _guard(service, fn))


def attach(controller: Controller) -> asyncio.Task[None]:
    """The hub's service hook: `[hub] services = ["reops.systems.service:attach"]`.

    Registers the `machines.*` methods now and sets Machines up in the background; they
    close when the hub's loop ends (the task is cancelled then).
    """
    service = MachinesService()
    _register(controller, service)

    async def run() -> None:
        m: Machines | None = None
        try:
            m = open_machines()
            await setup(controller, m, service)
            log.info("machines: queue running, %d hypervisor(s) configured",
                     len(m.config.hypervisors))
            await asyncio.Event().wait()  # until the hub stops
        except Exception as e:
            log.error("machines could not start: %s", e)
            service.fail(e)
        finally:
            if m is not None:
                await m.aclose()

    task = asyncio.get_running_loop().create_task(run(), name="reops-machines")
    service.task = task  # referenced by the registered handlers: lives as long as the hub
    return task


def job_of(value: Any) -> Job:
    return msgspec.convert(value, Job)
