"""Bastion mode: lab targets that can be reached only through a bastion sshd.

The targets' sshd's run inside a network namespace the lab creates (``ip netns add
reops-<lab-id>``), listening on loopback addresses that exist only there: from the root
namespace nothing answers on them, so a test that reaches a target has proved the jump.

The bastion must be reachable from the root namespace *and* reach the targets. Its
listening socket is bound in the root namespace by the lab process, which then spawns,
inside the namespace, a tiny socket-activation shim (``bastion_shim.py``) that inherits
that socket and runs ``sshd -i`` (inetd mode) for each connection it accepts. Every sshd
of the bastion therefore lives in the namespace (its ``direct-tcpip`` connects, i.e.
ProxyJump, land on the targets) while clients connect to it in the root namespace.

Why this over the alternatives: a veth pair between the namespaces would need routes and
``route_localnet`` sysctls to carry 127.0.0.0/8 across (global state, easy to leave
behind, and loopback addresses on a non-loopback device are fragile); a byte-relaying
proxy would add a second hop that can stall or lose data. Here the kernel carries every
byte, nothing outside the lab changes but the named namespace, and the namespace is named
(a bind mount in /run/netns), so ``lab down`` from another process — also after the lab's
creator was SIGKILLed — finds and deletes it once its processes are stopped.

Everything runs on 127.0.0.0/8 and in the namespace the lab creates; it needs root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from reops.lab.setup import LabError

#: the bastion's host name in the lab and its inventory
BASTION = "bastion"
NETNS_DIR = Path("/run/netns")
SHIM = Path(__file__).with_name("bastion_shim.py")
_CLONE_NEWNET = 0x40000000


def netns_name(lab_id: str) -> str:
    """The lab's network namespace, as `ip netns` names it."""
    return f"reops-{lab_id}"


def require_root() -> None:
    """Bastion mode creates a network namespace: refuse, in one line, without root."""
    if os.geteuid() != 0:
        raise LabError(
            "bastion mode needs root (it creates a network namespace for the targets); "
            "run as root or leave out --bastion"
        )
    if not _ip():
        raise LabError("bastion mode needs the `ip` command (apt-get install iproute2)")


def create_netns(name: str) -> None:
    """Create the namespace with its loopback up (127.0.0.0/8 answers only once lo is up)."""
    delete_netns(name)  # a crashed lab with the same id: start clean
    _run([_ip(), "netns", "add", name])
    try:
        _run([_ip(), "-n", name, "link", "set", "lo", "up"])
    except LabError:
        delete_netns(name)
        raise


def delete_netns(name: str) -> None:
    """Remove the namespace (a no-op when it is gone); stop its processes first."""
    if (NETNS_DIR / name).exists():
        _run([_ip(), "netns", "delete", name])


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with this thread inside namespace `name` (None: stay where we are).

    Sockets made and processes spawned meanwhile belong to that namespace and stay there;
    other threads of the process are not affected. The thread goes back home afterwards.
    """
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            there = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LabError(f"the lab's network namespace {name} is gone; take the lab "
                           "down and up again") from None
        try:
            _setns(there)
        finally:
            os.close(there)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def listen(address: str, port: int) -> socket.socket:
    """The bastion's listening socket, bound in the calling thread's (root) namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise LabError(f"bastion ({address}:{port}): {e.strerror}") from None
    return sock


def shim_argv(listen_fd: int, sshd: str, config: Path) -> list[str]:
    """The command that runs the bastion: the shim, then sshd in inetd mode per connection."""
    return [sys.executable, "-I", str(SHIM), str(listen_fd), "--", sshd, "-i", "-e",
            "-f", str(config)]


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        hint = " (needs root)" if err == errno.EPERM else ""
        raise LabError(f"cannot enter the lab's network namespace: {os.strerror(err)}{hint}")


def _ip() -> str:
    return shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin") or ""


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise LabError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")
