"""Facts: what a host is (os, hardware, network, users, uptime) in one round trip.

`facts()` sends one script that prints each probe under a `::reops::` section marker, and
one pure parser turns the whole output into a typed Facts struct (pyinfra#17: batching
facts is the difference between seconds and minutes on a fleet). Probes degrade quietly:
a missing `ip` or `lsblk` leaves that part empty instead of failing the host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from reops.ops.base import Op
from reops.ops.check import QUERY
from reops.ops.text import key_values, marker, script, sections, to_float, to_int

PARTS: tuple[str, ...] = ("os", "hardware", "network", "users", "uptime")


class OsInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The distribution and kernel."""

    id: str = ""  # os-release ID: debian, alpine, fedora, arch, …
    version: str = ""  # os-release VERSION_ID
    name: str = ""  # PRETTY_NAME
    like: str = ""  # ID_LIKE
    kernel: str = ""  # uname -s (Linux)
    kernel_release: str = ""  # uname -r
    arch: str = ""  # uname -m
    hostname: str = ""


class Disk(msgspec.Struct, frozen=True, kw_only=True):
    """A whole block device (not partitions, loops or zero-sized ram disks)."""

    name: str
    size_bytes: int
    rotational: bool | None = None
    model: str = ""


class Hardware(msgspec.Struct, frozen=True, kw_only=True):
    """CPUs, memory and disks."""

    cpus: int = 0
    cpu_model: str = ""
    memory_bytes: int = 0
    swap_bytes: int = 0
    disks: list[Disk] = msgspec.field(default_factory=list)


class Address(msgspec.Struct, frozen=True, kw_only=True):
    """One IP address on an interface."""

    family: str  # inet | inet6
    address: str
    prefix: int
    scope: str = ""


class Interface(msgspec.Struct, frozen=True, kw_only=True):
    """A network interface with its addresses."""

    name: str
    mac: str = ""
    mtu: int | None = None
    state: str = ""  # UP, DOWN, UNKNOWN (loopback)
    up: bool = False  # administratively up (the UP flag)
    addresses: list[Address] = msgspec.field(default_factory=list)


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """A default route."""

    family: str
    gateway: str
    dev: str = ""


class Network(msgspec.Struct, frozen=True, kw_only=True):
    """Interfaces and default routes."""

    interfaces: list[Interface] = msgspec.field(default_factory=list)
    default_route: Route | None = None
    default_route6: Route | None = None


class User(msgspec.Struct, frozen=True, kw_only=True):
    """A passwd entry."""

    name: str
    uid: int
    gid: int
    home: str = ""
    shell: str = ""
    gecos: str = ""

    @property
    def can_login(self) -> bool:
        """Whether the shell allows an interactive login (not nologin/false)."""
        return not self.shell.endswith(("nologin", "/false", "/sync")) and bool(self.shell)


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    """Everything `facts()` gathered; parts not asked for are None."""

    os: OsInfo | None = None
    hardware: Hardware | None = None
    network: Network | None = None
    users: list[User] | None = None
    uptime_s: float | None = None
    boot_time: float | None = None  # epoch seconds
    collected_at: float | None = None  # the host's clock, epoch seconds

    def row(self) -> dict[str, Any]:
        """One flat row of scalars for a per-host polars table."""
        r: dict[str, Any] = {}
        if self.os:
            r.update({f"os_{k}": v for k, v in msgspec.structs.asdict(self.os).items()})
        if self.hardware:
            hw = self.hardware
            r.update(cpus=hw.cpus, cpu_model=hw.cpu_model, memory_bytes=hw.memory_bytes,
                     swap_bytes=hw.swap_bytes, disks=len(hw.disks),
                     disk_bytes=sum(d.size_bytes for d in hw.disks))
        if self.network:
            gw = self.network.default_route
            r.update(interfaces=len(self.network.interfaces),
                     default_gateway=gw.gateway if gw else None,
                     default_dev=gw.dev if gw else None,
                     addresses=[a.address for i in self.network.interfaces
                                for a in i.addresses if a.scope != "host"])
        if self.users is not None:
            r["users"] = len(self.users)
        if self.uptime_s is not None:
            r.update(uptime_s=self.uptime_s, boot_time=self.boot_time)
        return r


_PROBES: dict[str, list[str]] = {
    "os": [
        marker("os-release"),
        "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null",
        marker("uname"),
        "uname -s; uname -r; uname -m",
        "hostname 2>/dev/null || cat /proc/sys/kernel/hostname",
    ],
    "hardware": [
        marker("cpu"),
        "nproc 2>/dev/null || grep -c '^processor' /proc/cpuinfo",
        "grep -m 1 -E '^(model name|Hardware|cpu model|Processor)' /proc/cpuinfo",
        marker("meminfo"),
        "grep -E '^(MemTotal|SwapTotal):' /proc/meminfo",
        marker("disks"),
        "lsblk -dbnP -o NAME,SIZE,TYPE,ROTA,MODEL 2>/dev/null || for d in /sys/block/*; do"
        ' echo "NAME=\\"${d##*/}\\" SIZE=\\"$(($(cat "$d/size") * 512))\\" TYPE=\\"disk\\"";'
        " done",
    ],
    "network": [
        "if command -v ip >/dev/null 2>&1; then",
        "  " + marker("links"),
        "  ip -o link show",
        "  " + marker("addrs"),
        "  ip -o addr show",
        "  " + marker("routes"),
        "  ip route show default; ip -6 route show default 2>/dev/null",
        "else  # no iproute2 (minimal images): interfaces from sysfs, routes from procfs",
        "  " + marker("links"),
        "  for i in /sys/class/net/*; do",
        '    up=; [ $(($(cat "$i/flags") & 1)) = 1 ] && up=UP',
        '    printf "0: %s: <%s> mtu %s state %s link/ether %s\\n" "${i##*/}" "$up"'
        ' "$(cat "$i/mtu")" "$(tr a-z A-Z < "$i/operstate")" "$(cat "$i/address")"',
        "  done",
        "  " + marker("procroute"),
        "  cat /proc/net/route",
        "fi",
    ],
    "users": [
        marker("passwd"),
        "getent passwd 2>/dev/null || cat /etc/passwd",
    ],
    "uptime": [
        marker("uptime"),
        "cat /proc/uptime",
    ],
}


def facts_script(parts: Iterable[str] = PARTS) -> str:
    """The one script that gathers `parts`."""
    chosen = list(parts)
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown fact parts {unknown}; expected some of {PARTS}")
    lines = [marker("clock"), "date +%s"]
    for part in PARTS:
        if part in chosen:
            lines += _PROBES[part]
    return script(*lines)


def facts(*parts: str, sudo: bool = False, become_user: str | None = None) -> Op:
    """Gather `parts` (default: all of os, hardware, network, users, uptime) as Facts."""
    chosen = parts or PARTS
    return Op(name="facts", command=facts_script(chosen), sudo=sudo, become_user=become_user,
              parse=parse_facts, check=QUERY)


def parse_facts(out: str) -> Facts:
    """A facts script's output into Facts (parts absent from the output stay None)."""
    s = sections(out)
    clock = to_float(s.get("clock"))
    uptime = parse_uptime(s["uptime"]) if "uptime" in s else None
    return Facts(
        os=parse_os(s.get("os-release", ""), s.get("uname", "")) if "uname" in s else None,
        hardware=parse_hardware(s.get("cpu", ""), s.get("meminfo", ""), s.get("disks", ""))
        if "cpu" in s else None,
        network=parse_network(s.get("links", ""), s.get("addrs", ""), s.get("routes", ""),
                              s.get("procroute", ""))
        if "links" in s else None,
        users=parse_passwd(s["passwd"]) if "passwd" in s else None,
        uptime_s=uptime,
        boot_time=round(clock - uptime, 1) if clock is not None and uptime is not None
        else None,
        collected_at=clock,
    )


def parse_os(os_release: str, uname: str) -> OsInfo:
    """os-release KEY=VALUE lines plus `uname -s/-r/-m` and the hostname into OsInfo."""
    kv = key_values(os_release)
    lines = [*uname.splitlines(), "", "", "", ""]
    return OsInfo(id=kv.get("ID", ""), version=kv.get("VERSION_ID", ""),
                  name=kv.get("PRETTY_NAME", kv.get("NAME", "")), like=kv.get("ID_LIKE", ""),
                  kernel=lines[0].strip(), kernel_release=lines[1].strip(),
                  arch=lines[2].strip(), hostname=lines[3].strip())


_PAIR = re.compile(r'(\w+)="([^"]*)"')


def parse_hardware(cpu: str, meminfo: str, disks: str) -> Hardware:
    """CPU count/model, /proc/meminfo totals and `lsblk -P` (or sysfs) rows."""
    lines = cpu.splitlines()
    cpus = to_int(lines[0]) if lines else None
    model = lines[1].split(":", 1)[1].strip() if len(lines) > 1 and ":" in lines[1] else ""
    mem = {k: v.split()[0] for k, v in key_values(meminfo, ":").items() if v.split()}
    found: list[Disk] = []
    for line in disks.splitlines():
        d = dict(_PAIR.findall(line))
        size = to_int(d.get("SIZE")) or 0
        if d.get("TYPE", "disk") != "disk" or size == 0 or not d.get("NAME"):
            continue
        if d["NAME"].startswith(("loop", "ram")):
            continue
        rota = d.get("ROTA")
        found.append(Disk(name=d["NAME"], size_bytes=size,
                          rotational=None if rota is None else rota == "1",
                          model=d.get("MODEL", "").strip()))
    return Hardware(cpus=cpus or 0, cpu_model=model,
                    memory_bytes=(to_int(mem.get("MemTotal")) or 0) * 1024,
                    swap_bytes=(to_int(mem.get("SwapTotal")) or 0) * 1024, disks=found)


_LINK = re.compile(r"^\d+:\s+(?P<name>[^:@\s]+)(?:@\S+)?:\s+<(?P<flags>[^>]*)>(?P<rest>.*)$")
_ADDR = re.compile(r"^\d+:\s+(?P<name>\S+)\s+(?P<family>inet6?)\s+(?P<addr>[^/\s]+)/(?P<prefix>\d+)"
                   r"(?:.*?\sscope\s+(?P<scope>\S+))?")


def parse_network(links: str, addrs: str, routes: str, procroute: str = "") -> Network:
    """`ip -o link`, `ip -o addr` and `ip route show default` output into a Network.

    Without iproute2 the script prints sysfs links in `ip -o link` form and
    /proc/net/route (`procroute`), which gives the IPv4 default route.
    """
    by_name: dict[str, dict[str, Any]] = {}
    for line in links.splitlines():
        m = _LINK.match(line)
        if not m:
            continue
        rest = m["rest"]
        mtu = re.search(r"\bmtu (\d+)", rest)
        state = re.search(r"\bstate (\S+)", rest)
        mac = re.search(r"link/\w+ ([0-9a-f:]{17})", rest)
        by_name[m["name"]] = {"name": m["name"], "mtu": int(mtu[1]) if mtu else None,
                              "state": state[1] if state else "",
                              "up": "UP" in m["flags"].split(","),
                              "mac": mac[1] if mac else "", "addresses": []}
    for line in addrs.splitlines():
        a = _ADDR.match(line)
        if not a:
            continue
        entry = by_name.setdefault(a["name"], {"name": a["name"], "addresses": []})
        entry["addresses"].append(Address(family=a["family"], address=a["addr"],
                                          prefix=int(a["prefix"]), scope=a["scope"] or ""))
    v4 = v6 = None
    for line in routes.splitlines():
        gw = re.search(r"\bvia (\S+)", line)
        dev = re.search(r"\bdev (\S+)", line)
        if not line.startswith("default") or not gw:
            continue
        route = Route(family="inet6" if ":" in gw[1] else "inet", gateway=gw[1],
                      dev=dev[1] if dev else "")
        if route.family == "inet" and v4 is None:
            v4 = route
        elif route.family == "inet6" and v6 is None:
            v6 = route
    if v4 is None and procroute:
        v4 = _proc_default_route(procroute)
    return Network(interfaces=[Interface(**e) for e in by_name.values()], default_route=v4,
                   default_route6=v6)


def _proc_default_route(text: str) -> Route | None:
    """The default route in /proc/net/route (gateway in little-endian hex)."""
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) > 2 and f[1] == "00000000" and f[2] != "00000000":
            try:
                gw = ".".join(str(b) for b in reversed(bytes.fromhex(f[2])))
            except ValueError:
                continue
            return Route(family="inet", gateway=gw, dev=f[0])
    return None


def parse_passwd(text: str) -> list[User]:
    """passwd lines (getent or /etc/passwd) into Users; malformed lines are skipped."""
    users: list[User] = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) < 7 or to_int(f[2]) is None or to_int(f[3]) is None:
            continue
        users.append(User(name=f[0], uid=int(f[2]), gid=int(f[3]), gecos=f[4], home=f[5],
                          shell=f[6]))
    return users


def parse_uptime(text: str) -> float | None:
    """Seconds since boot from /proc/uptime."""
    first = text.split()
    return to_float(first[0]) if first else None
