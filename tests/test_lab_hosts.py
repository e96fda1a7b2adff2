"""Each lab host is a machine of its own: its own /tmp, home and /etc/motd, sudo, services.

Real parts only: the lab's sshd hosts (as root each in a private mount namespace), the
machine's real sudo and start-stop-daemon, reops over SSH. These need root (the lab only
gives hosts their own filesystem, sudo and services as root).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from reops import run
from reops.core.model import Hosts, Outcome
from reops.core.settings import Settings
from reops.lab.fleet import LabInfo
from reops.lab.hostfs import mount_namespace
from reops.lab.services import SERVICE
from reops.ops import files, service
from reops.ops.base import Op
from reops.ops.shell import exec_
from reops.streams.source import source
from tests.conftest import LabFactory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lab hosts get their own "
                                "filesystem, sudo and services only as root")

FAST = Settings(connect_timeout=30.0, command_timeout=120.0)


def on(hosts: Hosts, op: Op) -> Outcome:
    return run(source(hosts, op, via="ssh", settings=FAST))


def by_host(out: Outcome) -> dict[str, object]:
    return {r.host: r for r in out.results}


def reops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=300)


# -- each host its own filesystem ---------------------------------------------------------

def test_a_file_in_tmp_is_seen_by_its_host_only(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=3, private_fs=True)
    hosts = fleet.info.as_hosts()
    name = f"/tmp/reops-private-{secrets.token_hex(6)}"
    [web1] = [h for h in hosts if h.name == "web1"]
    assert on(Hosts([web1]), exec_(f"echo mine > {name}")).ok
    seen = on(hosts, exec_(f"cat {name}"))
    assert {r.host for r in seen.successful} == {"web1"}
    assert seen.successful[0].out == "mine\n"
    assert not Path(name).exists()  # nor on the controller


def test_changed_is_per_host(lab_factory: LabFactory) -> None:
    """The same files op on every host at once: each host changes once (no races)."""
    fleet = lab_factory(hosts=3, private_fs=True)
    hosts = fleet.info.as_hosts()
    op = files.line_in_file("/tmp/app.conf", "listen=8080", create=True)
    first = on(hosts, op)
    assert first.ok and [r.changed for r in first.results] == [True, True, True]
    again = on(hosts, op)
    assert again.ok and [r.changed for r in again.results] == [False, False, False]


def test_home_and_motd_are_the_hosts_own(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=2, private_fs=True)
    out = on(fleet.info.as_hosts(), exec_("cat /etc/motd; touch ~/mark; ls ~"))
    assert out.ok
    for r in out.results:
        assert r.out.startswith(f"reops lab host {r.host}:")
        assert r.out.splitlines()[-1] == "mark"
    for entry in Path(f"~{fleet.info.user}").expanduser().glob("mark"):
        pytest.fail(f"{entry} written on a lab host landed in the real home")


def test_down_leaves_no_mounts_and_no_daemons(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=2, private_fs=True)
    hosts = fleet.info.as_hosts()
    assert on(hosts, service.start(SERVICE, sudo=True)).ok
    status = on(hosts, service.status(SERVICE))
    pids = [r.data.pid for r in status.results]
    assert all(pids), status.results
    namespaces = {mount_namespace(p) for p in pids}
    assert None not in namespaces and mount_namespace(os.getpid()) not in namespaces
    fleet.down()
    for pid in pids:  # the daemons left sshd's process tree, not the host
        assert not Path(f"/proc/{pid}").exists() or mount_namespace(pid) not in namespaces
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(fleet.root) not in mounts
    left = [e.name for e in os.scandir("/proc")
            if e.name.isdigit() and mount_namespace(int(e.name)) in namespaces]
    assert left == []


def test_shared_fs_lab_still_has_private_run(lab_factory: LabFactory) -> None:
    """--shared-fs: /tmp is the controller's (what older tests rely on), /run is not."""
    fleet = lab_factory(hosts=1)
    name = f"/tmp/reops-shared-{secrets.token_hex(6)}"
    try:
        assert on(fleet.info.as_hosts(), exec_(f"echo x > {name}; ls /run")).ok
        assert Path(name).exists()
    finally:
        Path(name).unlink(missing_ok=True)


# -- sudo ---------------------------------------------------------------------------------

def test_sudo_works_on_the_lab(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "web1", "--sudo", "--no-hub", "-o", "json",
              "--", "id", "-u")
    assert p.returncode == 0, p.stderr
    assert '"out":"0\\n"' in p.stdout.replace(" ", "")


def test_the_sudoers_drop_in_is_checked_and_only_on_lab_hosts(lab: LabInfo) -> None:
    drop_in = lab.root / "etc" / "sudoers.d" / "reops-lab"
    assert subprocess.run(["visudo", "-cf", str(drop_in)], capture_output=True).returncode == 0
    assert not Path("/etc/sudoers.d/reops-lab").exists()  # the machine's sudo: untouched
    assert oct(lab.become_pass_file.stat().st_mode & 0o777) == "0o600"  # type: ignore[union-attr]


# -- services -----------------------------------------------------------------------------

def test_sysv_service_state_is_per_host(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=2)
    hosts = fleet.info.as_hosts()
    web1 = Hosts([h for h in hosts if h.name == "web1"])
    started = on(web1, service.start(SERVICE, sudo=True))
    assert started.ok and started.results[0].changed is True
    assert started.results[0].data == "sysv"
    assert on(web1, service.start(SERVICE, sudo=True)).results[0].changed is False
    status = by_host(on(hosts, service.status(SERVICE)))
    [other] = [n for n in status if n != "web1"]
    up, down = status["web1"].data, status[other].data  # type: ignore[attr-defined]
    assert (up.init, up.active, up.state) == ("sysv", True, "running") and up.pid
    assert (down.active, down.state, down.pid) == (False, "stopped", None)
    reloaded = on(web1, service.reload(SERVICE, sudo=True))
    assert reloaded.ok and reloaded.results[0].changed is True
    stopped = on(web1, service.stop(SERVICE, sudo=True))
    assert stopped.ok and stopped.results[0].changed is True
    assert on(web1, service.status(SERVICE)).results[0].data.active is False


def test_service_needs_sudo_to_start(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=1)
    out = on(fleet.info.as_hosts(), service.start(SERVICE))
    assert not out.ok  # the lab user may not write /run: as on a real host


def test_service_cli_on_the_lab(lab: LabInfo) -> None:
    p = reops("service", "status", "-i", str(lab.inventory), "web2", SERVICE, "--no-hub",
              "-o", "json")
    assert p.returncode == 0, p.stderr
    assert '"init":"sysv"' in p.stdout.replace(" ", "")


def test_sysv_status_parser() -> None:
    out = "::reops:: init\nsysv\n::reops:: status\nId=webapp\nSysV=0\nEnabled=no\nMainPID=77\n"
    assert service.parse_status("webapp", out) == service.ServiceStatus(
        name="webapp", init="sysv", active=True, state="running", enabled=False, pid=77)
    dead = out.replace("SysV=0", "SysV=1")
    assert service.parse_status("webapp", dead).state == "dead"
    assert service.parse_status("webapp", dead).pid is None


# -- where the lab cannot do this -----------------------------------------------------------

def test_without_sudo_installed_the_lab_comes_up_with_a_note(
        lab_factory: LabFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from reops.lab import sudo as labsudo

    monkeypatch.setattr(labsudo, "missing", lambda: "lab: sudo not installed: no sudo")
    fleet = lab_factory(hosts=1, private_fs=True)
    assert "lab: sudo not installed: no sudo" in fleet.notes
    assert fleet.info.become_user is None
    assert on(fleet.info.as_hosts(), exec_("cat /etc/motd")).ok  # still its own files


def test_as_a_normal_user_the_lab_shares_the_filesystem_and_says_so() -> None:
    base = Path(tempfile.mkdtemp(prefix="reops-nobody-lab-", dir="/tmp"))  # nobody reaches it
    base.chmod(0o777)
    root = base / "lab"
    with socket.socket() as s:
        s.bind(("127.0.252.1", 0))
        port = s.getsockname()[1]
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 sys.executable, "-m", "reops", "lab"]
    up = subprocess.run([*as_nobody, "up", "--dir", str(root), "--hosts", "1", "--port",
                         str(port), "--first-address", "127.0.252.1", "--no-names"],
                        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        assert ("lab: not root: the hosts share this machine's filesystem and have no sudo "
                "and no services") in up.stderr
        assert "Traceback" not in up.stderr
    finally:
        down = subprocess.run([*as_nobody, "down", "--dir", str(root)], capture_output=True,
                              text=True, timeout=300)
        assert down.returncode == 0, down.stderr
        shutil.rmtree(base, ignore_errors=True)


# -- root on a lab host is root on this machine: it must not change the machine -------------

CAP_SYS_ADMIN, CAP_SYS_BOOT = 21, 22


def test_root_on_a_lab_host_cannot_change_the_machine(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=2)  # a shared filesystem: the riskier case
    hosts = fleet.info.as_hosts()
    web1 = Hosts([h for h in hosts if h.name == "web1"])
    mark = f"reops-lab-{secrets.token_hex(4)}"
    out = on(web1, exec_(f"touch /usr/{mark}; echo x > /etc/{mark}.conf && cat /etc/{mark}.conf;"
                         f" mkdir -p /opt/{mark}; grep CapBnd /proc/self/status", sudo=True))
    [r] = out.results
    assert "Read-only file system" in r.err
    assert not Path(f"/usr/{mark}").exists()
    # /etc and /opt are the host's own copies: writable, invisible elsewhere
    assert r.out.startswith("x\n") and not Path(f"/etc/{mark}.conf").exists()
    assert not Path(f"/opt/{mark}").exists()
    others = on(hosts, exec_(f"cat /etc/{mark}.conf"))
    assert [x.host for x in others.successful] == ["web1"]
    bounding = int(r.out.split()[-1], 16)
    assert not bounding & (1 << CAP_SYS_BOOT) and not bounding & (1 << CAP_SYS_ADMIN)
    assert bounding & 1  # CAP_CHOWN: root is still root for the host's own files


def test_a_new_lab_in_the_same_directory_starts_clean(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=1, private_fs=True)
    hosts = fleet.info.as_hosts()
    assert on(hosts, exec_("echo old > /etc/reops-old.conf; echo old > /tmp/old",
                           sudo=True)).ok
    fleet.down()
    fleet.up()  # new keys: a fresh process reads them
    p = reops("exec", "-i", str(fleet.info.inventory), "--no-hub", "all", "-o", "json", "--",
              "ls /etc/reops-old.conf /tmp/old")
    assert p.returncode == 1, p.stderr
    for gone in ("/etc/reops-old.conf", "/tmp/old"):
        assert f"cannot access '{gone}': No such file or directory" in p.stdout
