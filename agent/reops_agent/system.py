"""Built-ins that read the host: facts, metrics (from /proc, no sysstat) and files.

They are plain blocking functions; the agent runs them in a worker thread so its socket
loop never blocks. Files move in chunks of at most CHUNK_BYTES, one call each, so no frame
is ever large and no read is unbounded (`/dev/zero` included).
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reops_agent.protocol import CHUNK_BYTES

#: the most one file.read call returns (larger files are read in chunks: offset + length)
MAX_FILE = CHUNK_BYTES
#: chunked uploads untouched this long are abandoned (their temp files removed)
UPLOAD_IDLE_S = 600.0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def os_release() -> dict[str, str]:
    """/etc/os-release as a dict (ID, VERSION_ID, PRETTY_NAME…)."""
    out: dict[str, str] = {}
    for line in _read("/etc/os-release").splitlines():
        key, sep, val = line.partition("=")
        if sep:
            out[key] = val.strip().strip('"')
    return out


def facts() -> dict[str, Any]:
    """What the host is: names, OS, kernel, CPUs, memory, Python, uptime."""
    rel = os_release()
    uname = platform.uname()
    uptime = float((_read("/proc/uptime").split() or ["0"])[0])
    return {
        "hostname": socket.gethostname(),
        "fqdn": socket.getfqdn(),
        "os": rel.get("PRETTY_NAME", uname.system),
        "os_id": rel.get("ID", ""),
        "os_version": rel.get("VERSION_ID", ""),
        "kernel": uname.release,
        "arch": uname.machine,
        "cpus": os.cpu_count() or 1,
        "mem_total": memory().get("total", 0),
        "python": sys.version.split()[0],
        "uptime_s": uptime,
        "boot_time": time.time() - uptime,
    }


class CpuSampler:
    """CPU busy % between two reads of /proc/stat (the previous call's and this one's)."""

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[int, int]:
        fields = [int(x) for x in (_read("/proc/stat").splitlines() or ["cpu 0"])[0].split()[1:]]
        idle = sum(fields[3:5])  # idle + iowait
        return sum(fields), idle

    def percent(self) -> float:
        total, idle = self._sample()
        last_total, last_idle = self._last
        self._last = (total, idle)
        dt = total - last_total
        return round(100.0 * (dt - (idle - last_idle)) / dt, 1) if dt > 0 else 0.0


def memory() -> dict[str, int]:
    """Memory in bytes: total, available, used, swap."""
    info: dict[str, int] = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            info[key] = int(parts[0]) * 1024
    total, avail = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    return {
        "total": total,
        "available": avail,
        "used": total - avail,
        "percent": round(100.0 * (total - avail) / total, 1) if total else 0.0,  # type: ignore[dict-item]
        "swap_total": info.get("SwapTotal", 0),
        "swap_free": info.get("SwapFree", 0),
    }


def load() -> dict[str, float]:
    """Load averages over 1, 5 and 15 minutes."""
    parts = ([*_read("/proc/loadavg").split(), "0", "0", "0"])[:3]
    return dict(zip(("1m", "5m", "15m"), map(float, parts), strict=True))


def disk() -> dict[str, dict[str, int]]:
    """Usage of each mounted block-device filesystem, by mount point."""
    out: dict[str, dict[str, int]] = {}
    for line in _read("/proc/mounts").splitlines():
        dev, mount, *_ = [*line.split(), "", ""]
        if not dev.startswith("/dev/") or mount in out:
            continue
        try:
            st = os.statvfs(mount)
        except OSError:
            continue
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        out[mount] = {"total": total, "free": free, "used": total - st.f_bfree * st.f_frsize}
    return out


def net() -> dict[str, dict[str, int]]:
    """Byte and packet counters per network interface."""
    out: dict[str, dict[str, int]] = {}
    for line in _read("/proc/net/dev").splitlines()[2:]:
        name, _, rest = line.partition(":")
        v = [int(x) for x in rest.split()]
        if len(v) >= 10:
            out[name.strip()] = {"rx_bytes": v[0], "rx_packets": v[1], "tx_bytes": v[8],
                                 "tx_packets": v[9]}
    return out


def metrics(cpu: CpuSampler, *which: str) -> dict[str, Any]:
    """The named metrics (default all): cpu, mem, load, disk, net."""
    names = which or ("cpu", "mem", "load", "disk", "net")
    table = {"cpu": lambda: {"percent": cpu.percent()}, "mem": memory, "load": load,
             "disk": disk, "net": net}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(table)}")
    return {"time": time.time(), **{n: table[n]() for n in names}}


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
