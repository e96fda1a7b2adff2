"""Containers on libvirt's LXC driver, for real: a private libvirtd (reops.systems.lxc.daemon)
runs the driver; a container with the tiny guest's root filesystem (busybox + dropbear) is
created, reached over SSH with its host key pinned at creation (OpenSSH, strict checking),
stopped, started and destroyed, with the hypervisor's lifecycle events seen each time."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reops.store.model import Job, MachinesError, System
from reops.systems.config import load_machines_config
from reops.systems.libvirt.events import HypervisorEvent
from reops.systems.lxc.daemon import DRIVERS, LxcDaemon
from reops.systems.machines import Machines

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("libvirtd") or not shutil.which("dropbear")
    or not (DRIVERS / "libvirt_driver_lxc.so").exists(),
    reason="needs root, libvirtd, dropbear and libvirt-daemon-driver-lxc")

#: bound on one lifecycle step (a container starts in well under a second here)
STEP = 60.0


@pytest.fixture(scope="module")
def daemon() -> Iterator[LxcDaemon]:
    root = Path(tempfile.mkdtemp(prefix="reops-lxc-"))  # short: a socket path is < 108
    d = LxcDaemon(root)
    try:
        d.up()
        yield d
    finally:
        d.down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def machines(daemon: LxcDaemon, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Machines]:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[hypervisors.ct]\nuri = "{daemon.uri}"\n\n'
                   '[machines]\ndefault_hypervisor = "ct"\nip_timeout = 30\nstop_timeout = 10\n')
    monkeypatch.setenv("REOPS_CONFIG", str(cfg))
    async with Machines.open(tmp_path, load_machines_config(cfg)) as m:
        yield m


def ssh(s: System, command: str) -> str:
    """OpenSSH with the key and known_hosts reops recorded: no accept-new, no prompt."""
    assert s.machine.ip and s.machine.key and s.machine.known_hosts, s
    r = subprocess.run(
        ["ssh", "-i", s.machine.key, "-p", str(s.machine.port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={s.machine.known_hosts}",
         "-o", "ConnectTimeout=10", f"root@{s.machine.ip}", command],
        capture_output=True, text=True, timeout=STEP)
    assert r.returncode == 0, r.stderr
    return r.stdout


async def done(m: Machines, jobs: list[Job]) -> list[Job]:
    finished = await asyncio.wait_for(m.wait(jobs), STEP)
    assert all(j.state == "succeeded" for j in finished), [(j.op, j.error) for j in finished]
    return finished


async def test_container_lifecycle_over_ssh_with_events(machines: Machines) -> None:
    m = machines
    seen: list[HypervisorEvent] = []
    (await m.hypervisor_events("ct")).subscribe(seen.append)

    def events(kind: str) -> list[str]:
        return [e.event for e in seen if e.kind == "domain" and e.name == "ct1"
                and e.event == kind]

    m.add_type("web")
    await done(m, await m.create("web", ["tiny"], hostname="ct1"))
    [s] = m.systems("typed:web & running & hyp:ct")
    assert s.state == "running" and s.machine.ip and s.machine.ip.startswith("127.77.")
    out = ssh(s, "uname -a; cat /etc/hostname; hostname")
    kernel = os.uname().release
    assert out.split("\n")[0].split()[:3] == ["Linux", "ct1", kernel]  # the host's kernel
    assert out.splitlines()[1:] == ["ct1", "ct1"]
    assert events("STARTED")

    [stopped] = await done(m, m.submit("stop", "ct1"))
    # a clean stop through the hypervisor's one shutdown path, with the container's method
    # (SIGTERM to its init), not destroyed after stop_timeout as libvirt's default would be
    assert stopped.result == {"stop": "shut down"}, stopped.result
    assert m.system(s.id).state == "stopped" and m.systems("running") == []
    assert events("STOPPED")
    assert m.systems("state:stopped")[0].id == s.id

    await done(m, m.submit("start", "ct1"))
    s = m.system(s.id)
    assert s.state == "running"
    assert ssh(s, "cat /etc/hostname").strip() == "ct1"
    assert len(events("STARTED")) == 2

    await done(m, [await m.sync("ct")])  # no DHCP lease to find: still running, same address
    assert [(x.id, x.machine.ip) for x in m.systems("running")] == [(s.id, s.machine.ip)]

    await done(m, m.submit("destroy", "ct1"))
    assert m.systems() == []
    assert events("UNDEFINED")
    home = Path(os.environ["REOPS_HOME"])
    assert not (home / "containers" / "ct" / "ct1").exists()
    assert s.machine.ip not in Path(s.machine.known_hosts or "").read_text()


async def test_two_containers_get_their_own_address_and_a_bad_name_is_one_line(
        machines: Machines) -> None:
    m = machines
    m.add_type("db")
    await done(m, await m.create("db", ["tiny"], count=2, hostname="d"))
    a, b = m.systems("typed:db")
    assert a.machine.ip != b.machine.ip
    assert ssh(a, "hostname").strip() == a.hostname
    assert ssh(b, "hostname").strip() == b.hostname
    with pytest.raises(MachinesError, match="a machine named 'd-1' already exists on ct"):
        await m.create("db", ["tiny"], hostname="d-1")
    await done(m, m.submit("destroy", "typed:db"))
    assert m.systems() == []


async def test_a_container_whose_sshd_never_answers_fails_in_one_line(
        daemon: LxcDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded wait (ip_timeout), one line naming the container and where it listened, state
    unreachable; then it can still be destroyed, leaving nothing."""
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[hypervisors.ct]\nuri = "{daemon.uri}"\n\n'
                   '[machines]\nip_timeout = 2\nstop_timeout = 5\n')
    async with Machines.open(tmp_path, load_machines_config(cfg)) as m:
        m.add_type("web")
        await done(m, await m.create("web", ["tiny"], hostname="mute"))
        await done(m, m.submit("stop", "mute"))
        rootfs = tmp_path / "containers" / "ct" / "mute" / "rootfs"
        (rootfs / "usr/sbin/dropbear").unlink()  # the container boots, its sshd cannot
        [job] = await asyncio.wait_for(m.wait(m.submit("start", "mute")), STEP)
        address = (rootfs / "etc/reops-listen").read_text().strip()
        assert job.state == "failed" and job.error == (
            f"container mute: no SSH server on {address} after 2s (its console log is under "
            "libvirt's log directory, lxc/mute.log)"), job.error
        assert m.systems("mute")[0].state == "unreachable" and m.systems("running") == []
        await done(m, m.submit("destroy", "mute"))
        assert m.systems() == [] and not rootfs.exists()
