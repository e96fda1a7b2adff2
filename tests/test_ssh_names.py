"""Hosts named by DNS, and known_hosts matched exactly as `ssh` matches it (issue 10 item 1).

Names resolve through /etc/hosts lines this file writes and removes (under an flock on
/etc/hosts.reops.lock, so parallel test sessions do not clobber each other), never through a
real resolver.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from reops import Host, exec_, run
from reops.core.settings import Settings
from reops.transports.ssh.knownhosts import KnownHostsFiles
from reops.transports.ssh.sshlib import asyncssh

HOSTS_FILE = Path("/etc/hosts")
HOSTS_LOCK = Path("/etc/hosts.reops.lock")
FAST = Settings(connect_timeout=5.0)


@contextlib.contextmanager
def etc_hosts(names: dict[str, str]) -> Iterator[None]:
    """TEST-ONLY: add `address name` lines to /etc/hosts, remove exactly them afterwards."""
    marker = f"# reops-test {os.getpid()}-{secrets.token_hex(4)}"
    lines = [f"{address} {name} {marker}\n" for name, address in names.items()]

    def edit(add: bool) -> None:
        with HOSTS_LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            text = HOSTS_FILE.read_text()
            kept = [ln for ln in text.splitlines(keepends=True) if marker not in ln]
            if kept and not kept[-1].endswith("\n"):
                kept[-1] += "\n"
            HOSTS_FILE.write_text("".join(kept + (lines if add else [])))

    if not os.access(HOSTS_FILE, os.W_OK):
        pytest.skip("needs a writable /etc/hosts (run as root)")
    edit(True)
    try:
        yield
    finally:
        edit(False)


def _host_key_line(known_hosts: Path, address: str) -> tuple[str, str]:
    """The key type and base64 the lab wrote for `address`."""
    for line in known_hosts.read_text().splitlines():
        pattern, kind, b64 = line.split()[:3]
        if pattern.split(",")[0].lstrip("[").split("]")[0] == address:
            return kind, b64
    raise AssertionError(f"{address} not in {known_hosts}")


@pytest.fixture
def named(lab_factory, tmp_path: Path) -> Iterator[tuple[Host, str, str]]:  # type: ignore[no-untyped-def]
    """A one-host lab reachable as `<random>.reops.test`; yields (host, kind, key b64)."""
    fleet = lab_factory()
    info = fleet.info
    [host] = list(info.as_hosts())
    name = f"n{secrets.token_hex(3)}.reops.test"
    kind, b64 = _host_key_line(info.known_hosts, host.address)
    with etc_hosts({name: host.address}):
        yield (msgspec.structs.replace(host, address=name, known_hosts=str(tmp_path / "kh")),
               kind, b64)


def test_host_named_by_dns_with_name_entry(named: tuple[Host, str, str]) -> None:
    """Old code: `internal error: ValueError: '…' does not appear to be an IPv4 …`."""
    host, kind, b64 = named
    Path(host.known_hosts or "").write_text(f"[{host.address}]:{host.port} {kind} {b64}\n")
    out = run(exec_(host, "echo $SSH_CONNECTION", settings=FAST))
    assert [r.status for r in out.results] == ["ok"], out.results[0].err


def test_hashed_entry_matches(named: tuple[Host, str, str]) -> None:
    """`ssh-keygen -H` hashes `[name]:port`; such a file must match the name."""
    host, kind, b64 = named
    kh = Path(host.known_hosts or "")
    kh.write_text(f"[{host.address}]:{host.port} {kind} {b64}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True,
                   capture_output=True)
    assert host.address not in kh.read_text() and kh.read_text().startswith("|1|")
    out = run(exec_(host, "true", settings=FAST))
    assert out.ok, out.results[0].err


def test_bare_name_does_not_cover_another_port(named: tuple[Host, str, str]) -> None:
    """ssh looks up `[name]:port` only; a port-22 entry must not vouch for port N."""
    host, kind, b64 = named
    Path(host.known_hosts or "").write_text(f"{host.address} {kind} {b64}\n")
    out = run(exec_(host, "true", settings=FAST))
    [r] = out.results
    assert r.status == "unreachable"
    assert f"[{host.address}]:{host.port}" in r.err and "is not in" in r.err


def test_ip_entry_does_not_vouch_for_a_name(named: tuple[Host, str, str]) -> None:
    """CheckHostIP is off in ssh: a key filed under the IP is not a key for the name."""
    host, kind, b64 = named
    resolved = next(ln.split()[0] for ln in HOSTS_FILE.read_text().splitlines()
                    if host.address in ln.split())
    Path(host.known_hosts or "").write_text(f"[{resolved}]:{host.port} {kind} {b64}\n")
    out = run(exec_(host, "true", settings=FAST))
    assert out.results[0].status == "unreachable" and "is not in" in out.results[0].err


def test_revoked_key_is_refused_clearly(named: tuple[Host, str, str]) -> None:
    host, kind, b64 = named
    Path(host.known_hosts or "").write_text(
        f"[{host.address}]:{host.port} {kind} {b64}\n@revoked * {kind} {b64}\n")
    out = run(exec_(host, "true", settings=FAST))
    [r] = out.results
    assert r.status == "unreachable" and "@revoked" in r.err, r.err


def test_accept_new_records_the_name(named: tuple[Host, str, str]) -> None:
    """accept-new writes `[name]:port key` as ssh does; the next strict run accepts it.
    (No ssh_config: Debian's /etc/ssh/ssh_config says HashKnownHosts yes, test_ssh_gaps.)"""
    host, kind, b64 = named
    first = run(exec_(host, "true", settings=FAST.with_(host_key_checking="accept-new",
                                                        ssh_config=False)))
    assert first.ok, first.results[0].err
    assert Path(host.known_hosts or "").read_text().split()[:3] == [
        f"[{host.address}]:{host.port}", kind, b64]
    again = run(exec_(host, "true", settings=FAST.with_(idle_timeout=0.001)))
    assert again.ok, again.results[0].err


def _hashed(name: str) -> str:
    salt = secrets.token_bytes(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(("pattern", "address", "port", "found"), [
    ("db1.example", "db1.example", 22, True),
    ("db1.example", "db1.example", 2222, False),  # no port-less fallback
    ("[db1.example]:2222", "db1.example", 2222, True),
    ("[db1.example]:2222", "db1.example", 22, False),
    ("10.0.0.5", "10.0.0.5", 22, True),
    ("[10.0.0.5]:2200", "10.0.0.5", 2200, True),
    ("::1", "::1", 22, True),
    ("[::1]:2222", "::1", 2222, True),
    ("[::1]:2222", "::1", 22, False),
    ("*.example", "db1.example", 22, True),
    ("*.example,!db1.example", "db1.example", 22, False),
    ("other,db1.example", "db1.example", 22, True),
    (_hashed("db1.example"), "db1.example", 22, True),
    (_hashed("[db1.example]:2222"), "db1.example", 2222, True),
    (_hashed("db1.example"), "db1.example", 2222, False),
])
def test_lookup_matches_like_ssh(tmp_path: Path, pattern: str, address: str, port: int,
                                 found: bool) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    kh = tmp_path / "kh"
    kh.write_text(f"{pattern} {key}\n")
    keys, _, _ = KnownHostsFiles().lookup([str(kh)], address, port)
    assert bool(keys) is found


def test_cert_authority_and_revoked_markers(tmp_path: Path) -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    bad = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    kh = tmp_path / "kh"
    kh.write_text(f"@cert-authority *.example {ca}\n@revoked db1.example {bad}\n")
    keys, cas, revoked = KnownHostsFiles().lookup([str(kh)], "db1.example", 22)
    assert (len(keys), len(cas), len(revoked)) == (0, 1, 1)
    assert KnownHostsFiles().lookup([str(kh)], "db1.elsewhere", 22) == ([], [], [])
