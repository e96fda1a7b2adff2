"""Built-ins that read the host: facts, metrics (from /proc, no sysstat) and files.

facts and metrics return plain dicts in exactly the shape of reops' typed Facts and
Metrics (same field names and types): the agent cannot import reops, and reops decodes
them with msgspec.convert, so `Result.data` is the same whichever transport ran it.

They are plain blocking functions; the agent runs them in a worker thread so its socket
loop never blocks. Files move in chunks of at most CHUNK_BYTES, one call each, so no frame
is ever large and no read is unbounded (`/dev/zero` included).
"""

from __future__ import annotations

import os
import platform
import pwd
import re
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from reops_agent.protocol import CHUNK_BYTES

#: the most one file.read call returns (larger files are read in chunks: offset + length)
MAX_FILE = CHUNK_BYTES
#: chunked uploads untouched this long are abandoned (their temp files removed)
UPLOAD_IDLE_S = 600.0


#: the parts `facts()` gathers and the kinds `metrics()` samples: the same words, field
#: names and types as reops.ops.facts.Facts / reops.ops.metrics.Metrics (reops decodes
#: these dicts into those Structs, so data is one shape whichever transport ran it)
FACT_PARTS: tuple[str, ...] = ("os", "hardware", "network", "users", "uptime")
METRIC_KINDS: tuple[str, ...] = ("cpu", "memory", "load", "disk", "net", "entropy")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def os_release() -> dict[str, str]:
    """/etc/os-release (or /usr/lib/os-release) as a dict (ID, VERSION_ID, PRETTY_NAME…)."""
    out: dict[str, str] = {}
    text = _read("/etc/os-release") or _read("/usr/lib/os-release")
    for line in text.splitlines():
        key, sep, val = line.partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = val.strip().strip("\"'")
    return out


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes, by key."""
    info: dict[str, int] = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[key] = int(parts[0]) * 1024
    return info


def _uptime() -> float | None:
    parts = _read("/proc/uptime").split()
    try:
        return float(parts[0]) if parts else None
    except ValueError:
        return None


def facts(*parts: str) -> dict[str, Any]:
    """What the host is, as reops' Facts: os, hardware, network, users, uptime (default
    all; parts not asked for are None). Probes degrade quietly to empty values."""
    chosen = parts or FACT_PARTS
    unknown = [p for p in chosen if p not in FACT_PARTS]
    if unknown:
        raise ValueError(f"unknown fact parts {unknown}; expected some of {FACT_PARTS}")
    now = time.time()
    uptime = _uptime() if "uptime" in chosen else None
    return {
        "os": _os_info() if "os" in chosen else None,
        "hardware": _hardware() if "hardware" in chosen else None,
        "network": _network() if "network" in chosen else None,
        "users": _users() if "users" in chosen else None,
        "uptime_s": uptime,
        "boot_time": round(now - uptime, 1) if uptime is not None else None,
        "collected_at": now,
    }


def _os_info() -> dict[str, str]:
    rel, uname = os_release(), platform.uname()
    return {"id": rel.get("ID", ""), "version": rel.get("VERSION_ID", ""),
            "name": rel.get("PRETTY_NAME", rel.get("NAME", "")), "like": rel.get("ID_LIKE", ""),
            "kernel": uname.system, "kernel_release": uname.release, "arch": uname.machine,
            "hostname": socket.gethostname()}


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        key, sep, val = line.partition(":")
        if sep and key.strip() in ("model name", "Hardware", "cpu model", "Processor"):
            return val.strip()
    return ""


def _disks() -> list[dict[str, Any]]:
    """Whole block devices as lsblk -d lists disks (no partitions, loops, ram, dm, md, rom)."""
    out: list[dict[str, Any]] = []
    for d in sorted(Path("/sys/block").glob("*")):
        if d.name.startswith(("loop", "ram", "dm-", "md", "sr")):
            continue
        size = int(_read(f"{d}/size").strip() or 0) * 512
        if size == 0:
            continue
        rota = _read(f"{d}/queue/rotational").strip()
        out.append({"name": d.name, "size_bytes": size,
                    "rotational": None if not rota else rota == "1",
                    "model": _read(f"{d}/device/model").strip()})
    return out


def _hardware() -> dict[str, Any]:
    mem = _meminfo()
    try:
        cpus = len(os.sched_getaffinity(0))  # what nproc counts
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return {"cpus": cpus, "cpu_model": _cpu_model(), "memory_bytes": mem.get("MemTotal", 0),
            "swap_bytes": mem.get("SwapTotal", 0), "disks": _disks()}


def _users() -> list[dict[str, Any]]:
    return [{"name": p.pw_name, "uid": p.pw_uid, "gid": p.pw_gid, "gecos": p.pw_gecos,
             "home": p.pw_dir, "shell": p.pw_shell} for p in pwd.getpwall()]


_V6_SCOPES = {0x00: "global", 0x10: "host", 0x20: "link", 0x40: "site"}


def _v4_scope(addr: str) -> str:
    if addr.startswith("127."):
        return "host"
    return "link" if addr.startswith("169.254.") else "global"


def _ipv4_addresses() -> list[tuple[str, str, int]]:
    """(interface, address, prefix) of every IPv4 address, from libc's getifaddrs (the
    kernel has no /proc file that lists them plainly); empty if libc will not say."""
    import ctypes  # only facts pay for it (the idle agent stays small)

    class SockAddr(ctypes.Structure):
        _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_ushort),
                    ("addr", ctypes.c_ubyte * 4)]

    class IfAddrs(ctypes.Structure):
        pass

    IfAddrs._fields_ = [("next", ctypes.POINTER(IfAddrs)), ("name", ctypes.c_char_p),
                        ("flags", ctypes.c_uint), ("addr", ctypes.POINTER(SockAddr)),
                        ("netmask", ctypes.POINTER(SockAddr)),
                        ("broadaddr", ctypes.c_void_p), ("data", ctypes.c_void_p)]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        head = ctypes.POINTER(IfAddrs)()
        if libc.getifaddrs(ctypes.byref(head)) != 0:
            return []
    except (OSError, AttributeError):
        return []
    out: list[tuple[str, str, int]] = []
    try:
        node = head
        while node:
            ifa = node.contents
            if ifa.addr and ifa.addr.contents.family == socket.AF_INET and ifa.name:
                mask = bytes(ifa.netmask.contents.addr) if ifa.netmask else b"\0" * 4
                out.append((ifa.name.decode(), socket.inet_ntoa(bytes(ifa.addr.contents.addr)),
                            bin(int.from_bytes(mask, "big")).count("1")))
            node = ifa.next
    finally:
        libc.freeifaddrs(head)
    return out


def _network() -> dict[str, Any]:
    """Interfaces (sysfs), addresses (getifaddrs, /proc/net/if_inet6) and default routes
    (/proc/net/route, /proc/net/ipv6_route), in the shape of `ip -o` as reops parses it."""
    import ipaddress  # only facts pay for it (the idle agent stays small)

    by_name: dict[str, dict[str, Any]] = {}
    links = sorted(Path("/sys/class/net").glob("*"),
                   key=lambda p: int(_read(f"{p}/ifindex").strip() or 0))
    for link in links:
        flags = int(_read(f"{link}/flags").strip() or "0", 16)
        mtu = _read(f"{link}/mtu").strip()
        by_name[link.name] = {"name": link.name, "mac": _read(f"{link}/address").strip(),
                              "mtu": int(mtu) if mtu.isdigit() else None,
                              "state": _read(f"{link}/operstate").strip().upper(),
                              "up": bool(flags & 1), "addresses": []}
    for name, addr, prefix in _ipv4_addresses():
        by_name.setdefault(name, {"name": name, "addresses": []})["addresses"].append(
            {"family": "inet", "address": addr, "prefix": prefix, "scope": _v4_scope(addr)})
    for line in _read("/proc/net/if_inet6").splitlines():
        f = line.split()
        if len(f) < 6:
            continue
        addr = str(ipaddress.IPv6Address(bytes.fromhex(f[0])))
        by_name.setdefault(f[5], {"name": f[5], "addresses": []})["addresses"].append(
            {"family": "inet6", "address": addr, "prefix": int(f[2], 16),
             "scope": _V6_SCOPES.get(int(f[3], 16), "")})
    return {"interfaces": list(by_name.values()), "default_route": _route4(),
            "default_route6": _route6()}


def _route4() -> dict[str, str] | None:
    for line in _read("/proc/net/route").splitlines()[1:]:
        f = line.split()
        if len(f) > 2 and f[1] == "00000000" and f[2] != "00000000":
            gw = ".".join(str(b) for b in reversed(bytes.fromhex(f[2])))
            return {"family": "inet", "gateway": gw, "dev": f[0]}
    return None


def _route6() -> dict[str, str] | None:
    import ipaddress

    for line in _read("/proc/net/ipv6_route").splitlines():
        f = line.split()
        if len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and int(f[4], 16) != 0:
            gw = str(ipaddress.IPv6Address(bytes.fromhex(f[4])))
            return {"family": "inet6", "gateway": gw, "dev": f[9]}
    return None


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_CPU_SHARES = ("busy_pct", "user_pct", "system_pct", "iowait_pct", "steal_pct", "idle_pct")
_NET_RATES = ("rx_bytes_s", "tx_bytes_s", "rx_packets_s", "tx_packets_s")

#: filesystems that are not storage (skipped, as reops skips them in df output)
PSEUDO_FS = frozenset({"tmpfs", "devtmpfs", "udev", "shm", "none", "proc", "sysfs", "cgroup",
                       "cgroup2", "run", "efivarfs"})


class Reading(NamedTuple):
    """The counters a rate needs, read at one moment (`clock`: time.monotonic())."""

    clock: float
    cpu: dict[str, int]
    net: list[dict[str, Any]]


def read_counters() -> Reading:
    """The aggregate /proc/stat cpu line and /proc/net/dev, read now."""
    return parse_counters(time.monotonic(), _read("/proc/stat"), _read("/proc/net/dev"))


def parse_counters(clock: float, proc_stat: str, net_dev: str) -> Reading:
    """A Reading from the text of /proc/stat and /proc/net/dev read at `clock`."""
    cpu: dict[str, int] = {}
    for line in proc_stat.splitlines():
        f = line.split()
        if f and f[0] == "cpu":
            cpu = {name: int(v) for name, v in zip(_CPU_FIELDS, f[1:], strict=False)}
            break
    net: list[dict[str, Any]] = []
    for line in net_dev.splitlines():
        name, found, rest = line.partition(":")
        f = rest.split()
        if found and len(f) >= 16 and f[0].isdigit():
            net.append({"iface": name.strip(), "rx_bytes": int(f[0]), "rx_packets": int(f[1]),
                        "rx_errors": int(f[2]), "tx_bytes": int(f[8]), "tx_packets": int(f[9]),
                        "tx_errors": int(f[10]), **dict.fromkeys(_NET_RATES)})
    return Reading(clock, cpu, net)


class Sampler:
    """The agent's last counter reading, so a metrics call with no `interval` reports rates
    since the previous call (a schedule's ticks) without sleeping. It lives on the host, so
    no client-side memory can go stale across reconnects or transport switches."""

    def __init__(self, first: Reading | None = None) -> None:
        self._lock = threading.Lock()
        self._last = first or read_counters()

    def swap(self, now: Reading) -> Reading:
        """Store `now`; the reading it replaces."""
        with self._lock:
            last, self._last = self._last, now
        return last


def cpu_rates(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """Percent shares between two /proc/stat readings, as reops' Cpu."""
    delta = {k: max(after.get(k, 0) - before.get(k, 0), 0) for k in _CPU_FIELDS}
    total = sum(delta.values())
    if total == 0:
        return {"busy_pct": 0.0, "user_pct": 0.0, "system_pct": 0.0, "iowait_pct": 0.0,
                "steal_pct": 0.0, "idle_pct": 100.0, "counters": after}

    def pct(*keys: str) -> float:
        return round(100.0 * sum(delta[k] for k in keys) / total, 2)

    idle = pct("idle", "iowait")
    return {"busy_pct": round(100.0 - idle, 2), "user_pct": pct("user", "nice"),
            "system_pct": pct("system", "irq", "softirq"), "iowait_pct": pct("iowait"),
            "steal_pct": pct("steal"), "idle_pct": pct("idle"), "counters": after}


def net_rates(before: list[dict[str, Any]], after: list[dict[str, Any]],
              seconds: float) -> list[dict[str, Any]]:
    """`after` with per-second rates over `seconds` since `before` (counter resets → 0)."""
    old = {n["iface"]: n for n in before}
    out: list[dict[str, Any]] = []
    for n in after:
        o = old.get(n["iface"])
        if o is not None and seconds > 0:
            n = {**n, **{k: round(max(n[k[:-2]] - o[k[:-2]], 0) / seconds, 1)
                         for k in _NET_RATES}}
        out.append(n)
    return out


def memory() -> dict[str, Any]:
    """Memory in bytes, as reops' Memory: `used` is total minus MemAvailable."""
    kb = _meminfo()
    total = kb.get("MemTotal", 0)
    available = kb["MemAvailable"] if "MemAvailable" in kb else (
        kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0))  # before 3.14
    used = max(total - available, 0)
    swap_total = kb.get("SwapTotal", 0)
    return {"total": total, "available": available, "used": used,
            "used_pct": round(100.0 * used / total, 2) if total else 0.0,
            "swap_total": swap_total, "swap_used": swap_total - kb.get("SwapFree", 0)}


def load() -> dict[str, Any]:
    """/proc/loadavg as reops' Load."""
    f = [*_read("/proc/loadavg").split(), "0", "0", "0", "0/0"][:4]
    running, _, procs = f[3].partition("/")
    return {"load1": float(f[0]), "load5": float(f[1]), "load15": float(f[2]),
            "running": int(running) if running.isdigit() else 0,
            "procs": int(procs) if procs.isdigit() else 0}


def _unescape(field: str) -> str:
    """/proc/mounts escapes spaces and tabs as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def disk() -> list[dict[str, Any]]:
    """Usage of mounted storage filesystems, as reops' DiskUsage rows (what `df -kP` shows:
    pseudo filesystems and empty ones skipped, one row per mount point)."""
    by_mount: dict[str, dict[str, Any]] = {}
    for line in _read("/proc/mounts").splitlines():
        f = line.split()
        if len(f) < 2 or f[0] in PSEUDO_FS:
            continue
        mount = _unescape(f[1])
        try:
            st = os.statvfs(mount)
        except OSError:
            continue
        if st.f_blocks == 0:
            continue
        size = st.f_blocks * st.f_frsize
        used, avail = (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize
        by_mount[mount] = {"mount": mount, "fs": _unescape(f[0]), "size_bytes": size,
                           "used_bytes": used, "avail_bytes": avail,
                           "used_pct": round(100.0 * used / (used + avail), 2)
                           if used + avail else 0.0}
    return list(by_mount.values())


def entropy() -> int | None:
    """The kernel's entropy estimate, in bits."""
    text = _read("/proc/sys/kernel/random/entropy_avail").strip()
    return int(text) if text.isdigit() else None


def metrics(sampler: Sampler, *kinds: str, interval: float | None = None) -> dict[str, Any]:
    """One sample of `kinds` (default all), as reops' Metrics. Rates (cpu %, net bytes/s)
    cover `interval` seconds slept here, or, with no interval, the time since the previous
    metrics call on this agent; `interval=0` gives raw counters only."""
    chosen = kinds or METRIC_KINDS
    unknown = sorted(set(chosen) - set(METRIC_KINDS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected some of {METRIC_KINDS}")
    if interval is not None and interval < 0:
        raise ValueError("interval must be >= 0 seconds")
    at = time.time()
    if interval:
        first = read_counters()
        time.sleep(interval)
        second: Reading | None = read_counters()
    else:
        second = read_counters()
        first = sampler.swap(second)
        if interval == 0:
            first, second = second, None
    elapsed = None
    if second is not None and second.clock > first.clock:
        elapsed = round(second.clock - first.clock, 3)
    cpu = net = None
    if "cpu" in chosen:
        cpu = cpu_rates(first.cpu, second.cpu) if second is not None else {
            **dict.fromkeys(_CPU_SHARES), "counters": first.cpu}
    if "net" in chosen:
        net = net_rates(first.net, second.net, elapsed) if second is not None and elapsed \
            else (second or first).net
    return {
        "at": at, "interval_s": elapsed, "cpu": cpu, "net": net,
        "memory": memory() if "memory" in chosen else None,
        "load": load() if "load" in chosen else None,
        "disks": disk() if "disk" in chosen else None,
        "entropy": entropy() if "entropy" in chosen else None,
    }


def file_stat(path: str) -> dict[str, Any]:
    """A file's size, mode and kind (downloads check it before reading)."""
    st = os.stat(path)
    return {"size": st.st_size, "mode": st.st_mode & 0o7777, "mtime_ns": st.st_mtime_ns,
            "regular": stat.S_ISREG(st.st_mode)}


def file_read(path: str, max_bytes: int = MAX_FILE, offset: int = 0,
              length: int | None = None) -> dict[str, Any]:
    """A file's bytes and mode: all of it (refused beyond `max_bytes`), or the chunk of
    `length` bytes at `offset` (`eof` says the file ended). Never more than MAX_FILE."""
    limit = min(max_bytes if length is None else length, MAX_FILE)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if offset:
            f.seek(offset)
        content = f.read(limit + 1 if length is None else limit)
    if length is None and len(content) > limit:
        raise ValueError(f"{path}: more than {limit} bytes; too large for one read "
                         "(download it: it travels in chunks)")
    return {"content": content, "mode": st.st_mode & 0o7777, "size": st.st_size,
            "eof": length is None or len(content) < limit}


def _sha256(path: Path | str) -> str:
    import hashlib  # (here: it loads OpenSSL, ~3 MB an idle agent does not need)

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


class Uploads:
    """Chunked uploads in progress: each a temp file beside its target, named by a token;
    the target changes only at commit (atomic rename), after size and hash are checked."""

    def __init__(self, idle_s: float = UPLOAD_IDLE_S) -> None:
        self.idle_s = idle_s
        self._open: dict[str, tuple[str, str, float]] = {}  # token → temp, target, last use

    def _expire(self) -> None:
        now = time.monotonic()
        for token, (_tmp, _, used) in list(self._open.items()):
            if now - used > self.idle_s:
                self.abort(token)

    def _get(self, token: str) -> tuple[str, str]:
        if token not in self._open:
            raise ValueError("unknown or abandoned upload; start it again")
        tmp, target, _ = self._open[token]
        self._open[token] = (tmp, target, time.monotonic())
        return tmp, target

    def begin(self, path: str, makedirs: bool = True) -> dict[str, Any]:
        """Start uploading to `path`: a private temp file in its directory."""
        self._expire()
        p = Path(path)
        if makedirs:
            p.parent.mkdir(parents=True, exist_ok=True)
        import secrets  # only uploads pay for these (the idle agent stays small)
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.reops-")
        os.close(fd)
        token = secrets.token_hex(16)
        self._open[token] = (tmp, path, time.monotonic())
        return {"token": token}

    def append(self, token: str, offset: int, data: bytes) -> dict[str, Any]:
        """Add the chunk that starts at `offset` (chunks come in order, exactly once)."""
        tmp, _ = self._get(token)
        with open(tmp, "ab") as f:
            have = f.tell()
            if have != offset:
                raise ValueError(f"chunk at offset {offset}, but {have} bytes received")
            f.write(data)
            return {"size": f.tell()}

    def commit(self, token: str, size: int, sha256: str,
               mode: int | None = None) -> dict[str, Any]:
        """Check size and hash, then put the file in place; `changed` as file.write says."""
        tmp, target = self._get(token)
        del self._open[token]
        try:
            got = os.path.getsize(tmp)
            if got != size or _sha256(tmp) != sha256:
                raise ValueError(f"{target}: received {got} bytes that do not match the "
                                 f"{size} bytes sent; upload it again")
            p = Path(target)
            try:
                old_mode: int | None = p.stat().st_mode & 0o7777
                same = p.stat().st_size == size and _sha256(p) == sha256
            except OSError:
                old_mode, same = None, False
            if same and (mode is None or mode == old_mode):
                Path(tmp).unlink()
                return {"changed": False, "size": size}
            os.chmod(tmp, mode if mode is not None else (old_mode or 0o644))
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return {"changed": True, "size": size}

    def abort(self, token: str) -> dict[str, Any]:
        """Give up an upload: its temp file goes, the target is untouched."""
        entry = self._open.pop(token, None)
        if entry is not None:
            Path(entry[0]).unlink(missing_ok=True)
        return {"aborted": entry is not None}


def file_write(path: str, content: bytes | str, mode: int | None = None,
               makedirs: bool = True) -> dict[str, Any]:
    """Write a file atomically; `changed` says whether its content or mode differed."""
    data = content.encode() if isinstance(content, str) else content
    p = Path(path)
    try:
        old = p.read_bytes()
        old_mode: int | None = p.stat().st_mode & 0o7777
    except OSError:
        old, old_mode = None, None
    if old == data and (mode is None or mode == old_mode):
        return {"changed": False, "size": len(data)}
    if makedirs:
        p.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # only writers pay for it (the idle agent stays small)

    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode if mode is not None else (old_mode or 0o644))
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"changed": True, "size": len(data)}
