"""What create, start, stop, destroy and reload do to a container (called by
reops.systems.handlers for systems whose hypervisor is libvirt's LXC driver).

As for guests of an image: running means reachable (the sshd's banner was seen, bounded
by [machines] ip_timeout), the host key is pinned before the first boot, a create that
fails before booting leaves no domain, directory, pin or record behind, and one whose sshd
never answers stays, `unreachable`, for a look at its console log and `destroy`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from reops.store.model import Job, MachinesError, System, new_id
from reops.store.queue import Done
from reops.systems.libvirt.hypervisor import Hypervisor
from reops.systems.lxc import containers

if TYPE_CHECKING:
    from reops.systems.handlers import Handlers


class ContainerJobs:
    """The container side of one Handlers (its store, settings and save)."""

    def __init__(self, handlers: Handlers) -> None:
        self.h = handlers
        self._choosing = asyncio.Lock()

    async def create(self, s: System, hyp: Hypervisor) -> Done:
        """Root filesystem (keys pinned) + LXC domain + boot; then the Type's recipe."""
        from reops.systems.images import guest_key, record_host_key

        m, p = self.h.m, s.placement
        rootfs = containers.rootfs_of(p.hypervisor, p.domain)
        try:
            async with self._choosing:  # creates in parallel must not pick one address
                others = [x for x in m.store.systems() if x.id != s.id]
                taken = [x.machine.ip for x in others if x.machine.ip]
                taken += [containers.listen_of(r)[0] for r in (
                    containers.rootfs_of(x.placement.hypervisor, x.placement.domain)
                    for x in others) if (r / "etc/reops-listen").exists()]  # stopped ones too
                address = containers.address_for(s.id, taken)
                key, public = guest_key()
                host = await asyncio.to_thread(containers.prepare, rootfs, s.hostname,
                                               f"{address}:22", public)
            known = record_host_key(address, 22, host)
            uuid = await containers.define(hyp, containers.domain_xml(s, rootfs))
        except Exception:
            await self.remove(s, hyp)
            m.store.remove_system(s.id)
            raise
        s = self.h._save(s, state="stopped", placement={"uuid": uuid, "volumes": ()},
                         machine={"key": key, "known_hosts": known, "adapters": (),
                                  "os": s.machine.os or "tiny (container)"})
        result = {"domain": p.domain, "uuid": uuid, **await self.boot(s, hyp)}
        t = next((x for x in m.store.types() if x.name == s.type), None)
        if t is None or not t.provision:
            return Done(result=result)
        result["provision"] = f"{t.provision} (queued)"
        return Done(result=result, then=(Job(id=new_id(), op="provision", system_id=s.id),))

    async def boot(self, s: System, hyp: Hypervisor) -> dict[str, Any]:
        """Start; running (with its address) once its sshd answers."""
        rootfs = containers.rootfs_of(s.placement.hypervisor, s.placement.domain)
        address, port = containers.listen_of(rootfs)
        await hyp.start(s.placement.domain)
        s = self.h._save(self.h._fresh(s), state="booting")
        probe = msgspec.structs.replace(
            s, machine=msgspec.structs.replace(s.machine, ip=address, port=port))
        try:
            await containers.wait_reachable(probe, self.h.m.settings.ip_timeout)
        except MachinesError:
            self.h._save(self.h._fresh(s), state="unreachable")
            raise
        self.h._save(self.h._fresh(s), state="running", machine={"ip": address, "port": port})
        return {"state": "running", "ip": address, "port": port}

    def address(self, hypervisor: str, domain: str) -> str | None:
        """Where a running container of ours is reached (sync): its sshd's address."""
        rootfs = containers.rootfs_of(hypervisor, domain)
        if not (rootfs / "etc/reops-listen").exists():
            return None  # not made by reops: no address we know of
        return containers.listen_of(rootfs)[0]

    async def stop(self, s: System, hyp: Hypervisor) -> dict[str, Any]:
        how = await hyp.stop(s.placement.domain, self.h.m.settings.stop_timeout,
                             containers.SHUTDOWN)
        self.h._save(self.h._fresh(s), state="stopped", machine={"ip": None})
        return {"stop": how}

    async def remove(self, s: System, hyp: Hypervisor) -> None:
        """Power off and undefine the domain, unpin its host key, delete its directory."""
        from reops.systems.images import forget_host_key

        p = s.placement
        await containers.undefine(hyp, p.domain)
        rootfs = containers.rootfs_of(p.hypervisor, p.domain)
        if (rootfs / "etc/reops-listen").exists():
            forget_host_key(*containers.listen_of(rootfs))
        containers.remove_files(p.hypervisor, p.domain)

    async def destroy(self, s: System, hyp: Hypervisor) -> dict[str, Any]:
        await self.remove(s, hyp)
        self.h.m.store.remove_system(s.id)
        return {"destroyed": s.placement.domain}

    async def reload(self, job: Job, s: System, hyp: Hypervisor) -> Done:
        """Destroy and re-create from the same record (same id, name and size)."""
        await self.remove(s, hyp)
        s = self.h._save(s, state="creating", machine={"ip": None})
        return await self.create(s, hyp)
