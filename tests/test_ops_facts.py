"""Facts: one script, one parser; captured Debian 12 output, an Alpine sample, a live run."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

import msgspec
import polars as pl
import pytest

from reops.core.model import Host
from reops.ops import facts
from reops.ops.text import markers

DATA = Path(__file__).parent / "data" / "ops"
HOST = Host(name="h1", address="10.0.0.1")


@pytest.mark.parametrize(("parts", "sections"), [
    ((), ["clock", "os-release", "uname", "cpu", "meminfo", "disks",
          "links", "addrs", "routes", "links", "procroute",  # with iproute2 / without
          "passwd", "uptime"]),
    (("os",), ["clock", "os-release", "uname"]),
    (("uptime", "users"), ["clock", "passwd", "uptime"]),  # always in the canonical order
])
def test_one_script_with_the_asked_sections(parts: tuple[str, ...], sections: list[str]) -> None:
    cmd = facts.facts(*parts).command_for(HOST)
    printed = [line.strip()[len('echo "'):-1] for line in cmd.splitlines()
               if line.strip().startswith('echo "')]
    assert markers("\n".join(printed)) == sections


def test_unknown_part_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fact parts"):
        facts.facts("os", "gpu")


def test_parse_real_debian12() -> None:
    f = facts.parse_facts((DATA / "real-debian12-facts.txt").read_text())
    assert f.os == facts.OsInfo(id="debian", version="12",
                                name="Debian GNU/Linux 12 (bookworm)", kernel="Linux",
                                kernel_release="6.18.44-fc-v657", arch="x86_64", hostname="vm")
    assert f.hardware is not None
    assert (f.hardware.cpus, f.hardware.cpu_model) == (2, "Intel(R) Xeon(R) Processor")
    assert f.hardware.memory_bytes == 24684092 * 1024 and f.hardware.swap_bytes == 0
    assert f.hardware.disks == [facts.Disk(name="vda", size_bytes=274877906944,
                                           rotational=True)]  # zram0 (size 0) skipped
    assert f.network is not None
    assert [i.name for i in f.network.interfaces] == ["lo", "ifb0", "ifb1", "eth0"]
    eth0 = f.network.interfaces[3]
    assert (eth0.mac, eth0.mtu, eth0.state, eth0.up) == ("02:fc:00:00:00:01", 1400, "UP", True)
    assert [(a.family, a.address, a.prefix, a.scope) for a in eth0.addresses] == [
        ("inet", "192.0.2.2", 24, "global"), ("inet6", "fd00::2", 64, "global"),
        ("inet6", "fe80::fc:ff:fe00:1", 64, "link")]
    assert f.network.default_route == facts.Route(family="inet", gateway="192.0.2.1",
                                                  dev="eth0")
    assert f.network.default_route6 == facts.Route(family="inet6", gateway="fd00::1",
                                                   dev="eth0")
    assert f.users is not None and f.users[0] == facts.User(
        name="root", uid=0, gid=0, home="/root", shell="/bin/bash", gecos="root")
    assert f.uptime_s == 619.77
    assert f.collected_at == 1795780163.0 and f.boot_time == 1795779543.2


def test_parse_alpine_sample_busybox_and_sysfs_fallback() -> None:
    f = facts.parse_facts((DATA / "sample-alpine319-facts.txt").read_text())
    assert f.os is not None and (f.os.id, f.os.version, f.os.hostname) == (
        "alpine", "3.19.1", "alp1")
    assert f.hardware is not None
    assert f.hardware.disks == [facts.Disk(name="sda", size_bytes=21474836480)]
    assert f.hardware.swap_bytes == 524284 * 1024
    assert f.network is not None
    assert [(i.name, i.mac) for i in f.network.interfaces] == [
        ("lo", "00:00:00:00:00:00"), ("eth0", "02:42:ac:11:00:02")]  # eth0@if6 → eth0
    assert f.network.default_route6 is None
    assert f.users is not None
    assert [u.name for u in f.users if u.can_login] == ["root", "deploy"]


def test_only_asked_parts_are_filled() -> None:
    out = "::reops:: clock\n100\n::reops:: uptime\n42.5 80.0\n"
    f = facts.parse_facts(out)
    assert (f.os, f.hardware, f.network, f.users) == (None, None, None, None)
    assert (f.uptime_s, f.boot_time) == (42.5, 57.5)
    assert f.row() == {"uptime_s": 42.5, "boot_time": 57.5}


def test_rows_drop_into_polars() -> None:
    rows = [facts.parse_facts((DATA / name).read_text()).row()
            for name in ("real-debian12-facts.txt", "sample-alpine319-facts.txt")]
    df = pl.DataFrame(rows)
    assert df["os_id"].to_list() == ["debian", "alpine"]
    assert df["cpus"].to_list() == [2, 4]
    assert df["default_gateway"].to_list() == ["192.0.2.1", "172.17.0.1"]


def test_live_on_this_host() -> None:
    op = facts.facts()
    p = subprocess.run(["sh", "-c", op.command_for(HOST)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert op.parse is not None
    f = op.parse(p.stdout)
    assert f.os is not None and f.hardware is not None and f.network is not None
    assert f.os.kernel_release == platform.release()
    assert f.os.hostname == socket.gethostname()
    assert f.hardware.cpus == len(os.sched_getaffinity(0))
    assert f.hardware.memory_bytes > 0
    assert any(i.name == "lo" for i in f.network.interfaces)
    assert f.users and f.users[0].uid == 0
    assert f.uptime_s and f.uptime_s > 0
    msgspec.json.encode(f)  # the data crosses the wire as is


def test_without_iproute2_interfaces_come_from_sysfs(tmp_path: Path) -> None:
    """Minimal images (debian:12 in docker) have no `ip`: same interfaces, IPv4 route."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("sh", "cat", "uname", "hostname", "nproc", "grep", "lsblk", "tr", "getent",
                 "date"):
        path = shutil.which(tool)
        if path:
            (bin_ / tool).symlink_to(path)
    op = facts.facts("network")
    assert op.parse is not None
    full = op.parse(subprocess.run(["sh", "-c", op.command_for(HOST)], capture_output=True,
                                   text=True, timeout=60).stdout)
    p = subprocess.run([str(bin_ / "sh"), "-c", op.command_for(HOST)], capture_output=True,
                       text=True, env={"PATH": str(bin_)}, timeout=60)
    assert p.returncode == 0, p.stderr
    bare = op.parse(p.stdout)
    assert full.network is not None and bare.network is not None
    assert sorted(i.name for i in bare.network.interfaces) == sorted(
        i.name for i in full.network.interfaces)
    assert {i.name: (i.mac, i.mtu, i.up) for i in bare.network.interfaces} == {
        i.name: (i.mac, i.mtu, i.up) for i in full.network.interfaces}
    assert bare.network.default_route == full.network.default_route
