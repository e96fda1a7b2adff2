"""A container's life on libvirt's LXC driver: root filesystem, domain, address, SSH.

Root filesystem: a private copy (about 6 MB) of the tiny guest's tree
(reops.systems.images.build_rootfs: busybox + dropbear), built once per machine under
~/.reops/containers/base, with this container's hostname, the controller's public key in
root's authorized_keys and a host key made here, so it is pinned in reops' known_hosts
before the first boot (no accept-new). Its init starts dropbear and stops it on SIGTERM
(the shutdown we send: libvirt's default initctl method does not reach a busybox init).

Network: the container shares the host's network namespace (an LXC domain without
<interface>) and its sshd listens on a loopback address of its own, 127.77.X.Y:22, taken
from its id; so the controller reaches it as it reaches any host, nothing to forward or
route, and nothing outside this machine can. The address is stored on the System.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

from reops.core.settings import home
from reops.store.model import MachinesError, System
from reops.systems.libvirt.domain_xml import DESCRIPTION
from reops.systems.libvirt.hypervisor import Hypervisor, in_thread
from reops.systems.libvirt.quiet import libvirt

_BUILDING = threading.Lock()  # flock is per open file: threads of one process need this too
#: the first two octets of containers' loopback addresses (the lab's hosts use 127.0.x.y)
NET = (127, 77)
INIT_PATH = "/sbin/reops-container-init"
INIT = """\
#!/bin/sh
# reops container init: hostname, SSH server, and a clean stop on SIGTERM
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
hostname -F /etc/hostname
mkdir -p /run /tmp /var/log
dropbear -s -r /etc/dropbear/dropbear_ed25519_host_key -p "$(cat /etc/reops-listen)" \\
  -P /run/dropbear.pid
trap '[ -f /run/dropbear.pid ] && kill "$(cat /run/dropbear.pid)"; exit 0' TERM INT
echo "reops-container: $(hostname) ssh up"
while :; do sleep 3600 & wait $!; done
"""
DOMAIN = """\
<domain type='lxc'>
  <name>{name}</name>
  <description>{description}</description>
  <memory unit='MiB'>{ram}</memory>
  <vcpu>{cpu}</vcpu>
  <os><type>exe</type><init>{init}</init></os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount'><source dir='{rootfs}'/><target dir='/'/></filesystem>
    <console type='pty'/>
  </devices>
</domain>
"""


def containers_dir() -> Path:
    return home() / "containers"


def base_rootfs(cache: Path | None = None) -> Path:
    """The tree every container copies, built once (atomically: a crash leaves none)."""
    from reops.systems.images import build_rootfs

    dest = (cache or containers_dir()) / "base"
    if (dest / INIT_PATH.lstrip("/")).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _BUILDING, open(dest.with_name(".base.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait for it
        if (dest / INIT_PATH.lstrip("/")).exists():
            return dest
        tmp = dest.with_name(f".base.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_rootfs(tmp)
        init = tmp / INIT_PATH.lstrip("/")
        init.write_text(INIT)
        init.chmod(0o755)
        shutil.rmtree(dest, ignore_errors=True)  # a half-made one of an older layout
        tmp.rename(dest)
    return dest


def rootfs_of(hypervisor: str, domain: str) -> Path:
    return containers_dir() / hypervisor / domain / "rootfs"


def address_for(system_id: str, taken: Iterable[str] = ()) -> str:
    """A loopback address for the container's sshd: from its id, else the next one whose
    port 22 is free and no other system holds."""
    avoid = set(taken)
    start = int(system_id[:4], 16)
    for i in range(254 * 254):
        n = (start + i) % (254 * 254)
        address = f"{NET[0]}.{NET[1]}.{n // 254 + 1}.{n % 254 + 1}"
        if address not in avoid and _port_free(address, 22):
            return address
    raise MachinesError("no free loopback address for a container's SSH server")


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def prepare(rootfs: Path, hostname: str, listen: str, authorized_key: str) -> str:
    """This container's root filesystem; returns its host key (OpenSSH public line)."""
    from reops.systems.images import host_key

    base = base_rootfs()
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(base, rootfs, symlinks=True)
    private, public = host_key()
    key = rootfs / "etc/dropbear/dropbear_ed25519_host_key"
    key.write_bytes(private)
    key.chmod(0o600)
    (rootfs / "etc/hostname").write_text(f"{hostname}\n")
    (rootfs / "etc/reops-listen").write_text(f"{listen}\n")
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
    (ssh / "authorized_keys").write_text(f"{authorized_key.strip()}\n")
    (ssh / "authorized_keys").chmod(0o600)
    return public


def domain_xml(s: System, rootfs: Path) -> str:
    return DOMAIN.format(
        name=escape(s.placement.domain), description=escape(DESCRIPTION.format(id=s.id)),
        ram=int(s.machine.ram), cpu=int(s.machine.cpu), init=INIT_PATH,
        rootfs=escape(str(rootfs)))


async def define(hyp: Hypervisor, xml: str) -> str:
    """Define the domain; returns its uuid."""
    return await in_thread(lambda: str(hyp.connection.defineXML(xml).UUIDString()))


async def undefine(hyp: Hypervisor, name: str) -> None:
    """Power off and undefine; gone already is fine. (The LXC driver takes no undefine
    flags: the snapshot/managed-save/NVRAM ones VMs need are refused.)"""
    def rm() -> None:
        try:
            dom = hyp.connection.lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        if dom.isActive():
            try:
                dom.destroy()
            except libvirt.libvirtError as e:  # it stopped since: fine
                if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise
        dom.undefine()
    await in_thread(rm)


async def wait_reachable(s: System, timeout: float) -> None:
    """Until the container's sshd shows its banner; one line naming it when it does not."""
    from reops.systems.images import wait_ssh

    address = s.machine.ip or ""
    if not await wait_ssh(address, s.machine.port, timeout):
        raise MachinesError(
            f"container {s.hostname}: no SSH server on {address}:{s.machine.port} after "
            f"{timeout:g}s (its console log is under libvirt's log directory, lxc/"
            f"{s.placement.domain}.log)")


#: how a container is stopped: SIGTERM to its init (its dropbear stops, init exits), as
#: libvirt's default initctl method does not reach a busybox init (Hypervisor.stop's flags)
SHUTDOWN = libvirt.VIR_DOMAIN_SHUTDOWN_SIGNAL


def remove_files(hypervisor: str, domain: str) -> None:
    """The container's directory (root filesystem and all); gone already is fine."""
    shutil.rmtree(rootfs_of(hypervisor, domain).parent, ignore_errors=True)


def listen_of(rootfs: Path) -> tuple[str, int]:
    """The address and port the container's sshd listens on (written by `prepare`)."""
    try:
        address, _, port = (rootfs / "etc/reops-listen").read_text().strip().rpartition(":")
        return address, int(port)
    except (OSError, ValueError):
        raise MachinesError(f"{rootfs}: not a reops container's root filesystem "
                            "(no etc/reops-listen): destroy and create it again") from None
