"""Security posture: listening ports, SSH sessions, firewall status, pending security updates.

All read-only queries, one script each. Seeing other users' processes (ss -p) and reading
firewall rules usually needs root: pass `sudo=True`; without it the port list still comes
back, only without process names, and the firewall query fails with exit 77 and a hint.
"""

from __future__ import annotations

import re

import msgspec

from reops.ops.base import Op
from reops.ops.check import QUERY
from reops.ops.pkg import DETECT
from reops.ops.text import EX_NOPERM, EX_UNAVAILABLE, fail, marker, script, sections


class Listener(msgspec.Struct, frozen=True, kw_only=True):
    """A socket listening for connections (tcp) or bound for datagrams (udp)."""

    proto: str
    address: str  # 0.0.0.0, ::, * or a specific address
    port: int
    process: str = ""  # empty when not visible (not root)
    pid: int | None = None
    iface: str = ""  # bound device (`127.0.0.53%lo` → lo)


class Login(msgspec.Struct, frozen=True, kw_only=True):
    """An interactive login from `who` (utmp)."""

    user: str
    tty: str
    since: str
    source: str = ""  # the remote host, empty for a local console


class SshConnection(msgspec.Struct, frozen=True, kw_only=True):
    """An established TCP connection served by sshd."""

    local_address: str
    local_port: int
    peer_address: str
    peer_port: int
    pid: int | None = None


class SshSessions(msgspec.Struct, frozen=True, kw_only=True):
    """Who is logged in and which SSH connections are open."""

    logins: list[Login] = msgspec.field(default_factory=list)
    connections: list[SshConnection] = msgspec.field(default_factory=list)


class Firewall(msgspec.Struct, frozen=True, kw_only=True):
    """The firewall in charge and whether it filters anything."""

    backend: str  # ufw | firewalld | nft | iptables | none
    active: bool
    rules: int = 0
    default_policy: str = ""  # the input policy: drop, deny, accept, … ("" unknown)


class Update(msgspec.Struct, frozen=True, kw_only=True):
    """A pending security update."""

    name: str
    available: str
    current: str = ""
    advisory: str = ""  # RHSA/FEDORA id (dnf/yum) or the apt origin (Debian-Security:12/…)
    severity: str = ""
    manager: str = ""


def listening(*, sudo: bool = False, become_user: str | None = None) -> Op:
    """Listening TCP and bound UDP sockets (`ss -ltnupH`): `data` is a list of Listener."""
    cmd = script(
        "command -v ss >/dev/null 2>&1 || "
        + fail(EX_UNAVAILABLE, "ss (iproute2) is not installed on this host"),
        "ss -ltnupH 2>/dev/null || ss -ltnup",  # -H needs iproute2 >= 4.17; headers are skipped
    )
    return Op(name="security.listening", command=cmd, sudo=sudo, become_user=become_user,
              parse=parse_listening, check=QUERY)


def ssh_sessions(*, sudo: bool = False, become_user: str | None = None) -> Op:
    """Logged-in users (`who`) and established sshd connections (`ss`): SshSessions."""
    cmd = script(
        marker("who"),
        "who 2>/dev/null",
        marker("ss"),
        "ss -tnpH state established 2>/dev/null || ss -tnp state established 2>/dev/null",
        "exit 0",
    )
    return Op(name="security.ssh_sessions", command=cmd, sudo=sudo, become_user=become_user,
              parse=parse_ssh_sessions, check=QUERY)


def firewall(*, sudo: bool = False, become_user: str | None = None) -> Op:
    """Which firewall is present (ufw, firewalld, nft, iptables) and its state: Firewall."""
    cmd = script(
        "set -f",
        "if command -v ufw >/dev/null 2>&1; then fw=ufw; cmd='ufw status verbose'",
        "elif command -v firewall-cmd >/dev/null 2>&1 && firewall-cmd --state >/dev/null 2>&1;"
        " then fw=firewalld; cmd='firewall-cmd --list-all'",
        "elif command -v nft >/dev/null 2>&1; then fw=nft; cmd='nft list ruleset'",
        "elif command -v iptables >/dev/null 2>&1; then fw=iptables; cmd='iptables -S'",
        "else fw=none; cmd=true",
        "fi",
        marker("backend"),
        'echo "$fw"',
        marker("rules"),
        "$cmd || " + fail(EX_NOPERM, "reading the firewall failed; it usually needs root "
                                     "(sudo=True)"),
    )
    return Op(name="security.firewall", command=cmd, sudo=sudo, become_user=become_user,
              parse=parse_firewall, check=QUERY)


_SECURITY_UPDATES = {
    "apt": "apt-get -s -q dist-upgrade 2>/dev/null | grep '^Inst'",
    "dnf": "dnf -q updateinfo list --security --updates 2>/dev/null"
           " || dnf -q updateinfo list --security",
    "yum": "yum -q updateinfo list security",
}


def security_updates(*, sudo: bool = False, become_user: str | None = None) -> Op:
    """Pending security updates (apt, dnf or yum): `data` is a list of Update."""
    arms = "\n".join(f"  {pm}) {cmd} ;;" for pm, cmd in _SECURITY_UPDATES.items())
    other = fail(EX_UNAVAILABLE, "listing pending security updates needs apt, dnf or yum")
    cmd = script(
        DETECT,
        marker("updates"),
        "case $pm in",
        arms,
        f"  *) {other} ;;",
        "esac",
        "exit 0",
    )
    return Op(name="security.updates", command=cmd, sudo=sudo, become_user=become_user,
              parse=parse_security_updates, check=QUERY)


def split_address(text: str) -> tuple[str, int, str]:
    """`[::1]:22`, `0.0.0.0:22`, `*:53`, `127.0.0.53%lo:53` → (address, port, iface)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    host, _, iface = host.partition("%")
    return host, int(port) if port.isdigit() else 0, iface


_USERS = re.compile(r'users:\(\("(?P<name>[^"]+)",pid=(?P<pid>\d+)')
_ADDR_PORT = re.compile(r"^(\[[^\]]+\]|[^\s\[\]]*):(\d+|\*)$")


def parse_listening(out: str) -> list[Listener]:
    """`ss -ltnupH` lines into Listeners (proto, address, port, process, pid)."""
    rows: list[Listener] = []
    for line in out.splitlines():
        f = line.split()
        if len(f) < 5 or f[0] not in ("tcp", "udp"):
            continue
        address, port, iface = split_address(f[4])
        m = _USERS.search(line)
        rows.append(Listener(proto=f[0], address=address, port=port, iface=iface,
                             process=m["name"] if m else "",
                             pid=int(m["pid"]) if m else None))
    return rows


_WHO = re.compile(r"^(?P<user>\S+)\s+(?P<tty>\S+)\s+(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d|"
                  r"\w{3}\s+\d+\s+\d\d:\d\d)(?:\s+\((?P<source>[^)]*)\))?")


def parse_ssh_sessions(out: str) -> SshSessions:
    """`who` and `ss -tnpH state established` output into SshSessions.

    A connection is sshd's when ss names the process `sshd` (root sees it) or, without
    process names, when the local port is 22.
    """
    s = sections(out)
    logins = [Login(user=m["user"], tty=m["tty"], since=m["since"], source=m["source"] or "")
              for m in map(_WHO.match, s.get("who", "").splitlines()) if m]
    conns: list[SshConnection] = []
    for line in s.get("ss", "").splitlines():
        ends = [t for t in line.split() if _ADDR_PORT.match(t)]
        if len(ends) < 2:
            continue
        m = _USERS.search(line)
        local, lport, _ = split_address(ends[0])
        peer, pport, _ = split_address(ends[1])
        if (m and m["name"] == "sshd") or (not m and lport == 22):
            conns.append(SshConnection(local_address=local, local_port=lport,
                                       peer_address=peer, peer_port=pport,
                                       pid=int(m["pid"]) if m else None))
    return SshSessions(logins=logins, connections=conns)


def parse_firewall(out: str) -> Firewall:
    """The rules of whichever backend the script found into a Firewall summary."""
    s = sections(out)
    backend = s.get("backend", "none").strip() or "none"
    text = s.get("rules", "")
    if backend == "ufw":
        active = bool(re.search(r"^Status:\s*active", text, re.M))
        pol = re.search(r"^Default:\s*(\w+) \(incoming\)", text, re.M)
        rules = sum(1 for line in text.split("\n--", 1)[-1].splitlines()[1:] if line.strip())
        return Firewall(backend=backend, active=active, rules=rules if active else 0,
                        default_policy=pol[1] if pol else "")
    if backend == "iptables":
        rules = sum(1 for line in text.splitlines() if line.startswith("-A "))
        pol = re.search(r"^-P INPUT (\w+)", text, re.M)
        policy = pol[1].lower() if pol else ""
        return Firewall(backend=backend, active=rules > 0 or policy not in ("", "accept"),
                        rules=rules, default_policy=policy)
    if backend == "nft":
        rules, policy = _nft_rules(text)
        return Firewall(backend=backend, active=rules > 0 or policy not in ("", "accept"),
                        rules=rules, default_policy=policy)
    if backend == "firewalld":
        target = re.search(r"^\s*target:\s*(\S+)", text, re.M)
        items = 0
        for key in ("services", "ports", "rich rules"):
            m = re.search(rf"^\s*{key}:(.*)$", text, re.M)
            items += len(m[1].split()) if m else 0
        return Firewall(backend=backend, active=True, rules=items,
                        default_policy=target[1].lower() if target else "")
    return Firewall(backend="none", active=False)


def _nft_rules(text: str) -> tuple[int, str]:
    """Count rule lines inside chains; the input hook chain's policy."""
    rules, policy, in_chain, input_hook = 0, "", False, False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            in_chain, input_hook = True, False
        elif line == "}":
            in_chain = False
        elif in_chain and line.startswith("type "):
            input_hook = "hook input" in line
            pol = re.search(r"policy (\w+)", line)
            if input_hook and pol:
                policy = pol[1]
        elif in_chain and line and not line.startswith(("policy ", "comment ")):
            rules += 1
    return rules, policy


_INST = re.compile(r"^Inst (?P<name>\S+)(?: \[(?P<cur>[^\]]+)\])? "
                   r"\((?P<new>\S+) (?P<origin>[^\[)]+)")
_ADVISORY = re.compile(r"^(?P<adv>[A-Z][\w:.-]*-\d[\w:.-]*)\s+(?P<sev>\S+)\s+(?P<rest>.+)$")
_NEVRA = re.compile(r"^(?P<name>.+)-(?P<ver>[^-]+-[^-]+)\.(?P<arch>[^.]+)$")


def parse_security_updates(out: str) -> list[Update]:
    """apt simulation lines or dnf/yum updateinfo rows into security Updates."""
    s = sections(out)
    pm = s.get("manager", "").strip()
    rows: list[Update] = []
    for line in s.get("updates", "").splitlines():
        if pm == "apt":
            m = _INST.match(line)
            if m and "security" in m["origin"].lower():
                rows.append(Update(name=m["name"], current=m["cur"] or "", available=m["new"],
                                   advisory=m["origin"].strip().rstrip(","), manager=pm))
            continue
        m = _ADVISORY.match(line.strip())
        if not m:
            continue
        rest = m["rest"].split()
        sev = m["sev"]
        if sev == "security" and len(rest) >= 2:  # dnf5: ID TYPE SEVERITY NEVRA ISSUED
            sev, rest = rest[0], rest[1:]
        n = _NEVRA.match(rest[0])
        if not n:
            continue
        rows.append(Update(name=n["name"], available=n["ver"], advisory=m["adv"],
                           severity=sev.removesuffix("/Sec."), manager=pm))
    return rows
