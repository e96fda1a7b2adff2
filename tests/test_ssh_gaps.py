"""Gaps left in the connect work (issue 10): HashKnownHosts on accept-new, a replaced key
file at the same path, and an explicit --host-key-checking strict over a relaxing
ssh_config. Real sshd, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reops.core.model import Host, Result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.lab.fleet import Lab
from reops.ops.shell import exec_ as shell
from reops.transports.ssh import pool as pool_mod
from reops.transports.ssh.executor import SshExecutor
from reops.transports.ssh.knownhosts import entry

FAST = Settings(connect_timeout=5.0)


def _one(ex: SshExecutor, host: Host, settings: Settings, command: str = "true") -> Result:
    async def go() -> Result:
        return await ex.run(host, shell(command), settings)

    return get_runtime().call(go())


def _host(fleet: Lab, **kw: object) -> Host:
    info = fleet.info
    [(name, address)] = fleet.hosts.items()
    fields: dict[str, object] = {"name": name, "address": address, "port": info.port,
                                 "user": info.user, "key": str(info.key)}
    fields.update(kw)
    return Host(**fields)  # type: ignore[arg-type]


def test_hash_known_hosts_yes_records_a_hashed_entry(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Old code: accept-new wrote `[address]:port key` in the clear whatever ssh_config said."""
    fleet: Lab = lab_factory()
    known = tmp_path / "known_hosts"
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  HashKnownHosts yes\n")
    host = _host(fleet, known_hosts=str(known))
    settings = FAST.with_(ssh_config=str(cfg), host_key_checking="accept-new")
    ex = SshExecutor(settings)
    try:
        r = _one(ex, host, settings)
        assert r.status == "ok", r.err
    finally:
        get_runtime().call(ex.close())
    text = known.read_text()
    name = entry(host.address, host.port)
    assert text.startswith("|1|") and name not in text and host.address not in text
    assert len(text.splitlines()) == 1
    # ssh finds it as its own hashed entry
    found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(known)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and "|1|" in found.stdout
    # and it matches on the next connect, strictly, in a new executor
    strict = FAST.with_(ssh_config=str(cfg), host_key_checking="strict")
    ex = SshExecutor(strict)
    try:
        r = _one(ex, host, strict)
        assert r.status == "ok", r.err
    finally:
        get_runtime().call(ex.close())
    assert known.read_text() == text  # nothing appended the second time


def test_a_replaced_key_file_is_read_again(lab_factory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Old code: the key was cached by path forever, so after the lab went down and up
    (new client key, same path) the same executor failed to log in."""
    monkeypatch.setattr(pool_mod, "KEY_RECHECK_S", 0.0)  # no wait for the 1 s recheck
    fleet: Lab = lab_factory()
    host = _host(fleet, known_hosts=str(fleet.info.known_hosts))
    ex = SshExecutor(FAST)
    try:
        assert _one(ex, host, FAST).status == "ok"
        old_key = Path(fleet.info.key).read_bytes()
        fleet.down()
        fleet.up()
        assert Path(fleet.info.key).read_bytes() != old_key
        host = _host(fleet, known_hosts=str(fleet.info.known_hosts))
        ex.forget(host)
        r = _one(ex, host, FAST)
        assert r.status == "ok", r.err
    finally:
        get_runtime().call(ex.close())


def test_explicit_strict_beats_a_relaxing_ssh_config(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Old code: strict was the default, so `--host-key-checking strict` could not be told
    from "not given" and `StrictHostKeyChecking no` in ssh_config won."""
    fleet: Lab = lab_factory()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  StrictHostKeyChecking no\n")
    host = _host(fleet, known_hosts=str(empty))
    unset = FAST.with_(ssh_config=str(cfg))
    assert unset.host_key_checking is None
    ex = SshExecutor(unset)
    try:
        assert _one(ex, host, unset).status == "ok"  # ssh_config relaxes an unset flag
        strict = unset.with_(host_key_checking="strict")
        r = _one(ex, host, strict)
        assert r.status == "unreachable" and "is not in" in r.err, r.err
    finally:
        get_runtime().call(ex.close())
    # the CLI: --host-key-checking strict given explicitly wins over ssh_config
    inv = tmp_path / "inventory.toml"
    info = fleet.info
    [(name, address)] = fleet.hosts.items()
    inv.write_text(f'[hosts.{name}]\naddress = "{address}"\nport = {info.port}\n'
                   f'user = "{info.user}"\nkey = "{info.key}"\nknown_hosts = "{empty}"\n')
    reops = [str(Path(sys.executable).with_name("reops"))]
    base = [*reops, "exec", "-i", str(inv), "--ssh-config", str(cfg), "--no-hub", "all"]
    relaxed = subprocess.run([*base, "true"], capture_output=True, text=True)
    assert relaxed.returncode == 0, relaxed.stderr
    given = subprocess.run([*base, "--host-key-checking", "strict", "true"],
                           capture_output=True, text=True)
    assert given.returncode != 0 and "is not in" in given.stdout + given.stderr
    assert empty.read_text() == ""  # neither run recorded a key (`no` and strict both)


def test_settings_leave_host_key_checking_unset() -> None:
    assert Settings().host_key_checking is None  # so ssh_config may decide
