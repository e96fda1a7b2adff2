"""A private libvirtd serving the LXC driver, for tests, docs and hosts without one.

Root only. It runs in a mount namespace of its own where (1) libvirt's state and config
directories are bind-mounted from `DIR/state`, so nothing it defines lands in the host's
/etc/libvirt or /run/libvirt, and (2) the empty cgroup v2 hierarchy a hybrid host mounts at
/sys/fs/cgroup/unified is unmounted: with it, libvirt 9.0's libvirt_lxc fails every start
with "Unable to create directory /sys/fs/cgroup/unified: No such file or directory"
(virCgroupV2BindMount, inside the container's new /sys/fs/cgroup). Only the lxc and
storage drivers load; the socket is `DIR/sock/libvirt-sock`.

    python -m reops.systems.lxc.daemon up DIR     # prints the URI to use
    python -m reops.systems.lxc.daemon down DIR   # destroys its containers, stops it
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from reops.store.model import MachinesError
from reops.systems.libvirt.quiet import libvirt

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # our errors say what failed

DRIVERS = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver")
#: libvirt's directories the daemon would otherwise share with the host's
PRIVATE = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt",
           "/var/log/libvirt")
CONF = """\
unix_sock_dir = "{sock}"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
"""


class LxcDaemon:
    """One private libvirtd with the LXC driver under `root` (a short path: sockets < 108)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "sock" / "libvirt-sock"
        self.pidfile = root / "libvirtd.pid"
        self.log = root / "libvirtd.log"

    @property
    def uri(self) -> str:
        return f"lxc+unix:///system?socket={self.sock}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def up(self, timeout: float = 30.0) -> str:
        """Start the daemon (unless it runs) and wait until it answers; returns the URI."""
        if self.pid() is not None:
            return self.uri
        missing = [what for what, ok in (
            ("root", os.geteuid() == 0), ("libvirtd", shutil.which("libvirtd")),
            ("unshare", shutil.which("unshare")),
            ("libvirt-daemon-driver-lxc", (DRIVERS / "libvirt_driver_lxc.so").exists()),
        ) if not ok]
        if missing:
            raise MachinesError(f"a private libvirtd for containers needs: {', '.join(missing)}")
        drivers = self.root / "drivers"
        for d in (self.sock.parent, drivers, *(self.root / "state" / p[1:] for p in PRIVATE)):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("libvirt_driver_lxc.so", "libvirt_driver_storage.so"):
            if not (drivers / name).exists():
                (drivers / name).symlink_to(DRIVERS / name)
        conf = self.root / "libvirtd.conf"
        conf.write_text(CONF.format(sock=self.sock.parent))
        mounts = "; ".join(
            f"mkdir -p {p} && mount --bind {shlex.quote(str(self.root / 'state' / p[1:]))} {p}"
            for p in PRIVATE)
        script = (
            "set -e; "
            "if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi; "
            f"{mounts}; exec libvirtd -f {shlex.quote(str(conf))}"
            f" -p {shlex.quote(str(self.pidfile))}"
        )
        self.pidfile.unlink(missing_ok=True)
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            env={**os.environ, "LIBVIRT_DRIVER_DIR": str(drivers)}, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError:
                conn = None
            if conn is not None:
                try:
                    self._pool(conn)
                finally:
                    conn.close()
                return self.uri
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                raise MachinesError(f"private libvirtd in {self.root} did not start: "
                                    f"{tail[0] if tail else 'no output'}")
            time.sleep(0.05)  # its socket appears, then it listens: nothing to wait on

    def _pool(self, conn: libvirt.virConnect) -> None:
        """A transient `default` directory pool: Machines checks its pool before creating
        (a container's disk is its root filesystem, so nothing is put in it)."""
        if "default" in conn.listStoragePools():
            return
        path = self.root / "pool"
        path.mkdir(exist_ok=True)
        conn.storagePoolCreateXML(
            f"<pool type='dir'><name>default</name><target><path>{path}</path></target>"
            "</pool>", 0)

    def down(self, timeout: float = 20.0) -> None:
        """Destroy and undefine its containers, then stop the daemon; safe to call twice."""
        pid = self.pid()
        if pid is None:
            return
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            conn = None
        if conn is not None:
            for dom in conn.listAllDomains():
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            conn.close()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python -m reops.systems.lxc.daemon up|down DIR", file=sys.stderr)
        return 2
    d = LxcDaemon(Path(argv[1]).resolve())
    try:
        if argv[0] == "up":
            print(d.up())
        else:
            d.down()
    except MachinesError as e:
        print(f"reops: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
