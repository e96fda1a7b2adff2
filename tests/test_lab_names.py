"""Lab hosts have names that resolve locally (an /etc/hosts block per lab), and lose them.

Negative lookups run in a child process inside a fresh, empty network namespace: a name
missing from /etc/hosts would otherwise be asked of the machine's real DNS server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from reops.lab import names
from reops.lab.fleet import Lab, LabInfo
from reops.lab.procs import wait_exit
from tests.conftest import LabFactory, as_nobody, crashed_lab, free_port, lab_down_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lab names need root (/etc/hosts)")

RESOLVE = """
import socket, sys
try:
    print(socket.getaddrinfo(sys.argv[1], 22, socket.AF_INET)[0][4][0])
except socket.gaierror:
    print("-")
"""


def resolve_offline(name: str) -> str | None:
    """The address `name` resolves to from local files only, None when it does not."""
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", RESOLVE, name],
        capture_output=True, text=True, check=True, timeout=30,
    )
    out = done.stdout.strip()
    return None if out == "-" else out


def ssh(lab: Lab, target: str, known_hosts: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """OpenSSH's client with strict host key checking against `known_hosts` only."""
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-p", str(lab.port), "-i", str(lab.info.key),
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "CheckHostIP=no",
         f"{lab.user}@{target}", *cmd],
        capture_output=True, text=True, timeout=60, check=False,
    )


def names_only(lab: Lab, path: Path) -> Path:
    """The lab's known_hosts with only the name patterns (no IPs): a match must be by name."""
    lines = []
    for line in lab.info.known_hosts.read_text().splitlines():
        patterns, rest = line.split(" ", 1)
        kept = [p for p in patterns.split(",") if not p.startswith("[127.")]
        assert kept, line
        lines.append(f"{','.join(kept)} {rest}\n")
    path.write_text("".join(lines))
    return path


def test_names_resolve_while_up_and_are_gone_after_down(lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=3, names=True)
    info = lab.info
    assert set(info.names) == set(info.hosts)
    for host, fqdn in info.names.items():
        assert fqdn == f"{host}.{lab.lab_id}.lab.reops.test"
        assert socket.getaddrinfo(fqdn, lab.port, socket.AF_INET)[0][4][0] == info.hosts[host]
        assert resolve_offline(fqdn) == info.hosts[host]
    inventory = tomllib.loads(info.inventory.read_text())
    assert {h: v["address"] for h, v in inventory["hosts"].items()} == dict(info.names)
    known = info.known_hosts.read_text()
    for fqdn in info.names.values():
        assert f"[{fqdn}]:{lab.port}," in known  # as ssh writes it: [name]:port
    assert names.blocks()[str(lab.root)] == {info.names[h]: a for h, a in info.hosts.items()}

    lab.down()
    assert str(lab.root) not in names.blocks()
    for fqdn in info.names.values():
        assert resolve_offline(fqdn) is None
        assert fqdn not in Path("/etc/hosts").read_text()


def test_two_labs_at_once_never_collide(lab_factory: LabFactory) -> None:
    one, two = lab_factory(hosts=1, names=True), lab_factory(hosts=1, names=True)
    n1, n2 = one.info.names["web1"], two.info.names["web1"]
    assert n1 != n2
    assert resolve_offline(n1) == one.hosts["web1"]
    assert resolve_offline(n2) == two.hosts["web1"]
    one.down()
    assert resolve_offline(n1) is None
    assert resolve_offline(n2) == two.hosts["web1"]  # the other lab's block is untouched


def test_ssh_reaches_a_host_by_name_with_strict_host_keys(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=2, names=True)
    known = names_only(lab, tmp_path / "known_hosts")
    fqdn = lab.info.names["cache1"]
    done = ssh(lab, fqdn, known, "echo", "hi")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    # the name is what matched: another host's key under that name is refused
    other = known.read_text().replace(fqdn, "elsewhere.test").replace(
        lab.info.names["web1"], fqdn
    )
    (tmp_path / "swapped").write_text(other)
    refused = ssh(lab, fqdn, tmp_path / "swapped", "true")
    assert refused.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr


def test_reops_exec_reaches_hosts_by_name(lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lab_factory(hosts=3, names=True)
    names_only(lab, lab.info.known_hosts)  # reops must match the names, not the IPs
    done = subprocess.run(
        [sys.executable, "-m", "reops", "exec", "-i", str(lab.info.inventory), "--no-hub", "all",
         "--output", "json", "--", "echo", "ok"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert sorted(r["host"] for r in doc["successful"]) == sorted(lab.hosts)
    assert {r["out"] for r in doc["successful"]} == {"ok\n"}


def test_a_crashed_labs_block_is_cleaned_by_down_and_by_the_next_up(tmp_path: Path) -> None:
    root = tmp_path / "crashed"
    port = free_port("127.0.254.1")
    with crashed_lab(root, "info.names['web1']", hosts=2, base_port=port,
                     first_address="127.0.254.1", names=True) as first:
        assert resolve_offline(first) == "127.0.254.1"  # the crash left the block behind

        lab_down_cli(root)
        assert resolve_offline(first) is None
        assert str(root) not in names.blocks()

        # a crash of everything (sshd's too) leaves state and block; the next up replaces both
        again = Lab(root, hosts=2, base_port=port, first_address="127.0.254.1", names=True)
        again.up()
        fds = {}
        for pid in again.pids.values():
            assert pid is not None
            fds[os.pidfd_open(pid)] = pid
            os.kill(pid, signal.SIGKILL)
        wait_exit(fds, 30)  # reaps them too: they were this process's children
        third = Lab(root, hosts=2, base_port=port, first_address="127.0.254.1", names=True)
        third.up()
        try:
            assert list(names.blocks()).count(str(root)) == 1
            assert resolve_offline(again.names["web1"]) is None
            assert resolve_offline(third.names["web1"]) == "127.0.254.1"
        finally:
            third.down()
        assert str(root) not in names.blocks()


def test_blocks_of_vanished_labs_are_dropped_and_others_kept(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    alive, gone = tmp_path / "alive", tmp_path / "gone"
    alive.mkdir()
    (alive / "state.json").write_text("{}")
    names.write_block(gone, "aa", {"web1.aa.lab.reops.test": "127.0.1.1"}, hosts)
    names.write_block(alive, "bb", {"web1.bb.lab.reops.test": "127.0.2.1"}, hosts)
    # `gone` has no state.json: the next lab's write drops its block, `alive` keeps its own
    assert list(names.blocks(hosts)) == [str(alive)]
    names.write_block(alive, "cc", {"web1.cc.lab.reops.test": "127.0.3.1"}, hosts)
    assert names.blocks(hosts) == {str(alive): {"web1.cc.lab.reops.test": "127.0.3.1"}}
    assert hosts.read_text().startswith("127.0.0.1 localhost\n# >>> reops lab ")
    assert names.remove_block(alive, hosts)
    assert hosts.read_text() == "127.0.0.1 localhost\n"
    assert not names.remove_block(alive, hosts)


def test_without_root_the_lab_keeps_ips_and_says_so(tmp_path: Path) -> None:
    def make() -> str:
        lab = Lab(tmp_path / "unprivileged", hosts=1, names=True)
        return f"{lab.named}|{'; '.join(lab.notes)}"

    named, notes = as_nobody(make).split("|")
    assert named == "False"
    assert "names need root" in notes


def test_the_named_lab_fixture_is_reached_by_name(named_lab: LabInfo) -> None:
    inventory = tomllib.loads(named_lab.inventory.read_text())
    assert {h: v["address"] for h, v in inventory["hosts"].items()} == dict(named_lab.names)
    done = subprocess.run(
        [sys.executable, "-m", "reops", "exec", "-i", str(named_lab.inventory), "--no-hub", "all",
         "--output", "json", "--", "echo", "$SSH_CONNECTION"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    # each host answered on its own address: the name led to the right sshd
    seen = {r["host"]: r["out"].split()[2] for r in doc["successful"]}
    assert seen == dict(named_lab.hosts)


@pytest.mark.parametrize("address", ["10.0.0.1", "127.0.0.1", "web1"])
def test_cli_refuses_a_first_address_off_loopback_in_one_line(
    tmp_path: Path, address: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reops", "lab", "up", "--dir", str(tmp_path / "lab"),
         "--hosts", "1", "--first-address", address],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--first-address" in done.stderr, done.stderr
    assert not (tmp_path / "lab" / "state.json").exists()


def test_cli_up_and_status_show_the_names(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    port = free_port("127.0.253.1")
    up = subprocess.run(
        [sys.executable, "-m", "reops", "lab", "up", "--dir", str(root), "--hosts", "2",
         "--first-address", "127.0.253.1", "--port", str(port)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    try:
        assert up.returncode == 0, up.stderr
        lab = Lab.load(root)
        assert lab.named and lab.names["web1"].endswith(".lab.reops.test")
        status = subprocess.run(
            [sys.executable, "-m", "reops", "lab", "status", "--dir", str(root)],
            capture_output=True, text=True, timeout=60, check=True,
        )
        assert f"up   web1 {lab.names['web1']} (127.0.253.1:{port})" in status.stdout
    finally:
        subprocess.run([sys.executable, "-m", "reops", "lab", "down", "--dir", str(root)],
                       capture_output=True, timeout=120, check=False)
    assert str(root) not in names.blocks()
