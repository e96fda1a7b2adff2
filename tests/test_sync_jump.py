"""`files sync` over local rsync reaches exactly the Target the executor resolved (issue 10
gaps): through a bastion, and to hosts only ssh_config knows how to reach. Real sshd, real
rsync, real ssh."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from reops.core.inventory import inventory
from reops.core.model import Host, Result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.lab.fleet import Lab, LabInfo
from reops.ops.base import Op
from reops.ops.files import sync as sync_op
from reops.ops.shell import exec_ as shell
from reops.transports.ssh.executor import SshExecutor
from reops.transports.ssh.rsync import Inexpressible, _value, sync_via, target_config

FAST = Settings(connect_timeout=10.0, command_timeout=60.0, ssh_config=False)


def _site(tmp_path: Path) -> Path:
    src = tmp_path / "site"
    (src / "css").mkdir(parents=True)
    (src / "index.html").write_text("<h1>hi</h1>\n")
    (src / "css" / "a.css").write_text("body{}\n")
    return src


def _runs(ex: SshExecutor, pairs: list[tuple[Host, Op]], settings: Settings) -> list[Result]:
    async def go() -> list[Result]:
        return list(await asyncio.gather(*(ex.run(h, op, settings) for h, op in pairs)))

    return get_runtime().call(go())


def _sync_and_check(hosts: list[Host], settings: Settings, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = _site(tmp_path)
    private = tmp_path / "tmpdir"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    remote = f"/tmp/reops-sync-jump-{os.getpid()}-{tmp_path.name}"
    ex = SshExecutor(settings)
    try:
        results = _runs(ex, [(h, sync_op(str(src), f"{remote}-{h.name}")) for h in hosts], settings)
        assert [r.status for r in results] == ["ok"] * len(hosts), [r.err for r in results]
        # the path taken: rsync (it was "failed" with rsync's ssh on the raw address before)
        assert [sync_via(r.out) for r in results] == ["rsync"] * len(hosts)
        assert all(r.changed for r in results)
        check = _runs(ex, [(h, shell(f"cat {remote}-{h.name}/css/a.css; rm -rf {remote}-{h.name}"))
                           for h in hosts], settings)
        assert [r.out for r in check] == ["body{}\n"] * len(hosts), [r.err for r in check]
    finally:
        get_runtime().call(ex.close())
    assert os.listdir(private) == []  # the private ssh_config is removed after rsync


@pytest.mark.skipif(os.geteuid() != 0, reason="bastion mode needs root (netns)")
def test_sync_through_the_bastion_uses_rsync(bastion_lab: LabInfo, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code: rsync ran `ssh -F /dev/null <target address>`, which exists only behind the
    bastion: rsync failed (exit 255)."""
    targets = [h for h in inventory(bastion_lab.inventory).select("!bastion")]
    assert targets and all(h.jump for h in targets)
    _sync_and_check(targets, FAST, tmp_path, monkeypatch)


@pytest.mark.skipif(os.geteuid() != 0, reason="bastion mode needs root (netns)")
def test_sync_through_the_bastion_of_ssh_config(bastion_lab: LabInfo, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's ssh_config (ProxyJump) and an inventory of bare names: the jump and each
    hop's settings come from ssh_config only."""
    assert bastion_lab.ssh_config is not None
    inv = tmp_path / "inventory.toml"
    names = [n for n in bastion_lab.hosts if n != bastion_lab.bastion]
    inv.write_text("".join(f"[hosts.{n}]\n" for n in names))
    hosts = list(inventory(inv).select("all"))
    _sync_and_check(hosts, FAST.with_(ssh_config=str(bastion_lab.ssh_config)), tmp_path,
                    monkeypatch)


def test_sync_to_hosts_only_ssh_config_knows(lab_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bare names; ssh_config gives HostName/Port/User/IdentityFile. Old code: rsync's ssh
    tried to resolve the bare name with -F /dev/null."""
    fleet: Lab = lab_factory(hosts=2)
    info = fleet.info
    cfg = tmp_path / "ssh_config"
    cfg.write_text("".join(f"Host {n}\n  HostName {a}\n" for n, a in fleet.hosts.items())
                   + f"Host *\n  Port {info.port}\n  User {info.user}\n"
                   f"  IdentityFile {info.key}\n  IdentitiesOnly yes\n"
                   f"  UserKnownHostsFile {info.known_hosts}\n")
    inv = tmp_path / "inventory.toml"
    inv.write_text("".join(f"[hosts.{n}]\n" for n in fleet.hosts))
    hosts = list(inventory(inv).select("all"))
    assert all(h.address == h.name for h in hosts)
    _sync_and_check(hosts, FAST.with_(ssh_config=str(cfg)), tmp_path, monkeypatch)


def test_each_hop_keeps_its_own_settings(tmp_path: Path) -> None:
    """The generated ssh_config: one block per hop, each with its resolved settings."""
    from reops.transports.ssh.target import Target

    def t(address: str, port: int, user: str, key: str, policy: str,
          via: Target | None = None) -> Target:
        return Target(address=address, port=port, user=user, keys=(key,), certs=(),
                      identities_only=True, agent=None, known_hosts=(f"/kh/{user}",),
                      policy=policy, via=via, proxy_command=None)  # type: ignore[arg-type]

    first = t("10.0.0.1", 2201, "jump1", "/k/one", "strict")
    second = t("10.0.0.2", 2202, "jump two", "/k/t%o", "accept-new", first)
    target = t("10.9.9.9", 22, "deploy", "/k/target", "off", second)
    text, alias = target_config(target, FAST)
    blocks = {b.split("\n", 1)[0]: b for b in text.split("\n\n")}
    assert alias == "reops-2" and list(blocks) == ["Host reops-0", "Host reops-1",
                                                   "Host reops-2"]
    assert "HostName 10.0.0.1\n  Port 2201\n  User jump1" in blocks["Host reops-0"]
    assert "ProxyJump" not in blocks["Host reops-0"]
    assert "StrictHostKeyChecking yes" in blocks["Host reops-0"]
    assert 'User "jump two"' in blocks["Host reops-1"]
    assert "IdentityFile /k/t%%o" in blocks["Host reops-1"]  # ssh expands %: escaped
    assert "ProxyJump reops-0" in blocks["Host reops-1"]
    assert "UserKnownHostsFile /dev/null" in blocks["Host reops-2"]
    assert "StrictHostKeyChecking no" in blocks["Host reops-2"]
    assert "ProxyJump reops-1" in blocks["Host reops-2"]
    # ssh itself reads it so: `ssh -G` prints the resolved options
    cfg = tmp_path / "cfg"
    cfg.write_text(text)
    shown = subprocess.run(["ssh", "-G", "-F", str(cfg), "reops-1"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert {"hostname 10.0.0.2", "port 2202", "user jump two", "userknownhostsfile /kh/jump two",
            "proxyjump reops-0", "stricthostkeychecking accept-new"} <= set(shown)


def test_a_path_ssh_config_cannot_carry_falls_back_to_sftp(lab_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A `"` in the key's path: ssh_config has no escape for it, so the sync takes SFTP
    over reops' own connection (it still succeeds) instead of a wrong ssh command line."""
    fleet: Lab = lab_factory()
    info = fleet.info
    odd = tmp_path / 'a "quoted" dir'
    odd.mkdir()
    key = odd / "id"
    shutil.copy(info.key, key)
    key.chmod(0o600)
    with pytest.raises(Inexpressible):
        _value(str(key))
    [(name, address)] = fleet.hosts.items()
    host = Host(name=name, address=address, port=info.port, user=info.user, key=str(key),
                known_hosts=str(info.known_hosts))
    src = _site(tmp_path)
    remote = f"/tmp/reops-sync-odd-{os.getpid()}-{tmp_path.name}"
    ex = SshExecutor(FAST)
    try:
        [r] = _runs(ex, [(host, sync_op(str(src), remote))], FAST)
        assert r.status == "ok" and sync_via(r.out) == "sftp", r.err
        [c] = _runs(ex, [(host, shell(f"cat {remote}/index.html; rm -rf {remote}"))], FAST)
        assert c.out == "<h1>hi</h1>\n", c.err
    finally:
        get_runtime().call(ex.close())
