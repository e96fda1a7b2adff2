"""~/.ssh/config read as ssh reads it, once per fleet (issue 10 item 2), against real sshd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reops import exec_, run
from reops.core.inventory import inventory
from reops.core.settings import Settings
from reops.lab.fleet import Lab
from reops.transports.ssh import sshconfig
from reops.transports.ssh.sshconfig import SshConfig

FAST = Settings(connect_timeout=5.0)


def _names_only(tmp_path: Path, lab: Lab, extra: str = "") -> Path:
    """An inventory that lists only host names: ssh_config says where and how."""
    inv = tmp_path / "inventory.toml"
    inv.write_text("".join(f"[hosts.{n}]\n" for n in lab.hosts) + extra)
    return inv


def _config(tmp_path: Path, lab: Lab, body: str = "", name: str = "ssh_config") -> Path:
    info = lab.info
    blocks = [body]
    for n, address in lab.hosts.items():
        blocks.append(f"Host {n}\n  HostName {address}\n")
    blocks.append(f"Host *\n  Port {info.port}\n  User {info.user}\n"
                  f"  IdentityFile {info.key}\n  IdentitiesOnly yes\n"
                  f"  UserKnownHostsFile {info.known_hosts}\n")
    path = tmp_path / name
    path.write_text("\n".join(blocks))
    return path


def test_inventory_of_names_reaches_hosts_through_ssh_config(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Old code: the names went to the resolver as they are (and known_hosts blew up)."""
    fleet = lab_factory(hosts=3)
    cfg = _config(tmp_path, fleet)
    hosts = inventory(_names_only(tmp_path, fleet)).select("all")
    out = run(exec_(hosts, 'echo "$USER ${SSH_CONNECTION##* }"',
                    settings=FAST.with_(ssh_config=str(cfg))))
    assert out.ok, [r.err for r in out.results]
    assert sorted(r.out for r in out.results) == [f"{fleet.user} {fleet.port}\n"] * 3
    off = run(exec_(hosts, "true", settings=FAST.with_(ssh_config=False)))
    assert all(r.status == "unreachable" for r in off.results)


def test_inventory_wins_over_ssh_config(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Precedence inventory > ssh_config: a config saying port 1 / user nobody loses."""
    fleet = lab_factory(hosts=1)
    info = fleet.info
    [name] = fleet.hosts
    bad = tmp_path / "bad_config"
    bad.write_text(f"Host {name}\n  HostName {fleet.hosts[name]}\n  Port 1\n  User nobody\n"
                   f"  IdentityFile {info.key}\n  UserKnownHostsFile {info.known_hosts}\n")
    inv = tmp_path / "inventory.toml"
    inv.write_text(f'[hosts.{name}]\nport = {info.port}\nuser = "{info.user}"\n')
    out = run(exec_(inventory(inv).select("all"), "id -un",
                    settings=FAST.with_(ssh_config=str(bad))))
    assert [r.out for r in out.results] == [f"{info.user}\n"], out.results[0].err


def test_first_value_wins_and_include(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ssh's rule: the first value obtained wins; Include is read where it stands."""
    fleet = lab_factory(hosts=2)
    [a, b] = fleet.hosts
    inc = tmp_path / "conf.d" / "hosts.conf"
    inc.parent.mkdir()
    _config(inc.parent, fleet, name="hosts.conf")
    main = tmp_path / "main_config"
    main.write_text(f"Include {inc}\nHost *\n  HostName 127.0.251.7\n  Port 1\n")
    out = run(exec_(inventory(_names_only(tmp_path, fleet)).select("all"), "true",
                    settings=FAST.with_(ssh_config=str(main))))
    assert out.ok, [r.err for r in out.results]
    # and a Match block that names one host only
    m = tmp_path / "match_config"
    m.write_text(f"Match originalhost {a}\n  Port 1\nMatch all\n  Include {inc}\n")
    out = run(exec_(inventory(_names_only(tmp_path, fleet)).select("all"), "true",
                    settings=FAST.with_(ssh_config=str(m))))
    status = {r.host: r.status for r in out.results}
    assert status == {a: "unreachable", b: "ok"}


def test_bad_line_is_one_clear_error(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = lab_factory(hosts=1)
    cfg = tmp_path / "broken"
    cfg.write_text("Host *\n  User x\n  Port twenty-two\n")
    out = run(exec_(inventory(_names_only(tmp_path, fleet)).select("all"), "true",
                    settings=FAST.with_(ssh_config=str(cfg))))
    [r] = out.results
    assert r.status == "error"
    assert r.err.startswith(f"{cfg}:3: ") and "Port" in r.err and "twenty-two" in r.err
    assert "Traceback" not in r.err


def test_cli_ssh_config_flags(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = lab_factory(hosts=2)
    cfg = _config(tmp_path, fleet)
    inv = _names_only(tmp_path, fleet)
    env = {**os.environ, "REOPS_HOME": str(tmp_path / "home")}
    reops = [str(Path(sys.executable).with_name("reops"))]
    ok = subprocess.run([*reops, "exec", "-i", str(inv), "--ssh-config", str(cfg), "all",
                         "-o", "json", "--", "hostname"], capture_output=True, text=True,
                        env=env, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    off = subprocess.run([*reops, "exec", "-i", str(inv), "--ssh-config", str(cfg),
                          "--no-ssh-config", "all", "--", "true"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert off.returncode == 1 and "Traceback" not in off.stderr + off.stdout
    missing = subprocess.run([*reops, "exec", "-i", str(inv), "--ssh-config",
                              str(tmp_path / "nope"), "all", "--", "true"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert "no such ssh_config file" in missing.stdout + missing.stderr


def test_parsed_once_per_fleet_and_again_after_an_edit(lab_factory, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Three hosts, two runs: the file is tokenised once; an edit (new mtime) re-reads it."""
    fleet = lab_factory(hosts=3)
    cfg = _config(tmp_path, fleet)
    reads: list[Path] = []
    real = sshconfig._tokenise

    def counting(path: Path, *args: object) -> object:
        reads.append(path)
        return real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sshconfig, "_tokenise", counting)
    monkeypatch.setattr(sshconfig, "RECHECK_S", 0.0)  # look at the mtime on every connect
    hosts = inventory(_names_only(tmp_path, fleet)).select("all")
    settings = FAST.with_(ssh_config=str(cfg))
    for _ in range(2):
        assert run(exec_(hosts, "true", settings=settings)).ok
    assert reads == [cfg]
    st = cfg.stat()
    cfg.write_text(cfg.read_text().replace(f"Port {fleet.port}", "Port 1"))
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again = run(exec_(hosts, "true", settings=settings))
    assert reads == [cfg, cfg]
    assert all(r.status == "unreachable" and ":1 " in r.err for r in again.results)


def test_lookup_precedence_unit(tmp_path: Path) -> None:
    cfg = tmp_path / "c"
    cfg.write_text("Host web*\n  User deploy\n  IdentityFile ~/.ssh/a\n"
                   "Host *\n  User other\n  IdentityFile ~/.ssh/b\n  ProxyJump none\n"
                   "  StrictHostKeyChecking accept-new\n")
    c = SshConfig([str(cfg)])
    web = c.lookup("web1")
    assert web.user == "deploy" and web.proxy_jump == ()
    assert [Path(p).name for p in web.identity_files] == ["a", "b"]  # IdentityFile adds up
    assert web.strict_host_key_checking == "accept-new"
    assert c.lookup("web1", user="given").user == "given"  # a given user wins
    assert c.lookup("db1").user == "other"


def test_strict_host_key_checking_from_ssh_config(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`StrictHostKeyChecking accept-new` in ssh_config relaxes reops' default (strict)."""
    fleet = lab_factory(hosts=1)
    info = fleet.info
    [name] = fleet.hosts
    fresh = tmp_path / "fresh_known_hosts"
    cfg = tmp_path / "cfg"
    cfg.write_text(f"Host {name}\n  HostName {fleet.hosts[name]}\n  Port {info.port}\n"
                   f"  User {info.user}\n  IdentityFile {info.key}\n"
                   f"  UserKnownHostsFile {fresh}\n  StrictHostKeyChecking accept-new\n")
    hosts = inventory(_names_only(tmp_path, fleet)).select("all")
    out = run(exec_(hosts, "true", settings=FAST.with_(ssh_config=str(cfg))))
    assert out.ok, out.results[0].err
    assert fresh.read_text().startswith(f"[{fleet.hosts[name]}]:{info.port} ssh-ed25519 ")
    # an explicit reops policy wins over ssh_config's
    fresh.unlink()
    out = run(exec_(hosts, "true", settings=FAST.with_(ssh_config=str(cfg),
                                                       host_key_checking="off")))
    assert out.ok and not fresh.exists()


def test_ssh_config_false_in_config_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reops.core.settings import load_settings
    from reops.transports.ssh.sshconfig import config_paths

    toml = tmp_path / "config.toml"
    toml.write_text("[ssh]\nssh_config = false\n")
    assert config_paths(load_settings(toml).ssh_config) == []
    toml.write_text('[ssh]\nssh_config = "~/other_config"\n')
    assert config_paths(load_settings(toml).ssh_config) == ["~/other_config"]
    monkeypatch.setenv("REOPS_SSH_CONFIG", "false")
    assert config_paths(load_settings(tmp_path / "none.toml").ssh_config) == []
    assert config_paths(Settings().ssh_config) == ["~/.ssh/config", "/etc/ssh/ssh_config"]
