"""What each job does: create, start, stop, reload, destroy, clear, snapshot, revert, sync.

Handlers re-read the system from the store before changing it (events may have updated it
meanwhile), are idempotent where the queue retries them (queue.IDEMPOTENT), and undo their
own partial work when creating fails, so a failed create leaves no domain, volume or record
behind. Create only makes and boots the machine; its Type's recipe runs in a `provision`
job queued with create's success, so a crash while provisioning never re-creates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from reops.core.model import Result
from reops.store.model import Job, Machine, MachinesError, Placement, System, Type, new_id
from reops.store.queue import Done, Handler
from reops.systems.libvirt.domain_xml import DomainSpec, mac_for
from reops.systems.libvirt.hypervisor import Hypervisor
from reops.systems.lxc import is_lxc
from reops.systems.lxc.jobs import ContainerJobs
from reops.systems.physical import wol

if TYPE_CHECKING:
    from reops.systems.machines import Machines

#: how a physical machine is stopped: run `shutdown` on it over SSH (the SSH source's job)
ShutdownSeam = Callable[[System], Awaitable[Result]]
#: whether a physical machine answers over SSH (its status)
ReachableSeam = Callable[[System], Awaitable[bool]]
#: how a Type's provisioning flow runs on a new system (the flows layer's job)
ProvisionSeam = Callable[[System, Type], Awaitable[Result]]


class Handlers:
    """The job handlers of one Machines service."""

    def __init__(self, machines: Machines, shutdown: ShutdownSeam | None,
                 provision: ProvisionSeam | None = None,
                 reachable: ReachableSeam | None = None) -> None:
        self.m = machines
        self.shutdown = shutdown
        self.provisioner = provision
        self.reachable = reachable
        self.containers = ContainerJobs(self)

    def table(self) -> dict[str, Handler]:
        return {
            "create": self.create, "start": self.start, "stop": self.stop,
            "reload": self.reload, "destroy": self.destroy, "clear": self.clear,
            "snapshot": self.snapshot, "revert": self.revert, "sync": self.sync,
            "provision": self.provision,
        }

    # ---- helpers
    def _system(self, job: Job) -> System:
        s = self.m.store.system(job.system_id or "")
        if s is None:
            raise MachinesError(f"system {(job.system_id or '?')[:7]} no longer exists")
        return s

    def _save(self, s: System, **changes: Any) -> System:
        machine = changes.pop("machine", {})
        placement = changes.pop("placement", {})
        s = msgspec.structs.replace(
            s, machine=msgspec.structs.replace(s.machine, **machine),
            placement=msgspec.structs.replace(s.placement, **placement),
            updated_at=time.time(), **changes,
        )
        self.m.store.put_system(s)
        return s

    def _container(self, s: System) -> bool:
        """Whether `s` is a container: its hypervisor is libvirt's LXC driver (lxc/jobs.py)."""
        return s.placement.kind == "libvirt" and is_lxc(
            self.m.config.hypervisor(s.placement.hypervisor).uri)

    async def _hyp(self, s: System) -> Hypervisor:
        return await self.m.hypervisor(s.placement.hypervisor)

    async def _boot(self, s: System, hyp: Hypervisor) -> dict[str, Any]:
        """Start and find the address; the system is running even if no address shows up
        (a guest of an image: only once its SSH server answers, see `_boot_guest`)."""
        if s.machine.image:
            return await self._boot_guest(s, hyp)
        await hyp.start(s.placement.domain)
        s = self._save(self._fresh(s), state="running")
        if not s.machine.adapters:
            return {"state": "running"}
        ip = await hyp.ip(s.placement.domain, self.m.settings.ip_timeout)
        self._save(self._fresh(s), state="running", machine={"ip": ip})
        return {"state": "running", "ip": ip}

    async def _boot_guest(self, s: System, hyp: Hypervisor) -> dict[str, Any]:
        """Boot, find where SSH answers (the port forward, else the lease on port 22), pin
        the host key made at creation, and wait (bounded) for SSH's banner: running means
        reachable. A guest that never answers fails the job in one line and is powered off,
        state unreachable (its console log stays in the pool)."""
        from reops.systems import images

        p = s.placement
        await hyp.start(p.domain)
        s = self._save(self._fresh(s), state="booting", machine={"ip": None})
        limit = self.m.settings.ip_timeout
        forwarded = s.machine.port != 22
        address = "127.0.0.1" if forwarded else await hyp.ip(p.domain, limit)
        public = await hyp.with_pool(p.pool, lambda pool: pool.read(f"{p.domain}.hostkey.pub"))
        if public:
            images.record_host_key(address, s.machine.port, public.decode().strip())
        if not await images.wait_ssh(address, s.machine.port, limit):
            self._save(self._fresh(s), state="unreachable")
            await hyp.destroy(p.domain)  # powered off: a guest spinning under TCG costs a CPU
            log = await hyp.with_pool(p.pool, lambda pool: pool.path(f"{p.domain}.console.log"))
            raise MachinesError(
                f"{s.hostname}: booted, but SSH on {address}:{s.machine.port} did not answer "
                f"within {limit:g}s ([machines] ip_timeout); console: "
                f"{images.console_tail(log) or 'nothing'}{f' ({log})' if log else ''}")
        self._save(self._fresh(s), state="running", machine={"ip": address})
        return {"state": "running", "ip": address, "port": s.machine.port}

    async def _prepare_guest(self, s: System, hyp: Hypervisor,
                             spec: DomainSpec) -> tuple[System, DomainSpec]:
        """A guest of an image: its SSH port, host key and seed; the controller's key."""
        from reops.systems import images

        p = s.placement
        where = f"pool {p.pool!r} of hypervisor {p.hypervisor!r}"
        img = await hyp.with_pool(p.pool, lambda pool: images.image(pool, s.machine.image, where))
        key, public = images.guest_key()
        boot = await hyp.with_pool(p.pool, lambda pool: images.prepare_guest(
            pool, img, p.domain, s.hostname, public))
        await hyp.with_pool(p.pool, lambda pool: pool.put(
            f"{p.domain}.hostkey.pub", boot.host_public.encode()))
        taken = [x.machine.port for x in self.m.store.systems() if x.id != s.id]
        port = images.free_port(taken)
        s = self._save(s, machine={"port": port, "key": key,
                                   "known_hosts": str(images.known_hosts_path())},
                       placement={"files": (*boot.files, f"{p.domain}.hostkey.pub")})
        spec = msgspec.structs.replace(
            spec, kernel=boot.kernel, initrd=boot.initrd, cmdline=boot.cmdline,
            cdrom=boot.cdrom, console_log=boot.console_log, ssh_port=port)
        return s, spec

    def _forget(self, s: System) -> None:
        """Drop a destroyed guest's host key pin (its port may serve another guest later)."""
        if s.machine.image and s.machine.known_hosts:
            from reops.systems import images

            images.forget_host_key("127.0.0.1" if s.machine.port != 22 else (
                s.machine.ip or ""), s.machine.port, Path(s.machine.known_hosts))

    def _fresh(self, s: System) -> System:
        return self.m.store.system(s.id) or s

    # ---- operations
    async def create(self, job: Job) -> Done:
        """Volumes + domain + boot, then provisioning queued; on failure remove what was made
        and the record."""
        s = self._system(job)
        hyp = await self._hyp(s)
        if self._container(s):
            return await self.containers.create(s, hyp)
        p = s.placement
        cfg = self.m.config.hypervisor(p.hypervisor)
        spec = DomainSpec(
            name=p.domain, system_id=s.id, cpu=s.machine.cpu, ram=s.machine.ram,
            network=cfg.network or None, mac=mac_for(s.id), type=hyp.domain_type(),
        )
        vols = [(v.name, v.size_gb, v.base) for v in p.volumes]
        try:
            if s.machine.image:
                s, spec = await self._prepare_guest(s, hyp, spec)
            info = await hyp.create(spec, p.pool, vols)
        except Exception:
            await hyp.remove(p.domain, p.pool, [v.name for v in p.volumes] +
                             list(self._fresh(s).placement.files))
            self._forget(self._fresh(s))
            self.m.store.remove_system(s.id)
            raise
        ports = {"port": info.ssh_port or 22} if s.machine.image else {}
        s = self._save(s, state="stopped", placement={"uuid": info.uuid},
                       machine={"mac": info.mac, "adapters": info.networks, **ports})
        result = {"domain": p.domain, "uuid": info.uuid, **await self._boot(s, hyp)}
        t = next((x for x in self.m.store.types() if x.name == s.type), None)
        if t is None or not t.provision:
            return Done(result=result)
        result["provision"] = f"{t.provision} (queued)"
        return Done(result=result, then=(Job(id=new_id(), op="provision", system_id=s.id),))

    async def _provision(self, s: System, t: Type) -> dict[str, Any]:
        """Run the Type's flow on the system when a provisioner is wired; else say so."""
        if self.provisioner is None:
            return {"provision": f"{t.provision} (not run: no provisioner wired)"}
        r = await self.provisioner(s, t)
        if not r.ok:
            raise MachinesError(f"{s.hostname}: provisioning with {t.provision} failed: "
                                f"{(r.err or r.out).strip()[:200]}")
        return {"provision": t.provision, "provisioned": True, "out": r.out[-2000:]}

    async def provision(self, job: Job) -> dict[str, Any]:
        s = self._system(job)
        t = self.m.store.get_type(s.type)
        if not t.provision:
            raise MachinesError(f"type {t.name!r} has no provisioning flow")
        return await self._provision(s, t)

    async def start(self, job: Job) -> dict[str, Any]:
        s = self._system(job)
        if s.placement.kind == "physical":
            if not s.machine.mac:
                raise MachinesError(f"{s.hostname} has no MAC address for Wake-on-LAN")
            await wol.wake(s.machine.mac, s.placement.broadcast)
            return {"woken": s.machine.mac, "to": s.placement.broadcast}
        if self._container(s):
            return await self.containers.boot(s, await self._hyp(s))
        return await self._boot(s, await self._hyp(s))

    async def stop(self, job: Job) -> dict[str, Any]:
        s = self._system(job)
        if s.placement.kind == "physical":
            if self.shutdown is None:
                raise MachinesError(
                    f"stopping {s.hostname} needs SSH: no shutdown seam wired "
                    "(Machines(shutdown=...) from reops.transports.ssh.executor)")
            r = await self.shutdown(s)
            # a host going down may cut the connection before `shutdown` reports its exit
            # status: "lost" here means the command was sent, which is what stop asked for
            if not r.ok and r.status != "lost":
                raise MachinesError(f"{s.hostname}: shutdown failed: {r.err or r.out}")
            self._save(s, state="stopped", machine={"ip": s.machine.ip})
            return {"shutdown": "sent" if r.ok else "sent (connection closed as it went down)"}
        if self._container(s):
            return await self.containers.stop(s, await self._hyp(s))
        how = await (await self._hyp(s)).stop(s.placement.domain, self.m.settings.stop_timeout)
        self._save(self._fresh(s), state="stopped", machine={"ip": None})
        return {"stop": how}

    async def destroy(self, job: Job) -> dict[str, Any]:
        if self.m.store.system(job.system_id or "") is None:
            return {"destroyed": "already gone"}  # e.g. a retry, or destroyed twice
        s = self._system(job)
        if s.placement.kind == "physical":
            raise MachinesError(f"{s.hostname} is physical: use `clear` to forget it")
        if self._container(s):
            return await self.containers.destroy(s, await self._hyp(s))
        p = s.placement
        await (await self._hyp(s)).remove(p.domain, p.pool,
                                          [v.name for v in p.volumes] + list(p.files))
        self._forget(s)
        self.m.store.remove_system(s.id)
        return {"destroyed": p.domain}

    async def reload(self, job: Job) -> Done:
        """Stop, delete, re-create from the same record (same id, name and size)."""
        s = self._system(job)
        if self._container(s):
            return await self.containers.reload(job, s, await self._hyp(s))
        p = s.placement
        hyp = await self._hyp(s)
        await hyp.remove(p.domain, p.pool, [v.name for v in p.volumes] + list(p.files))
        self._forget(s)
        self._save(s, state="creating", machine={"ip": None})
        return await self.create(job)

    async def clear(self, job: Job) -> dict[str, Any]:
        """Forget the record only; the machine itself is left alone."""
        if self.m.store.system(job.system_id or "") is None:
            return {"cleared": "already gone"}
        s = self._system(job)
        self.m.store.remove_system(s.id)
        return {"cleared": s.hostname}

    async def snapshot(self, job: Job) -> dict[str, Any]:
        s = self._system(job)
        await (await self._hyp(s)).snapshot(s.placement.domain, job.args["name"])
        return {"snapshot": job.args["name"]}

    async def revert(self, job: Job) -> dict[str, Any]:
        s = self._system(job)
        hyp = await self._hyp(s)
        await hyp.revert(s.placement.domain, job.args["name"])
        state = await hyp.state(s.placement.domain)
        self._save(self._fresh(s), state=state)
        return {"reverted": job.args["name"], "state": state}

    async def sync(self, job: Job) -> dict[str, Any]:
        """Import domains we do not know, refresh those we do, mark vanished ones missing."""
        name = job.args["hypervisor"]
        if self.m.config.hypervisor(name).kind == "physical":
            return await self._sync_physical(name)
        hyp = await self.m.hypervisor(name)
        lxc = is_lxc(self.m.config.hypervisor(name).uri)  # no leases: where its sshd listens
        store = self.m.store
        imported, updated = [], 0
        seen: set[str] = set()
        for d in await hyp.domains():
            known = (store.system(d.system_id) if d.system_id else None) or \
                store.system_by_domain(name, d.name)
            ip = (self.containers.address(name, d.name) if lxc else await hyp.ip_now(d.name)
                  ) if d.state == "running" else None
            if known is not None:
                seen.add(known.id)
                state = d.state
                if known.machine.image and d.ssh_port and d.state == "running":
                    from reops.systems import images  # a guest: running once SSH answers

                    up = await images.wait_ssh("127.0.0.1", d.ssh_port, 10.0)
                    ip, state = ("127.0.0.1", "running") if up else (None, "unreachable")
                self._save(known, state=state, placement={"uuid": d.uuid, "domain": d.name},
                           machine={"ip": ip})
                updated += 1
                continue
            s = System(
                id=d.system_id or _id_for(d.uuid), type="", state=d.state,  # type: ignore[arg-type]
                description="imported by sync",
                machine=Machine(hostname=d.name, cpu=d.cpu, ram=d.ram, mac=d.mac, ip=ip,
                                adapters=d.networks),
                placement=Placement(hypervisor=name, domain=d.name, uuid=d.uuid),
            )
            store.put_system(s)
            seen.add(s.id)
            imported.append(d.name)
        missing = [s.hostname for s in store.systems()
                   if s.placement.hypervisor == name and s.placement.kind == "libvirt"
                   and s.id not in seen and s.state != "creating"]
        for s in store.systems():
            if s.hostname in missing and s.placement.hypervisor == name:
                self._save(s, state="missing", machine={"ip": None})
        return {"imported": imported, "updated": updated, "missing": missing}


    async def _sync_physical_one(self, s: System) -> str:
        assert self.reachable is not None
        state = "running" if await self.reachable(s) else "stopped"
        self._save(self._fresh(s), state=state)
        return state

    async def _sync_physical(self, name: str) -> dict[str, Any]:
        """Physical machines' state is whether they answer over SSH."""
        if self.reachable is None:
            raise MachinesError(f"syncing {name!r} needs SSH: no reachability seam wired "
                                "(Machines(reachable=...), see reops.systems.physical.ssh)")
        chosen = [s for s in self.m.store.systems() if s.placement.hypervisor == name]
        states = await asyncio.gather(*(self._sync_physical_one(s) for s in chosen))
        return {"running": [s.hostname for s, st in zip(chosen, states, strict=True)
                            if st == "running"],
                "stopped": [s.hostname for s, st in zip(chosen, states, strict=True)
                            if st == "stopped"]}


def _id_for(uuid: str) -> str:
    """A stable id for a foreign domain: its uuid's hex, padded to 40 characters."""
    raw = uuid.replace("-", "").lower()
    return (raw + "0" * 40)[:40]
