"""libvirt as a source: one connection per hypervisor, lifecycle calls and domain events.

Blocking libvirt calls run in threads of their own so the runtime loop never stalls and a
call a hung libvirtd never answers can be abandoned (the job's deadline) without starving
the loop's executor or holding the process open at exit. Events come from libvirt's event
thread (see `reops.systems.libvirt.events`) onto this connection's loop and out as an
Observable of `HypervisorEvent`. Methods are idempotent where they can be (create reuses
existing volumes and domains, destroy of a missing domain is done); which jobs may run
again after a crash is the queue's decision (reops.store.queue.IDEMPOTENT).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape

import msgspec
import reactivex as rx
from reactivex import operators as ops
from reactivex.subject import Subject

from reops.store.model import MachinesError
from reops.systems.libvirt.domain_xml import (
    DiskSpec,
    DomainInfo,
    DomainSpec,
    domain_xml,
    parse_domain,
)
from reops.systems.libvirt.events import (
    EVENT_THREAD,
    NETWORK_EVENTS,
    POOL_EVENTS,
    HypervisorEvent,
    domain_event_names,
)
from reops.systems.libvirt.pools import DirPool, LibvirtPool, Pool
from reops.systems.libvirt.quiet import libvirt

T = TypeVar("T")

STATES = {0: "unknown", 1: "running", 2: "running", 3: "paused", 4: "running",
          5: "stopped", 6: "stopped", 7: "paused"}
IP_SOURCES = (
    ("DHCP lease", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE),
    ("guest agent", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT),
    ("ARP", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP),
)
_UNDEFINE = (
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


#: qemu.conf for an embedded QEMU run by root: no libvirt-qemu user, no virtlogd daemon, no
#: owner remembered in xattrs (files of one guest are shared by a CLI process and a later
#: one: each warned "Invalid XATTR timestamp" on the other's stderr)
EMBED_QEMU_CONF = 'user = "root"\ngroup = "root"\nstdio_handler = "file"\nremember_owner = 0\n'


def embed_root(uri: str) -> Path | None:
    """The directory of a qemu:///embed?root=DIR URI, else None."""
    u = urllib.parse.urlsplit(uri)
    if u.scheme != "qemu" or u.path != "/embed":
        return None
    roots = urllib.parse.parse_qs(u.query).get("root")
    return Path(roots[0]).expanduser() if roots else None


def prepare_embed(uri: str) -> None:
    """Write the embedded QEMU's qemu.conf (once) so it runs without libvirt's daemons."""
    root = embed_root(uri)
    if root is None or os.geteuid() != 0:
        return
    conf = root / "etc" / "qemu.conf"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(EMBED_QEMU_CONF)


#: libvirt's error while its QEMU driver is still re-attaching to a running guest
REATTACHING = "monitor must not be NULL"


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a daemon thread of its own; cancelling the await abandons the call.

    Not the loop's executor: a hung libvirtd blocks its threads for good, and executor
    threads are joined at exit (a hung call would keep the process from ending).
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if fut.done():  # abandoned (cancelled by a deadline): drop the late answer
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def work() -> None:
        try:
            value, error = fn(*args), None
        except BaseException as e:  # handed to the awaiting task, raised there
            value, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name="libvirt-call", daemon=True).start()
    return await fut


def _first_line(e: BaseException) -> str:
    text = e.get_error_message() if isinstance(e, libvirt.libvirtError) else str(e)
    return (text or type(e).__name__).strip().splitlines()[0]


def _missing(e: libvirt.libvirtError) -> bool:
    return e.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT, libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
    )


class Hypervisor:
    """One open libvirt connection, its lifecycle operations and its event stream."""

    def __init__(self, name: str, uri: str, conn: libvirt.virConnect,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.uri = uri
        self.reattach_timeout = 0.0
        self._closed = False
        self._conn = conn
        self._loop = loop
        self._subject: Subject[HypervisorEvent] = Subject()
        self._callbacks: list[tuple[Callable[[int], Any], int]] = []
        self.events: rx.Observable[HypervisorEvent] = self._subject.pipe(ops.share())
        self._register_events()
        self._type = conn.getType().lower()  # a call to libvirtd: asked once, here

    @classmethod
    async def connect(cls, name: str, uri: str, timeout: float) -> Hypervisor:
        """Open `uri`; a one-line MachinesError when it cannot be reached within `timeout`."""
        EVENT_THREAD.ensure()
        prepare_embed(uri)
        loop = asyncio.get_running_loop()

        def open_() -> Hypervisor:  # opening and registering events both ask libvirtd
            return cls(name, uri, libvirt.open(uri), loop)

        try:
            hyp = await asyncio.wait_for(in_thread(open_), timeout)
        except TimeoutError:
            raise MachinesError(
                f"hypervisor {name!r} ({uri}) is unreachable: no answer in {timeout:g}s"
            ) from None
        except libvirt.libvirtError as e:
            raise MachinesError(
                f"hypervisor {name!r} ({uri}) is unreachable: {_first_line(e)}"
            ) from None
        hyp.reattach_timeout = timeout
        return hyp

    @property
    def connection(self) -> libvirt.virConnect:
        """The raw libvirt connection, for what this class does not wrap."""
        return self._conn

    async def close(self) -> None:
        """Stop events and close the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        callbacks, self._callbacks = self._callbacks, []

        def shut() -> None:  # each a call to libvirtd: never on the loop's thread
            for deregister, cb_id in callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    deregister(cb_id)
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()

        # a hung libvirtd never answers: give up after the connect timeout, keep closing
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(in_thread(shut), max(self.reattach_timeout, 1.0))
        self._subject.on_completed()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking libvirt call in a worker thread; errors become MachinesError.

        Right after an embedded QEMU driver opens, it re-attaches to running guests in
        its own threads; a call in that window fails with "monitor must not be NULL".
        Such calls are retried, with a growing pause, until `reattach_timeout` runs out.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reattach_timeout
        pause = 0.05
        while True:
            try:
                return await in_thread(fn, *args)
            except libvirt.libvirtError as e:
                if REATTACHING not in str(e) or loop.time() + pause > deadline:
                    raise MachinesError(f"{self.name}: {_first_line(e)}") from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    # ---- events
    def _emit(self, kind: Any, name: str, uuid: str, event: str, detail: str) -> None:
        """Called in libvirt's event thread: hand the event to our loop."""
        ev = HypervisorEvent(hypervisor=self.name, kind=kind, name=name, uuid=uuid,
                             event=event, detail=detail)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._subject.on_next, ev)

    def _register_events(self) -> None:
        c = self._conn

        def on_domain(_c: Any, dom: Any, event: int, detail: int, _o: Any) -> None:
            self._emit("domain", dom.name(), dom.UUIDString(), *domain_event_names(event, detail))

        def on_network(_c: Any, net: Any, event: int, detail: int, _o: Any) -> None:
            name = NETWORK_EVENTS[event] if event < len(NETWORK_EVENTS) else str(event)
            self._emit("network", net.name(), net.UUIDString(), name, str(detail))

        def on_pool(_c: Any, pool: Any, event: int, detail: int, _o: Any) -> None:
            name = POOL_EVENTS[event] if event < len(POOL_EVENTS) else str(event)
            self._emit("pool", pool.name(), pool.UUIDString(), name, str(detail))

        registrations: list[tuple[Callable[..., int], Callable[[int], Any], int, Any]] = [
            (c.domainEventRegisterAny, c.domainEventDeregisterAny,
             libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_domain),
            (c.networkEventRegisterAny, c.networkEventDeregisterAny,
             libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE, on_network),
            (c.storagePoolEventRegisterAny, c.storagePoolEventDeregisterAny,
             libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, on_pool),
        ]
        for register, deregister, event_id, cb in registrations:
            try:
                self._callbacks.append((deregister, register(None, event_id, cb, None)))
            except libvirt.libvirtError:  # a driver without network or pool events
                continue

    async def next_event(self, pred: Callable[[HypervisorEvent], bool],
                         timeout: float) -> HypervisorEvent | None:
        """The next event satisfying `pred`, or None after `timeout` seconds."""
        fut: asyncio.Future[HypervisorEvent] = self._loop.create_future()

        def hit(ev: HypervisorEvent) -> None:
            if pred(ev) and not fut.done():
                fut.set_result(ev)

        sub = self.events.subscribe(hit)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            sub.dispose()

    # ---- lookups
    def _domain(self, name: str) -> libvirt.virDomain:
        return self._conn.lookupByName(name)

    def _find(self, name: str) -> libvirt.virDomain | None:
        try:
            return self._conn.lookupByName(name)
        except libvirt.libvirtError as e:
            if _missing(e):
                return None
            raise

    def _pool(self, pool: str) -> Pool:
        """The named storage pool; a directory under the root for embedded QEMU."""
        root = embed_root(self.uri)
        try:
            return LibvirtPool(self._conn.storagePoolLookupByName(pool))
        except libvirt.libvirtError as e:
            unsupported = e.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
            if not (_missing(e) or unsupported):
                raise
        if root is None:
            raise MachinesError(f"{self.name}: no storage pool {pool!r}")
        return DirPool(root / "images" / pool)

    async def with_pool(self, pool: str, fn: Callable[[Pool], T]) -> T:
        """`fn(the pool)` in a worker thread (image files, a guest's seed)."""
        return await self._call(lambda: fn(self._pool(pool)))

    async def state(self, name: str) -> str:
        """running, stopped, paused, unknown — or missing when no such domain exists."""
        def get() -> str:
            dom = self._find(name)
            return "missing" if dom is None else STATES.get(dom.state()[0], "unknown")
        return await self._call(get)

    async def domains(self) -> list[DomainInfo]:
        """Every domain on this hypervisor, as `sync` sees it."""
        def read() -> list[DomainInfo]:
            return [
                parse_domain(d.XMLDesc(0), STATES.get(d.state()[0], "unknown"))
                for d in self._conn.listAllDomains()
            ]
        return await self._call(read)

    async def check_pool(self, pool: str, bases: list[str]) -> None:
        """Fail before anything is recorded when the pool or a base volume is missing."""
        def check() -> None:
            p = self._pool(pool)
            have = set(p.volumes())
            missing = [b for b in bases if b not in have]
            if missing:
                raise MachinesError(
                    f"{self.name}: no base volume {', '.join(map(repr, missing))} in pool "
                    f"{pool!r} (has: {', '.join(sorted(have)) or 'none'})"
                )
        await self._call(check)

    # ---- lifecycle
    async def create(self, spec: DomainSpec, pool: str,
                     volumes: list[tuple[str, int, str | None]]) -> DomainInfo:
        """Make the volumes (overlays on their base) and define the domain; reuse what exists.

        `volumes`: (name, size_gb, base volume name or None) in disk order.
        """
        def make() -> DomainInfo:
            disks: list[DiskSpec] = []
            if volumes:
                p = self._pool(pool)
                for vol_name, size_gb, base in volumes:
                    path = p.path(vol_name) or p.create(vol_name, size_gb, base)
                    disks.append(DiskSpec(path))
            network = spec.network
            if network and network != "user":
                try:
                    self._conn.networkLookupByName(network)
                except libvirt.libvirtError:
                    network = "user" if spec.type in ("qemu", "kvm") else None
            full = msgspec.structs.replace(
                spec, disks=tuple(disks), network=network,
                ssh_port=spec.ssh_port if network == "user" else 0)  # a real network: lease
            dom = self._find(spec.name) or self._conn.defineXML(domain_xml(full))
            return parse_domain(dom.XMLDesc(0), STATES.get(dom.state()[0], "unknown"))
        return await self._call(make)

    async def start(self, name: str) -> None:
        """Boot the domain; already running is fine."""
        def boot() -> None:
            dom = self._domain(name)
            if not dom.isActive():
                dom.create()
        await self._call(boot)

    async def stop(self, name: str, timeout: float, flags: int = 0) -> str:
        """Ask the guest to shut down (`flags`: libvirt's VIR_DOMAIN_SHUTDOWN_* method, 0 the
        driver's default, e.g. ACPI for a VM); destroy it if it has not stopped within
        `timeout`. VMs and containers (reops.systems.lxc) both stop here."""
        stopped = asyncio.ensure_future(self.next_event(
            lambda e: e.kind == "domain" and e.name == name and e.event == "STOPPED", timeout
        ))
        await asyncio.sleep(0)  # let the waiter subscribe before we act

        def shutdown() -> bool:
            dom = self._domain(name)
            if not dom.isActive():
                return False
            dom.shutdownFlags(flags)
            return True
        try:
            if not await self._call(shutdown):
                return "already stopped"
            if await self.state(name) == "stopped" or await stopped is not None:
                return "shut down"
        finally:
            stopped.cancel()
        await self.destroy(name)
        return f"destroyed: no clean shutdown within {timeout:g}s"

    async def destroy(self, name: str) -> None:
        """Power the domain off now; not running (or missing) is fine."""
        def off() -> None:
            dom = self._find(name)
            if dom is not None and dom.isActive():
                _power_off(dom)
        await self._call(off)

    async def remove(self, name: str, pool: str, volumes: list[str]) -> None:
        """Power off, undefine (with snapshot metadata) and delete the volumes; idempotent."""
        def rm() -> None:
            dom = self._find(name)
            if dom is not None:
                if dom.isActive():
                    _power_off(dom)
                try:
                    dom.undefineFlags(_UNDEFINE)
                except libvirt.libvirtError as e:  # drivers without NVRAM (test:///)
                    if e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                        raise
                    dom.undefineFlags(_UNDEFINE & ~libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            if volumes:
                p = self._pool(pool)
                for vol_name in volumes:
                    p.delete(vol_name)
        await self._call(rm)

    async def snapshot(self, name: str, snap: str) -> None:
        """A named snapshot of the domain."""
        xml = f"<domainsnapshot><name>{escape(snap)}</name></domainsnapshot>"
        await self._call(lambda: self._domain(name).snapshotCreateXML(xml, 0))

    async def revert(self, name: str, snap: str) -> None:
        """Back to the named snapshot; a clear error when it does not exist."""
        def back() -> None:
            dom = self._domain(name)
            try:
                s = dom.snapshotLookupByName(snap, 0)
            except libvirt.libvirtError as e:
                if _missing(e):
                    have = ", ".join(dom.snapshotListNames()) or "none"
                    raise MachinesError(
                        f"{name} has no snapshot {snap!r} (has: {have})") from None
                raise
            dom.revertToSnapshot(s, 0)
        await self._call(back)

    async def ip(self, name: str, timeout: float) -> str:
        """The domain's first IPv4 address: DHCP lease, then guest agent, then ARP."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.25
        tried: dict[str, str] = {}
        while True:
            found = await in_thread(self._addresses, name, tried)
            if found:
                return found
            left = deadline - loop.time()
            if left <= 0:
                why = "; ".join(f"{k}: {v}" for k, v in tried.items())
                raise MachinesError(f"{name}: no IP address after {timeout:g}s ({why})")
            # wake on the domain's next event, or retry after a growing pause
            await self.next_event(lambda e: e.name == name, min(delay, left))
            delay = min(delay * 2, 5.0)

    async def ip_now(self, name: str) -> str | None:
        """The domain's address if one is known right now (no waiting)."""
        return await in_thread(self._addresses, name, {})

    def _addresses(self, name: str, tried: dict[str, str]) -> str | None:
        try:
            dom = self._domain(name)
        except libvirt.libvirtError as e:
            tried["lookup"] = _first_line(e)
            return None
        for label, source in IP_SOURCES:
            try:
                ifaces = dom.interfaceAddresses(source, 0) or {}
            except libvirt.libvirtError as e:
                tried[label] = _first_line(e)
                continue
            for iface in ifaces.values():
                for a in iface.get("addrs") or []:
                    if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and not str(
                        a.get("addr", "")
                    ).startswith("127."):
                        return str(a["addr"])
            tried[label] = "no address yet"
        return None

    def domain_type(self) -> str:
        """The domain type this driver wants: test for test:///, qemu (TCG) otherwise."""
        return "test" if self._type == "test" else "qemu"


def _power_off(dom: libvirt.virDomain) -> None:
    """Destroy a domain that was running a moment ago; one that stopped since is fine
    (e.g. its QEMU went away with the process that had started it)."""
    try:
        dom.destroy()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
            raise
