"""Bastion mode: the targets answer only through the bastion (a network namespace the lab
creates), so reaching them proves the jump was really used."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from reops.lab import bastion as jumps
from reops.lab import names as hostnames
from reops.lab.fleet import Lab, LabError, LabInfo
from reops.lab.procs import pidfd, wait_exit
from tests.conftest import LabFactory, as_nobody, crashed_lab, free_port, lab_down_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bastion mode needs root (netns)")

TARGETS = ("web1", "db1", "cache1")


def ssh(info: LabInfo, *args: str) -> subprocess.CompletedProcess[str]:
    """OpenSSH's client on the lab's own ssh_config (strict host keys, the lab's key only)."""
    assert info.ssh_config is not None
    return subprocess.run(["ssh", "-F", str(info.ssh_config), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def reops_exec(inventory: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reops", "exec", "-i", str(inventory), "--no-hub", "all",
         "--output", "json", "--", *cmd],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_targets_refuse_direct_connections_and_answer_through_the_bastion(
    bastion_lab: LabInfo,
) -> None:
    info = bastion_lab
    assert info.bastion == "bastion" and list(info.hosts) == ["bastion", *TARGETS]
    with socket.create_connection((info.hosts["bastion"], info.port), timeout=10) as s:
        assert s.recv(4).startswith(b"SSH-")
    for name in TARGETS:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((info.hosts[name], info.port), timeout=10)

    # ProxyJump from the lab's ssh_config; the target sees the bastion's namespace
    done = ssh(info, "web1", "echo $SSH_CONNECTION")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[2:] == [info.hosts["web1"], str(info.port)]
    # an explicit -J, to the target's name
    done = ssh(info, "-J", "bastion", info.names["cache1"], "echo $SSH_CONNECTION")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[2] == info.hosts["cache1"]


def test_inventory_and_ssh_config_name_the_jump(bastion_lab: LabInfo) -> None:
    inventory = tomllib.loads(bastion_lab.inventory.read_text())["hosts"]
    assert "jump" not in inventory["bastion"]
    assert {n: inventory[n].get("jump") for n in TARGETS} == dict.fromkeys(TARGETS, "bastion")
    assert bastion_lab.ssh_config is not None
    config = bastion_lab.ssh_config.read_text()
    for name in TARGETS:
        assert f"Host {name}\n    HostName {bastion_lab.names[name]}\n    ProxyJump bastion\n" \
            in config


def test_reops_exec_reaches_every_target_through_the_bastion(bastion_lab: LabInfo) -> None:
    done = reops_exec(bastion_lab.inventory, "echo $SSH_CONNECTION")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    seen = {r["host"]: r["out"].split()[2] for r in doc["successful"]}
    assert seen == dict(bastion_lab.hosts)


def test_a_stopped_bastion_fails_every_target_naming_it(lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=2, bastion=True, names=True)
    lab.stop_host("bastion")
    bastion_name = lab.info.names["bastion"]
    done = reops_exec(lab.info.inventory, "true")
    assert done.returncode != 0
    failed = {r["host"]: r for rs in json.loads(done.stdout)["failure"].values() for r in rs}
    assert set(failed) == set(lab.hosts)
    for name in lab.hosts:
        assert failed[name]["status"] == "unreachable"
        assert bastion_name in failed[name]["err"], failed[name]["err"]
    refused = ssh(lab.info, "web1", "true")
    assert refused.returncode == 255
    assert f"connect to host {bastion_name}" in refused.stderr

    lab.start_host("bastion")  # and back: the targets never went away
    assert ssh(lab.info, "web1", "true").returncode == 0


def test_down_after_the_creator_was_sigkilled_removes_namespace_and_processes(
    tmp_path: Path,
) -> None:
    root, first = tmp_path / "crashed", "127.0.254.1"
    port = free_port(first)
    with crashed_lab(root, "lab.netns", hosts=2, base_port=port, first_address=first,
                     bastion=True) as netns:
        assert jumps.netns_exists(netns)
        # everything that runs in the namespace, sessions included, must go
        session = subprocess.Popen(
            ["ssh", "-F", str(root / "ssh_config"), "web1", "echo up; exec sleep 600"],
            stdout=subprocess.PIPE, text=True)
        assert session.stdout is not None and session.stdout.readline() == "up\n"
        inside = subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                                text=True, check=True).stdout.split()
        pids = {int(p) for p in inside} | {p for p in Lab.load(root).pids.values() if p}
        fds = {fd: p for p in pids if (fd := pidfd(p)) is not None}
        assert len(fds) >= 4  # bastion shim, 2 targets, a session's sshd and its sleep

        lab_down_cli(root)
        wait_exit(fds, 30)  # returns once every one has exited (raises if some would not)
        assert not jumps.netns_exists(netns)
        assert str(root) not in hostnames.blocks()
        assert session.wait(timeout=30) != 0


def test_bastion_mode_refuses_without_root_in_one_line(tmp_path: Path) -> None:
    def make() -> str:
        try:
            Lab(tmp_path / "unprivileged", hosts=1, bastion=True)
        except LabError as e:
            return str(e)
        return "no error"

    message = as_nobody(make)
    assert message.startswith("bastion mode needs root")
    assert "\n" not in message


def test_cli_refuses_agents_behind_a_bastion_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reops", "lab", "up", "--dir", str(tmp_path / "lab"),
         "--bastion", "--agents"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--bastion" in done.stderr, done.stderr
    assert not (tmp_path / "lab").exists()


def test_as_hosts_jump_through_the_bastion_as_the_inventory_says(bastion_lab: LabInfo) -> None:
    from reops import exec_, run
    from reops.core.inventory import inventory

    hosts = bastion_lab.as_hosts()
    assert list(inventory(bastion_lab.inventory).hosts) == list(hosts)
    [bastion] = [h for h in hosts if h.name == "bastion"]
    assert bastion.jump is None
    assert all(h.jump == (bastion,) for h in hosts if h.name != "bastion")
    out = run(exec_(hosts, "echo $SSH_CONNECTION"))
    assert {r.host: r.out.split()[2] for r in out.successful} == dict(bastion_lab.hosts)
