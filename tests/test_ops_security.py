"""Security queries: scripts, parsers over captured and sample outputs, live read-only runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reops.core.model import Host
from reops.ops import security
from reops.ops.base import Op

DATA = Path(__file__).parent / "data" / "ops"
HOST = Host(name="h1", address="10.0.0.1")


def read(name: str) -> str:
    return (DATA / name).read_text()


def run_here(op: Op) -> tuple[int, str, str]:
    p = subprocess.run(["sh", "-c", op.command_for(HOST)], capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


# --- commands ---

def test_listening_command() -> None:
    assert security.listening().command_for(HOST) == (
        'command -v ss >/dev/null 2>&1 || { printf "%s\\n" "reops: ss (iproute2) is not '
        'installed on this host" >&2; exit 69; }\n'
        "ss -ltnupH 2>/dev/null || ss -ltnup")


@pytest.mark.parametrize(("op", "lines"), [
    (security.firewall(sudo=True), [
        "if command -v ufw >/dev/null 2>&1; then fw=ufw; cmd='\"'\"'ufw status verbose'\"'\"'",
        "elif command -v nft >/dev/null 2>&1; then fw=nft; cmd='\"'\"'nft list ruleset'\"'\"'",
    ]),
    (security.security_updates(), [
        "  apt) apt-get -s -q dist-upgrade 2>/dev/null | grep '^Inst' ;;",
        "  yum) yum -q updateinfo list security ;;",
        '  *) { printf "%s\\n" "reops: listing pending security updates needs apt, dnf or '
        'yum" >&2; exit 69; } ;;',
    ]),
    (security.ssh_sessions(), ["who 2>/dev/null", "ss -tnpH state established 2>/dev/null"
                               " || ss -tnp state established 2>/dev/null"]),
])
def test_script_lines(op: Op, lines: list[str]) -> None:
    cmd = op.command_for(HOST)
    for line in lines:
        assert line in cmd.splitlines()


# --- parsers ---

def test_listening_real_capture() -> None:
    rows = security.parse_listening(read("real-debian12-listening.txt"))
    assert len(rows) == 41
    assert rows[0] == security.Listener(proto="tcp", address="127.0.1.3", port=2422,
                                        process="sshd", pid=9410)
    assert security.Listener(proto="tcp", address="0.0.0.0", port=2024) in rows  # no process


def test_listening_old_ss_with_header() -> None:
    """CentOS 7's iproute2 4.11 has no -H: the fallback prints a header, which is skipped."""
    out = ("Netid State  Recv-Q Send-Q Local Address:Port  Peer Address:Port\n"
           'tcp   LISTEN 0      128          *:22               *:*   '
           'users:(("sshd",pid=1053,fd=3))\n')
    assert security.parse_listening(out) == [
        security.Listener(proto="tcp", address="*", port=22, process="sshd", pid=1053)]


def test_listening_sample_udp_ipv6_wildcards_and_bound_devices() -> None:
    rows = security.parse_listening(read("sample-ubuntu2204-listening.txt"))
    assert [(r.proto, r.address, r.port, r.iface, r.process) for r in rows] == [
        ("udp", "127.0.0.53", 53, "lo", "systemd-resolve"),
        ("tcp", "127.0.0.53", 53, "lo", "systemd-resolve"),
        ("tcp", "0.0.0.0", 22, "", "sshd"), ("tcp", "::", 22, "", "sshd"),
        ("tcp", "*", 80, "", "nginx"), ("tcp", "127.0.0.1", 5432, "", "")]


@pytest.mark.parametrize(("fixture", "logins", "connections"), [
    ("real-debian12-ssh-sessions.txt", [], []),
    ("real-debian12-ssh-sessions-lab.txt", [], [
        ("127.0.1.5", 2422, "127.0.0.1", 57064, 9453),
        ("127.0.1.9", 2422, "127.0.0.1", 55890, 9458),
        ("127.0.1.19", 2422, "127.0.0.1", 49328, 9601)]),  # client-side python skipped
    ("sample-ubuntu2204-ssh-sessions.txt",
     [("alice", "pts/0", "2026-11-27 09:30", "203.0.113.7"),
      ("bob", "tty1", "2026-11-27 08:02", "")],
     [("10.0.0.11", 22, "203.0.113.7", 50522, 1404),
      ("2001:db8::11", 22, "2001:db8::99", 41234, 1500)]),  # nginx on 443 skipped
    ("sample-ubuntu2204-ssh-sessions-nonroot.txt",
     [("alice", "pts/0", "2026-11-27 09:30", "203.0.113.7")],
     [("10.0.0.11", 22, "203.0.113.7", 50522, None)]),
])
def test_ssh_sessions(fixture: str, logins: list[tuple[str, ...]],
                      connections: list[tuple[object, ...]]) -> None:
    s = security.parse_ssh_sessions(read(fixture))
    assert [(x.user, x.tty, x.since, x.source) for x in s.logins] == logins
    assert [(c.local_address, c.local_port, c.peer_address, c.peer_port, c.pid)
            for c in s.connections] == connections


@pytest.mark.parametrize(("fixture", "expected"), [
    ("real-debian12-firewall-none.txt", security.Firewall(backend="none", active=False)),
    ("sample-ubuntu2204-firewall-ufw.txt",
     security.Firewall(backend="ufw", active=True, rules=4, default_policy="deny")),
    ("sample-ubuntu2204-firewall-ufw-inactive.txt",
     security.Firewall(backend="ufw", active=False, rules=0)),
    ("sample-debian12-firewall-nft.txt",
     security.Firewall(backend="nft", active=True, rules=3, default_policy="drop")),
    ("sample-centos7-firewall-iptables.txt",
     security.Firewall(backend="iptables", active=True, rules=3, default_policy="drop")),
    ("sample-fedora39-firewall-firewalld.txt",
     security.Firewall(backend="firewalld", active=True, rules=4, default_policy="default")),
])
def test_firewall(fixture: str, expected: security.Firewall) -> None:
    assert security.parse_firewall(read(fixture)) == expected


def test_firewall_iptables_all_accept_is_inactive() -> None:
    out = "::reops:: backend\niptables\n::reops:: rules\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n"
    assert security.parse_firewall(out) == security.Firewall(
        backend="iptables", active=False, default_policy="accept")


def test_security_updates_real_apt_capture() -> None:
    rows = security.parse_security_updates(read("real-debian12-security-updates.txt"))
    assert len(rows) == 78  # of 123 pending upgrades, those from Debian-Security
    assert rows[0] == security.Update(
        name="libgcrypt20-dev", current="1.10.1-3", available="1.10.1-3+deb12u1",
        advisory="Debian:12.15/oldstable, Debian-Security:12/oldstable-security",
        manager="apt")
    assert all("security" in r.advisory.lower() for r in rows)


@pytest.mark.parametrize(("fixture", "expected"), [
    ("sample-fedora39-security-updates-dnf4.txt", [
        ("openssl-libs", "1:3.1.1-4.fc39", "FEDORA-2024-1c9d3e0a9b", "Important"),
        ("curl", "8.2.1-4.fc39", "FEDORA-2024-5f8d2c5e4a", "Moderate"),
        ("libcurl", "8.2.1-4.fc39", "FEDORA-2024-5f8d2c5e4a", "Moderate")]),
    ("sample-fedora41-security-updates-dnf5.txt", [
        ("openssl-libs", "1:3.2.2-9.fc41", "FEDORA-2024-0b5b3a7a1c", "Important")]),
    ("sample-centos7-security-updates-yum.txt", [
        ("kernel", "3.10.0-1160.105.1.el7", "RHSA-2023:7549", "Important"),
        ("openssh", "7.4p1-23.el7_9", "RHSA-2024:0346", "Moderate")]),
])
def test_security_updates_rpm_samples(fixture: str, expected: list[tuple[str, ...]]) -> None:
    rows = security.parse_security_updates(read(fixture))
    assert [(r.name, r.available, r.advisory, r.severity) for r in rows] == expected


# --- live, read-only, on this host ---

def test_live_listening_and_sessions() -> None:
    op = security.listening()
    code, out, err = run_here(op)
    assert code == 0, err
    assert op.parse is not None
    assert all(r.proto in ("tcp", "udp") and 0 <= r.port < 65536 for r in op.parse(out))
    op = security.ssh_sessions()
    code, out, err = run_here(op)
    assert code == 0, err
    assert op.parse is not None
    assert isinstance(op.parse(out), security.SshSessions)


def test_live_firewall_and_updates() -> None:
    op = security.firewall()
    code, out, err = run_here(op)
    assert code == 0, err
    assert op.parse is not None
    assert op.parse(out).backend in ("none", "ufw", "firewalld", "nft", "iptables")
    op = security.security_updates()
    code, out, err = run_here(op)
    assert code == 0, err
    assert op.parse is not None
    assert all(u.manager == "apt" and u.name for u in op.parse(out))
