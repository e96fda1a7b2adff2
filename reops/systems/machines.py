"""The Machines service: systems, types, the job queue and hypervisor connections together.

An object with async methods that runs in any asyncio loop: in the CLI's own process for
now, in the controller (`reops hub`) via `reops.systems.service`. Methods that change
machines validate everything first (type, presets, hypervisor reachable, pool and base
volumes), then record systems and jobs in one transaction and return the jobs: bad input
leaves nothing behind, and the work itself runs in the durable queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import reactivex as rx

from reops.control.settings import load_hub_settings
from reops.core.model import Host, Hosts
from reops.store.base import JobStore
from reops.store.engines import load_store_settings, machines_store
from reops.store.model import (
    Job,
    JobEvent,
    JobOp,
    Machine,
    MachinesError,
    Placement,
    System,
    Type,
    Volume,
    new_id,
    short,
)
from reops.store.queue import Cluster, JobQueue
from reops.systems.config import MachinesConfig, load_machines_config
from reops.systems.handlers import Handlers, ProvisionSeam, ReachableSeam, ShutdownSeam
from reops.systems.libvirt.events import HypervisorEvent
from reops.systems.libvirt.hypervisor import Hypervisor
from reops.systems.lxc import is_lxc
from reops.systems.presets import Spec, resolve
from reops.systems.select import select as select_systems

#: operations on existing systems that need a confirmation on a TTY unless --force
DESTRUCTIVE: frozenset[str] = frozenset({"destroy", "reload", "clear", "revert", "stop"})


class Machines:
    """Systems and Types in the store, jobs in the queue, one connection per hypervisor."""

    def __init__(self, store: JobStore, config: MachinesConfig,
                 shutdown: ShutdownSeam | None = None,
                 provision: ProvisionSeam | None = None,
                 reachable: ReachableSeam | None = None,
                 cluster: Cluster | None = None) -> None:
        self.store = store
        self.config = config
        self.settings = config.settings
        self._hypervisors: dict[str, Hypervisor] = {}
        self._subscriptions: list[Any] = []
        self._on_connect: list[Callable[[Hypervisor], None]] = []
        self._connecting: dict[str, asyncio.Lock] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._handlers = Handlers(self, shutdown, provision, reachable)
        self.queue = JobQueue(store, self._handlers.table(), self.settings.limit,
                              deadline=self.settings.deadline,
                              retry_within=self.settings.retry_interrupted_within,
                              cluster=cluster)

    @classmethod
    def open(cls, root: Path | None = None, config: MachinesConfig | None = None,
             shutdown: ShutdownSeam | None = None,
             provision: ProvisionSeam | None = None,
             reachable: ReachableSeam | None = None) -> Machines:
        """Machines over `<root>/machines.db` when `root` is given, else the store `[store]
        url` names (SQLite in $REOPS_HOME or ~/.reops by default; PostgreSQL: the job queue
        is shared with the other controllers, this one named by `[hub] name`)."""
        store = machines_store(root)
        s = load_store_settings()
        cluster = Cluster(controller=load_hub_settings().controller_name, lease_s=s.lease,
                          poll_s=s.poll, batch=s.claim_batch)
        return cls(store, config or load_machines_config(), shutdown, provision, reachable,
                   cluster)

    async def __aenter__(self) -> Machines:
        await self.run_queue()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run_queue(self, *, own_only: bool = False) -> list[Job]:
        """Run the job queue here; returns jobs a crash had interrupted (retried only when
        idempotent and recent, see queue.IDEMPOTENT). `own_only` (a shared store): run
        only the jobs submitted here, as a passing CLI command does (see JobQueue.start)."""
        return await self.queue.start(own_only=own_only)

    async def aclose(self) -> None:
        """Stop the queue, close hypervisor connections and the store."""
        await self.queue.close()
        for sub in self._subscriptions:
            sub.dispose()
        hyps, self._hypervisors = list(self._hypervisors.values()), {}
        for h in hyps:
            await h.close()
        closers, self._closers = self._closers, []
        for close in closers:
            await close()
        self.store.close()

    def on_close(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run `close()` in `aclose` (e.g. the SSH executor behind the physical seams)."""
        self._closers.append(close)

    # ---- streams
    @property
    def job_events(self) -> rx.Observable[JobEvent]:
        """queued / started / succeeded / failed / interrupted, for every job of this queue."""
        return self.queue.events

    async def hypervisor(self, name: str | None = None) -> Hypervisor:
        """The open connection to a configured hypervisor (opened on first use)."""
        cfg = self.config.hypervisor(name)
        if cfg.kind != "libvirt":
            raise MachinesError(f"hypervisor {cfg.name!r} is {cfg.kind}, not libvirt")
        async with self._connecting.setdefault(cfg.name, asyncio.Lock()):  # one connection
            if cfg.name not in self._hypervisors:
                hyp = await Hypervisor.connect(cfg.name, cfg.uri, self.settings.connect_timeout)
                self._hypervisors[cfg.name] = hyp
                self._subscriptions.append(hyp.events.subscribe(self._on_event))
                for fn in self._on_connect:
                    fn(hyp)
        return self._hypervisors[cfg.name]

    @contextlib.asynccontextmanager
    async def _answers(self, name: str, doing: str) -> AsyncIterator[None]:
        """Bound the libvirt calls a request makes before queuing anything: a hung libvirtd
        fails the request in one line (no job to give a deadline to yet)."""
        limit = self.settings.connect_timeout
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                yield
        except TimeoutError:
            if not deadline.expired():
                raise
            raise MachinesError(
                f"hypervisor {name!r} did not answer within {limit:g}s while {doing}"
                " (is libvirtd hung?); nothing was recorded: check it, then try again"
            ) from None

    def on_connect(self, fn: Callable[[Hypervisor], None]) -> None:
        """Call `fn(hypervisor)` for every connection opened from now on (and open ones)."""
        self._on_connect.append(fn)
        for hyp in self._hypervisors.values():
            fn(hyp)

    async def hypervisor_events(self, name: str | None = None) -> rx.Observable[HypervisorEvent]:
        """Lifecycle events (domain, network, pool) of a hypervisor as they happen."""
        return (await self.hypervisor(name)).events

    def _on_event(self, ev: HypervisorEvent) -> None:
        """Keep recorded states current from the hypervisor's own events."""
        states = {"STARTED": "running", "RESUMED": "running", "STOPPED": "stopped",
                  "SUSPENDED": "paused", "PMSUSPENDED": "paused", "CRASHED": "stopped"}
        if ev.kind != "domain" or ev.event not in states:
            return
        s = self.store.system_by_domain(ev.hypervisor, ev.name)
        if s is None or s.state == "creating" or (s.state == "missing" and
                                                   states[ev.event] == "stopped"):
            return  # a late event must not undo what create or sync just recorded
        state = states[ev.event]
        if state == "stopped" and s.state == "unreachable":
            return  # powered off because it never answered: keep saying so
        if state == "running" and s.state != "running" and self._answers_on_ssh(s):
            state = "booting"  # running = up AND reachable: set by the boot once SSH answers
        machine = s.machine if state == "running" else msgspec.structs.replace(
            s.machine, ip=None)
        self.store.put_system(msgspec.structs.replace(
            s, state=state, machine=machine, updated_at=time.time()))

    def _answers_on_ssh(self, s: System) -> bool:
        """Whether `s` is running only once its SSH server answers: a guest of an image
        (handlers._boot_guest) or a container (lxc/jobs.py boot), whose boot records the
        address. Other domains (no address machinery) run as soon as libvirt starts them."""
        if s.machine.image:
            return True
        conf = self.config.hypervisors.get(s.placement.hypervisor)
        return conf is not None and s.placement.kind == "libvirt" and is_lxc(conf.uri)

    # ---- types
    def add_type(self, name: str, description: str = "", provision: str | None = None,
                 args: dict[str, Any] | None = None) -> Type:
        """Record a Type (a provisioning recipe); replaces one of the same name."""
        if not name or any(c in name for c in " ,&!():*?[]="):
            raise MachinesError(f"bad type name {name!r}: no spaces or , & ! ( ) : * ? [ ] =")
        t = Type(name=name, description=description, provision=provision, args=args or {})
        self.store.put_type(t)
        return t

    def types(self) -> list[Type]:
        return self.store.types()

    def remove_type(self, name: str) -> None:
        self.store.remove_type(name)

    # ---- systems
    def systems(self, selector: str = "all") -> list[System]:
        """Recorded systems matching `selector` (see reops.systems.select)."""
        return select_systems(self.store.systems(), selector)

    select = systems

    def running(self) -> list[System]:
        return self.systems("running")

    def hosts(self, selector: str = "running") -> Hosts:
        """The selected systems that have an address, as Hosts for SSH and agent operations."""
        return reachable_hosts(self.systems(selector))

    def system(self, id_or_prefix: str) -> System:
        return self.store.system_by_prefix(id_or_prefix)

    async def create(self, type_name: str, presets: Sequence[str] = (), *,
                     count: int | None = None, hypervisor: str | None = None,
                     hostname: str | None = None) -> list[Job]:
        """Queue `count` new systems of a type, sized by presets; nothing recorded on bad input."""
        t = self.store.get_type(type_name)
        spec = resolve(presets, self.config.presets, count=count, hypervisor=hypervisor)
        cfg = self.config.hypervisor(spec.hypervisor)
        hyp = await self.hypervisor(cfg.name)
        if spec.image:  # the root disk is an overlay on the image's base volume
            from reops.systems import images

            where = f"pool {cfg.pool!r} of hypervisor {cfg.name!r}"
            async with self._answers(cfg.name, "looking up the image"):
                img = await hyp.with_pool(
                    cfg.pool, lambda p: images.image(p, spec.image, where))
            spec = msgspec.structs.replace(spec, base=img.volume, disk_gb=max(spec.disk_gb, 1),
                                           user=img.user, os=spec.os or img.name)
        volumes_of = _volumes(spec)
        systems: list[System] = []
        async with self._answers(cfg.name, "checking the pool and machine names"):
            if spec.disk_gb or spec.volumes:
                await hyp.check_pool(cfg.pool,
                                     sorted({v.base for v in volumes_of("x") if v.base}))
            taken = {s.placement.domain for s in self.store.systems()}
            for i in range(spec.count):
                sid = new_id()
                name = hostname or f"{t.name}-{short(sid)}"
                if hostname and spec.count > 1:
                    name = f"{hostname}-{i + 1}"
                if name in taken or await hyp.state(name) != "missing":
                    raise MachinesError(
                        f"a machine named {name!r} already exists on {cfg.name}")
                systems.append(System(
                    id=sid, type=t.name, description=t.description,
                    machine=Machine(hostname=name, domain=spec.domain, user=spec.user,
                                    os=spec.os, cpu=spec.cpu, ram=spec.ram, image=spec.image,
                                    adapters=(cfg.network,) if cfg.network else ()),
                    placement=Placement(hypervisor=cfg.name, domain=name, pool=cfg.pool,
                                        volumes=volumes_of(name)),
                ))
        jobs = [Job(id=new_id(), op="create", system_id=s.id) for s in systems]
        return self.queue.submit_jobs(jobs, systems)

    def register_physical(self, hostname: str, mac: str, *, ip: str | None = None,
                          type_name: str = "physical", hypervisor: str | None = None,
                          user: str = "root") -> System:
        """Record a physical machine (started by Wake-on-LAN, stopped over SSH)."""
        cfg = self.config.hypervisor(hypervisor)
        if cfg.kind != "physical":
            raise MachinesError(f"hypervisor {cfg.name!r} is not kind = \"physical\"")
        if type_name != "physical":
            self.store.get_type(type_name)
        s = System(id=new_id(), type=type_name, state="unknown",
                   machine=Machine(hostname=hostname, mac=mac, ip=ip, user=user),
                   placement=Placement(hypervisor=cfg.name, kind="physical",
                                       broadcast=cfg.broadcast))
        self.store.put_system(s)
        return s

    def submit(self, op: JobOp, selector: str, **args: Any) -> list[Job]:
        """Queue `op` for every system matching `selector`; an error when none match."""
        chosen = self.systems(selector)
        if not chosen:
            raise MachinesError(f"no system matches {selector!r}")
        jobs = [Job(id=new_id(), op=op, system_id=s.id, args=args) for s in chosen]
        return self.queue.submit_jobs(jobs)

    async def start(self, selector: str) -> list[Job]:
        return self.submit("start", selector)

    async def stop(self, selector: str) -> list[Job]:
        return self.submit("stop", selector)

    async def reload(self, selector: str) -> list[Job]:
        return self.submit("reload", selector)

    async def destroy(self, selector: str) -> list[Job]:
        return self.submit("destroy", selector)

    async def clear(self, selector: str) -> list[Job]:
        return self.submit("clear", selector)

    async def snapshot(self, selector: str, name: str) -> list[Job]:
        return self.submit("snapshot", selector, name=name)

    async def revert(self, selector: str, name: str) -> list[Job]:
        return self.submit("revert", selector, name=name)

    async def provision(self, selector: str) -> list[Job]:
        """Run each selected system's Type provisioning flow again."""
        return self.submit("provision", selector)

    async def sync(self, hypervisor: str | None = None) -> Job:
        """Queue an import of the domains that exist on a hypervisor."""
        cfg = self.config.hypervisor(hypervisor)
        if cfg.kind == "libvirt":
            await self.hypervisor(cfg.name)  # unreachable: fail now, queue nothing
        return self.queue.submit("sync", None, hypervisor=cfg.name)

    # ---- jobs
    def jobs(self, limit: int | None = None, controller: str | None = None) -> list[Job]:
        """The newest `limit` jobs, oldest first; only those `controller` ran when given."""
        return self.store.jobs(limit=limit, controller=controller)

    def job(self, id_or_prefix: str) -> Job:
        return self.store.job(id_or_prefix)

    async def wait(self, jobs: Sequence[Job] | Job) -> list[Job]:
        """The jobs once finished, each followed to its retry or the job it queued (a
        create's provisioning)."""
        todo = [jobs] if isinstance(jobs, Job) else list(jobs)
        return [await self.queue.wait(j.id) for j in todo]


def _volumes(spec: Spec) -> Any:
    """name -> the volumes of a machine called name: the root overlay, then extra volumes."""
    def of(name: str) -> tuple[Volume, ...]:
        root = (Volume(name=f"{name}.qcow2", size_gb=spec.disk_gb, base=spec.base),)
        extra = tuple(Volume(name=f"{name}-{v.name}.qcow2", size_gb=v.size_gb, base=v.base)
                      for v in spec.volumes)
        return (root if spec.disk_gb else ()) + extra
    return of


def addressable(s: System) -> bool:
    """Whether `s` has an address to reach it at. A VM's name is never looked up in DNS:
    without the address it was found at (lease, port forward) it has none; a physical
    machine registered without an ip is reached by its (fully qualified) name."""
    return bool(s.machine.ip) or s.placement.kind == "physical"


def reachable_hosts(systems: Sequence[System]) -> Hosts:
    """The systems that have an address, as Hosts to connect to (see `addressable`): a VM
    without one is left out rather than looked up in DNS by its name."""
    return to_hosts([s for s in systems if addressable(s)])


def to_hosts(systems: Sequence[System]) -> Hosts:
    """Systems as Hosts (address: ip, else the fqdn; port, key and known_hosts of a guest of
    an image), tagged with type, hypervisor and id. To connect, use `reachable_hosts`."""
    return Hosts(
        Host(name=s.hostname, address=s.machine.ip or s.machine.fqdn, port=s.machine.port,
             user=s.machine.user, key=s.machine.key, known_hosts=s.machine.known_hosts,
             groups=(s.type,) if s.type else (),
             tags={"type": s.type, "hypervisor": s.placement.hypervisor, "id": s.short_id,
                   "os": s.machine.os})
        for s in systems
    )
