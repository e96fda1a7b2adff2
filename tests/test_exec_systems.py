"""`reops exec --systems`: ops on machines from the systems store, through the Hosts bridge."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RECIPE = """
from reops import exec_, then

def provision(hosts, greeting="hello"):
    return exec_(hosts, f"echo {greeting} > /tmp/reops-provisioned-$PPID") | then(
        exec_, "cat /tmp/reops-provisioned-*; rm -f /tmp/reops-provisioned-*")
"""


#: where to try binding SSH's port before bringing a lab up on it (conftest: 127.0.252+ is free)
PROBE_ADDRESS = "127.0.252.22"


@pytest.fixture
def ssh_port_22() -> int:
    """Port 22, or a skip saying why: a registered system is reached on SSH's port 22 (systems
    carry an address, not a port), and only root (CAP_NET_BIND_SERVICE) may bind it."""
    with socket.socket() as s:
        try:
            s.bind((PROBE_ADDRESS, 22))
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                pytest.skip("needs root: a lab sshd must listen on port 22 (systems have no "
                            "port) and binding ports < 1024 is privileged")
            # anything else (in use by another session's probe): allowed; the lab will tell
    return 22


def _reops_in(home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    home.mkdir()
    config = home / "config.toml"
    config.write_text(f'[hypervisors.rack]\nkind = "physical"\n[ssh]\nkey = "{home}/key"\n')
    env = {**os.environ, "REOPS_HOME": str(home), "REOPS_CONFIG": str(config)}

    def reops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                              text=True, env=env, timeout=120)

    return reops


def test_exec_on_a_registered_physical_system(lab_factory: Callable[..., Any], tmp_path: Path,
                                             ssh_port_22: int) -> None:
    fleet = lab_factory(hosts=1, base_port=ssh_port_22)  # systems: an address, not a port
    info = fleet.info
    [address] = info.hosts.values()
    reops = _reops_in(tmp_path / "home")

    reg = reops("systems", "register", "box1", "--mac", "52:54:00:aa:bb:cc", "--ip", address,
                "--hypervisor", "rack", "--user", info.user)
    assert reg.returncode == 0, reg.stderr
    p = reops("exec", "--systems", "box1", "--key", str(info.key),
              "--known-hosts", str(info.known_hosts), "-o", "json", "--", "echo", "hi")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["hosts"] == ["box1"] and doc["successful"][0]["out"] == "hi\n"
    none = reops("exec", "--systems", "nothing*", "--", "true")
    assert none.returncode == 2 and "nothing" in none.stderr


def test_provisioning_runs_the_types_recipe(lab_factory: Callable[..., Any], tmp_path: Path,
                                            ssh_port_22: int) -> None:
    fleet = lab_factory(hosts=1, base_port=ssh_port_22)
    info = fleet.info
    [address] = info.hosts.values()
    home = tmp_path / "home"
    reops = _reops_in(home)
    (home / "key").write_bytes(info.key.read_bytes())
    (home / "key").chmod(0o600)
    recipe = tmp_path / "web.py"
    recipe.write_text(RECIPE)
    known = f"known_hosts = \"{info.known_hosts}\"\n"
    (home / "config.toml").write_text((home / "config.toml").read_text() + known)
    assert reops("types", "add", "web", "-p", str(recipe), "--arg", "greeting=hi-there"
                 ).returncode == 0
    assert reops("systems", "register", "box2", "--mac", "52:54:00:aa:bb:cd", "--ip", address,
                 "--hypervisor", "rack", "--user", info.user, "--type", "web").returncode == 0
    p = reops("systems", "provision", "box2", "--force")
    assert p.returncode == 0, p.stdout + p.stderr
    job_id = reops("jobs", "ls").stdout.splitlines()[1].split()[0]
    job = json.loads(reops("jobs", "show", job_id).stdout.split("\n  queued")[0])
    assert job["op"] == "provision" and job["state"] == "succeeded"
    assert job["result"]["out"] == "hi-there\n"  # the type's --arg reached the recipe
    bad = tmp_path / "bad.py"
    bad.write_text("def provision(hosts):\n    from reops import exec_\n"
                   "    return exec_(hosts, 'exit 3')\n")
    assert reops("types", "add", "broken", "-p", str(bad)).returncode == 0
    assert reops("systems", "register", "box3", "--mac", "52:54:00:aa:bb:ce", "--ip", address,
                 "--hypervisor", "rack", "--user", info.user, "--type", "broken"
                 ).returncode == 0
    failed = reops("systems", "provision", "box3", "--force")
    assert failed.returncode == 1
    assert "provisioning with" in failed.stdout + failed.stderr


def test_a_system_without_an_address_counts_as_not_reached(
        lab_factory: Callable[..., Any], tmp_path: Path, ssh_port_22: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A selected guest with no address (stopped, booting) is not run on and
    never looked up in DNS: it is a host not reached, so exit 1 as for an unreachable host,
    and `-o json` lists it under "-1" with the reason, next to the box that answered."""
    from systems_fixtures import config_toml

    fleet = lab_factory(hosts=1, base_port=ssh_port_22)
    info = fleet.info
    [address] = info.hosts.values()
    home = tmp_path / "home"
    reops = _reops_in(home)
    config_toml(home, extra=f'[ssh]\nkey = "{home}/key"\n')
    assert reops("types", "add", "web").returncode == 0
    made = reops("systems", "create", "web", "--hostname", "guest1")
    assert made.returncode == 0, made.stdout + made.stderr
    _stopped_in_store(home, "guest1", monkeypatch)  # the test driver's domain lives per process
    reg = reops("systems", "register", "box1", "--mac", "52:54:00:aa:bb:cf", "--ip", address,
                "--hypervisor", "rack", "--user", info.user)
    assert reg.returncode == 0, reg.stderr
    p = reops("exec", "--systems", "box1,guest1", "--key", str(info.key),
              "--known-hosts", str(info.known_hosts), "-o", "json", "--", "echo", "hi")
    assert p.returncode == 1, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert sorted(doc["hosts"]) == ["box1", "guest1"]
    assert [r["host"] for r in doc["successful"]] == ["box1"]
    [skipped] = doc["failure"]["-1"]
    assert skipped["host"] == "guest1" and skipped["status"] == "unreachable"
    assert "no address" in skipped["err"] and "reops systems start" in skipped["err"]
    assert "guest1: no address" in p.stderr
    retried = reops("exec", "--systems", "box1,guest1", "--key", str(info.key),
                    "--known-hosts", str(info.known_hosts), "--retry", "1", "--", "true")
    assert retried.returncode == 1, retried.stdout + retried.stderr
    # every op command reports it the same way (one shared mechanism: run_on_fleet)
    facts = reops("facts", "--systems", "box1,guest1", "--key", str(info.key),
                  "--known-hosts", str(info.known_hosts), "-o", "json", "all", "os")
    assert facts.returncode == 1, facts.stdout + facts.stderr
    doc = json.loads(facts.stdout)
    assert sorted(doc["hosts"]) == ["box1", "guest1"]
    assert [r["host"] for r in doc["successful"]] == ["box1"]
    [skipped] = doc["failure"]["-1"]
    assert (skipped["host"], skipped["op"], skipped["status"]) == (
        "guest1", "facts", "unreachable")
    assert "no address" in skipped["err"] and "guest1: no address" in facts.stderr
    # metrics --every too: guest1's row once, box1 sampled until --count, then exit 1
    watch = reops("metrics", "--systems", "box1,guest1", "--key", str(info.key),
                  "--known-hosts", str(info.known_hosts), "-o", "jsonl", "all", "load",
                  "--every", "0.2", "--count", "1")
    assert watch.returncode == 1, watch.stdout + watch.stderr
    rows = {r["host"]: r for r in map(json.loads, watch.stdout.splitlines())}
    assert rows["box1"]["status"] == "ok" and rows["guest1"]["status"] == "unreachable"


def _stopped_in_store(home: Path, hostname: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mark `hostname` stopped with no address in the store, as `systems stop` leaves it."""
    import msgspec

    from reops.store.engines import open_machines

    monkeypatch.setenv("REOPS_HOME", str(home))
    monkeypatch.setenv("REOPS_CONFIG", str(home / "config.toml"))
    store = open_machines()
    try:
        [s] = [x for x in store.systems() if x.hostname == hostname]
        store.put_system(msgspec.structs.replace(
            s, state="stopped", machine=msgspec.structs.replace(s.machine, ip=None)))
    finally:
        store.close()


def test_only_systems_without_an_address_count_as_not_reached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every selected system lacks an address: each is reported as not reached (exit 1, under
    "-1" in `-o json`), as when some others have one, not "matched no machines" (exit 2);
    a selector matching no system at all still exits 2."""
    from systems_fixtures import config_toml

    home = tmp_path / "home"
    reops = _reops_in(home)
    config_toml(home, extra=f'[ssh]\nkey = "{home}/key"\n')
    assert reops("types", "add", "web").returncode == 0
    for name in ("guest1", "guest2"):
        made = reops("systems", "create", "web", "--hostname", name)
        assert made.returncode == 0, made.stdout + made.stderr
        _stopped_in_store(home, name, monkeypatch)
    p = reops("exec", "--systems", "guest*", "-o", "json", "--", "echo", "hi")
    assert p.returncode == 1, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert sorted(doc["hosts"]) == ["guest1", "guest2"] and doc["successful"] == []
    skipped = sorted(doc["failure"]["-1"], key=lambda r: r["host"])
    assert [r["host"] for r in skipped] == ["guest1", "guest2"]
    assert all(r["status"] == "unreachable" and "no address" in r["err"] for r in skipped)
    pretty = reops("exec", "--systems", "guest1", "--", "true")
    assert pretty.returncode == 1, pretty.stdout + pretty.stderr
    assert "guest1: no address" in pretty.stderr and "matched no" not in pretty.stderr
    retried = reops("exec", "--systems", "guest*", "--retry", "1", "--rolling", "1",
                    "--", "true")
    assert retried.returncode == 1, retried.stdout + retried.stderr
    none = reops("exec", "--systems", "nothing*", "--", "true")
    assert none.returncode == 2 and "nothing" in none.stderr
    # every op command: the same rows and exit codes as exec (run_on_fleet reports them)
    for op in (("facts", "all", "os"), ("pkg", "installed", "all", "bash"),
               ("service", "status", "all", "sshd"), ("files", "mkdir", "all", "/tmp/x")):
        words = op[:2] if op[0] in ("pkg", "service", "files") else op[:1]
        got = reops(*words, "--systems", "guest*", "-o", "json", *op[len(words):])
        assert got.returncode == 1, (op, got.stdout + got.stderr)
        doc = json.loads(got.stdout)
        skipped = sorted(doc["failure"]["-1"], key=lambda r: r["host"])
        assert [(r["host"], r["op"], r["status"]) for r in skipped] == [
            ("guest1", ".".join(words), "unreachable"), ("guest2", ".".join(words),
                                                         "unreachable")], op
    watch = reops("metrics", "--systems", "guest*", "-o", "jsonl", "all", "load", "--every",
                  "1")  # nothing to sample: the not-reached rows once, no endless wait
    assert watch.returncode == 1, watch.stdout + watch.stderr
    assert sorted((r["host"], r["status"]) for r in map(json.loads, watch.stdout.splitlines())
                  ) == [("guest1", "unreachable"), ("guest2", "unreachable")]
    table = reops("metrics", "--systems", "guest*", "all", "load", "--every", "1")
    assert table.returncode == 1 and "guest2" in table.stdout, table.stdout + table.stderr
    none = reops("facts", "--systems", "nothing*", "all")
    assert none.returncode == 2 and "nothing" in none.stderr
