"""A hung libvirtd: a real daemon (serving libvirt's test driver on a private socket, no
other drivers loaded) stopped with SIGSTOP. Requests, jobs and closing must all end in
time with one clear line, and a request that fails leaves nothing recorded."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reops.store.model import MachinesError
from reops.systems.config import load_machines_config
from reops.systems.libvirt.quiet import libvirt
from reops.systems.machines import Machines

pytestmark = pytest.mark.skipif(shutil.which("libvirtd") is None, reason="needs libvirtd")

#: bound on the whole scenario: reaching it means something waited on libvirtd forever
WAIT = 60.0
CONF = """\
unix_sock_dir = "{sock}"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
listen_tls = 0
listen_tcp = 0
"""


class Daemon:
    """One private libvirtd; `uri` reaches its test driver."""

    def __init__(self, root: Path) -> None:
        (root / "sock").mkdir()
        (root / "no-drivers").mkdir()  # no qemu, network, … drivers: nothing on the host
        conf = root / "libvirtd.conf"
        conf.write_text(CONF.format(sock=root / "sock"))
        self.log = root / "libvirtd.log"
        self.uri = f"test+unix:///default?socket={root / 'sock' / 'libvirt-sock'}"
        self.proc = subprocess.Popen(
            ["libvirtd", "-f", str(conf), "-p", str(root / "libvirtd.pid")],
            env={**os.environ, "LIBVIRT_DRIVER_DIR": str(root / "no-drivers")},
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the daemon answers (it creates its socket, then listens)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                libvirt.open(self.uri).close()
                return
            except libvirt.libvirtError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"libvirtd did not start: {self.log.read_text()}") \
                        from None
            time.sleep(0.05)

    def hang(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def libvirtd() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="reops-lvd-"))  # short: a socket path is < 108
    d = Daemon(root)
    try:
        d.wait_ready()
        yield d
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_hung_libvirtd_fails_requests_jobs_and_close_in_time(
        tmp_path: Path, libvirtd: Daemon) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[hypervisors.lab]\nuri = "{libvirtd.uri}"\n\n[machines]\n'
                   "connect_timeout = 5\n\n[machines.deadlines]\nsync = 2\ncreate = 2\n")
    async with asyncio.timeout(WAIT):
        async with Machines.open(tmp_path, load_machines_config(cfg)) as m:
            m.add_type("web")
            # checked while it answers; the job's first step is on the next loop turn
            jobs = await m.create("web", ["tiny", "disk_gb=0"], hostname="w1")
            libvirtd.hang()
            (created,) = await m.wait(jobs)
            assert (created.state, created.reason) == ("failed", "timeout")
            assert created.error.startswith("timeout: create did not finish within 2s")
            with pytest.raises(MachinesError) as e:
                await m.create("web", ["tiny", "disk_gb=0"], hostname="w2")
            assert str(e.value).startswith("hypervisor 'lab' did not answer within 5s while"
                                           " checking the pool and machine names")
            assert "\n" not in str(e.value)
            assert [s.hostname for s in m.systems()] == ["w1"]  # nothing more recorded
            assert m.jobs() == [created]
            (sync,) = await m.wait([await m.sync("lab")])
            assert (sync.state, sync.reason) == ("failed", "timeout")
            assert sync.error.startswith("timeout: sync did not finish within 2s")
        # leaving the block closed the hung connection within the connect timeout
        # (an answering daemon needs far less than those 5 s: it is the only margin here)
