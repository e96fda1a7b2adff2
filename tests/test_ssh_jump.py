"""Bastions (issue 10 item 3): targets that answer ONLY through a bastion (the lab's bastion
mode puts them in a network namespace), one shared bastion connection, clear failures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import msgspec
import pytest

from reops import Hosts, exec_, run
from reops.core.inventory import InventoryError, inventory, loads
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.lab.fleet import Lab
from reops.ops.shell import exec_ as shell
from reops.transports.ssh.executor import SshExecutor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bastion mode needs root (netns)")

FAST = Settings(connect_timeout=10.0, ssh_config=False)


def _bastion_lab(lab_factory, hosts: int = 3) -> Lab:  # type: ignore[no-untyped-def]
    fleet: Lab = lab_factory(hosts=hosts, bastion=True, names=True)
    return fleet


def _established(address: str, port: int) -> int:
    """TCP connections from this machine to address:port right now (ss, the kernel's view)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "dst", f"{address}:{port}"],
                         capture_output=True, text=True, check=True).stdout
    return len([ln for ln in out.splitlines() if ln.strip()])


def _run_all(ex: SshExecutor, hosts: Hosts, command: str, settings: Settings) -> list:  # type: ignore[type-arg]
    async def go() -> list:  # type: ignore[type-arg]
        import asyncio

        return list(await asyncio.gather(*(ex.run(h, shell(command), settings) for h in hosts)))

    return get_runtime().call(go())


def test_targets_behind_one_bastion_share_one_connection(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """Old code: `jump` was not an inventory field, and targets are unreachable directly."""
    fleet = _bastion_lab(lab_factory, hosts=4)
    info = fleet.info
    inv = inventory(info.inventory)
    targets = inv.select("!bastion")
    assert len(targets) == 4 and all(h.jump for h in targets)
    ex = SshExecutor(FAST)
    try:
        results = _run_all(ex, targets, "echo $SSH_CONNECTION", FAST)
        assert [r.status for r in results] == ["ok"] * 4, [r.err for r in results]
        # each target saw the connection arrive on its own address, which exists only in the
        # lab's namespace: the bytes went through the bastion
        seen = {r.host: r.out.split()[2] for r in results}
        assert seen == {h.name: info.hosts[h.name] for h in targets}
        # 4 targets, exactly one TCP connection to the bastion (pooled, still open)
        assert _established(info.hosts["bastion"], info.port) == 1
        again = _run_all(ex, targets, "true", FAST)
        assert [r.status for r in again] == ["ok"] * 4
        assert _established(info.hosts["bastion"], info.port) == 1
    finally:
        get_runtime().call(ex.close())
    # and without the jump the very same hosts cannot be reached at all
    direct = Hosts(msgspec.structs.replace(h, jump=()) for h in targets)
    out = run(exec_(direct, "true", settings=FAST))
    assert all(r.status == "unreachable" and "refused" in r.err for r in out.results)


def test_proxyjump_from_ssh_config(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An inventory of bare names; the lab's ssh_config gives HostName, User, keys and
    ProxyJump bastion (whose own entry is direct)."""
    fleet = _bastion_lab(lab_factory)
    info = fleet.info
    assert info.ssh_config is not None
    inv = tmp_path / "inventory.toml"
    inv.write_text("".join(f"[hosts.{n}]\n" for n in fleet.hosts if n != "bastion"))
    out = run(exec_(inventory(inv).select("all"), "echo $SSH_CONNECTION",
                    settings=FAST.with_(ssh_config=str(info.ssh_config))))
    assert out.ok, [r.err for r in out.results]
    assert {r.host: r.out.split()[2] for r in out.results} == {
        n: a for n, a in info.hosts.items() if n != "bastion"}


def test_down_bastion_fails_each_host_naming_it(lab_factory) -> None:  # type: ignore[no-untyped-def]
    fleet = _bastion_lab(lab_factory)
    fleet.stop_host("bastion")
    targets = inventory(fleet.info.inventory).select("!bastion")
    out = run(exec_(targets, "true", settings=FAST))
    assert len(out.results) == 3
    for r in out.results:
        assert r.status == "unreachable", r.err
        assert r.err.startswith(f"bastion bastion for {r.host} is unreachable: ")
        assert "connection refused" in r.err


def test_chain_of_two_bastions(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """jump = ["bastion", "web1"]: client -> bastion -> web1 -> the target."""
    fleet = _bastion_lab(lab_factory)
    [web, second] = [n for n in fleet.hosts if n != "bastion"][:2]
    head, sep, block = fleet.info.inventory.read_text().partition(f"[hosts.{second}]\n")
    text = head + sep + block.replace('jump = "bastion"', f'jump = ["bastion", "{web}"]', 1)
    host = loads(text, fleet.info.inventory.parent / "chain.toml")[second]
    assert [j.name for j in host.jump or ()] == ["bastion", web]
    out = run(exec_(host, "echo $SSH_CONNECTION", settings=FAST))
    assert out.ok, out.results[0].err
    assert out.results[0].out.split()[2] == fleet.hosts[second]


def test_proxy_command(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ProxyCommand runs as ssh runs it: here nc inside the namespace is the only way in."""
    fleet = _bastion_lab(lab_factory, hosts=1)
    info = fleet.info
    [target] = [n for n in fleet.hosts if n != "bastion"]
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host {target}\n  HostName {info.hosts[target]}\n"
        f"  ProxyCommand ip netns exec {fleet.netns} nc %h %p\n"
        f"Host *\n  Port {info.port}\n  User {info.user}\n  IdentityFile {info.key}\n"
        f"  UserKnownHostsFile {info.known_hosts}\n")
    inv = tmp_path / "inventory.toml"
    inv.write_text(f"[hosts.{target}]\n")
    out = run(exec_(inventory(inv).select("all"), "echo $SSH_CONNECTION",
                    settings=FAST.with_(ssh_config=str(cfg))))
    assert out.ok, out.results[0].err
    assert out.results[0].out.split()[2] == info.hosts[target]


def test_jump_loops_and_bad_specs_are_inventory_errors(tmp_path: Path) -> None:
    p = tmp_path / "inv.toml"
    with pytest.raises(InventoryError, match=r"inv.toml:5: host 'b': jump loops: a -> b -> a"):
        loads('[hosts.a]\naddress = "x"\njump = "b"\n[hosts.b]\njump = "a"\n', p)
    with pytest.raises(InventoryError, match=r"inv.toml:2: host 'a': jump 'u@h:port' is not"):
        loads('[hosts.a]\njump = "u@h:port"\n', p)
    # a host never jumps through itself: defaults may name the bastion
    inv = loads('[defaults]\njump = "b"\n[hosts.a]\n[hosts.b]\n', p)
    assert [j.name for j in inv["a"].jump or ()] == ["b"] and inv["b"].jump == ()


def test_inventory_jump_to_an_ssh_config_alias(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`jump = "gate"` where only ssh_config knows `gate` (its HostName): as ssh -J gate."""
    fleet = _bastion_lab(lab_factory, hosts=2)
    info = fleet.info
    assert info.ssh_config is not None
    text = info.inventory.read_text().replace('jump = "bastion"', 'jump = "gate"')
    inv = info.inventory.with_name("alias.toml")
    inv.write_text(text)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host gate\n    HostName {info.names['bastion']}\n\n"
                   + info.ssh_config.read_text())
    targets = inventory(inv).select("!bastion")
    out = run(exec_(targets, "echo $SSH_CONNECTION", settings=FAST.with_(ssh_config=str(cfg))))
    assert out.ok, [r.err for r in out.results]
    assert {r.host: r.out.split()[2] for r in out.results} == {
        h.name: info.hosts[h.name] for h in targets}


def test_bastion_host_key_is_checked(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A bastion whose key known_hosts does not list fails every host behind it, clearly."""
    fleet = _bastion_lab(lab_factory, hosts=2)
    info = fleet.info
    kh = info.known_hosts.read_text().splitlines()
    bastion_name = info.names["bastion"]
    without = tmp_path / "known_hosts"
    without.write_text("".join(f"{ln}\n" for ln in kh if bastion_name not in ln.split()[0]))
    inv = inventory(info.inventory)
    hosts = Hosts(msgspec.structs.replace(
        h, known_hosts=str(without),
        jump=tuple(msgspec.structs.replace(j, known_hosts=str(without)) for j in h.jump or ()))
        for h in inv.select("!bastion"))
    out = run(exec_(hosts, "true", settings=FAST))
    assert len(out.results) == 2
    for r in out.results:
        assert r.status == "unreachable"
        assert r.err.startswith(f"bastion bastion for {r.host} is unreachable: host key of "
                                f"[{bastion_name}]:{info.port} is not in {without}"), r.err
