"""Metrics: cpu, memory, load, disk usage, network and entropy from /proc, no sysstat.

Rates (cpu %, network bytes/s) need two readings. The script takes both itself: it reads
/proc/stat and /proc/net/dev, sleeps `interval` seconds ON THE HOST, and reads them again,
so each Result is a complete, self-contained sample and the parser stays a pure function.
We chose this over "raw counters + a stateful parser per host" because Results flow
through retry, partition and agent→SSH fallback: a per-host memory of the last sample goes
wrong after a reconnect, a transport switch or a host that joins late, and its first
sample has no rate at all. The price is `interval` seconds of wall time per sample, spent
concurrently on every host. For long windows without the wait, use `interval=0` (raw
counters only) and `cpu_rates`/`net_rates` between two samples in the stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from reops.ops.base import Op
from reops.ops.check import QUERY
from reops.ops.text import key_values, marker, script, sections, to_float, to_int

KINDS: tuple[str, ...] = ("cpu", "memory", "load", "disk", "net", "entropy")

#: filesystems that are not storage (df rows skipped)
PSEUDO_FS = frozenset({"tmpfs", "devtmpfs", "udev", "shm", "none", "proc", "sysfs", "cgroup",
                       "cgroup2", "run", "efivarfs"})

_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class Cpu(msgspec.Struct, frozen=True, kw_only=True):
    """CPU time shares over the interval, in percent (None without a second reading)."""

    busy_pct: float | None = None
    user_pct: float | None = None
    system_pct: float | None = None
    iowait_pct: float | None = None
    steal_pct: float | None = None
    idle_pct: float | None = None
    counters: dict[str, int] = msgspec.field(default_factory=dict)  # last raw jiffies


class Memory(msgspec.Struct, frozen=True, kw_only=True):
    """Memory in bytes; `used` is total minus MemAvailable (what the kernel can reclaim)."""

    total: int
    available: int
    used: int
    used_pct: float
    swap_total: int = 0
    swap_used: int = 0


class Load(msgspec.Struct, frozen=True, kw_only=True):
    """Load averages and scheduler counts from /proc/loadavg."""

    load1: float
    load5: float
    load15: float
    running: int = 0
    procs: int = 0


class DiskUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One mounted filesystem's usage (df -kP)."""

    mount: str
    fs: str
    size_bytes: int
    used_bytes: int
    avail_bytes: int
    used_pct: float


class NetIface(msgspec.Struct, frozen=True, kw_only=True):
    """One interface's counters and, with two readings, its rates per second."""

    iface: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_errors: int = 0
    tx_errors: int = 0
    rx_bytes_s: float | None = None
    tx_bytes_s: float | None = None
    rx_packets_s: float | None = None
    tx_packets_s: float | None = None


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    """One sample from one host; kinds not asked for are None."""

    at: float  # the host's clock at the start of the sample, epoch seconds
    interval_s: float | None = None  # measured time between the two readings
    cpu: Cpu | None = None
    memory: Memory | None = None
    load: Load | None = None
    disks: list[DiskUsage] | None = None
    net: list[NetIface] | None = None
    entropy: int | None = None

    def row(self) -> dict[str, Any]:
        """One flat row of scalars per host and sample, for a polars table."""
        r: dict[str, Any] = {"at": self.at}
        if self.cpu:
            r.update(cpu_busy_pct=self.cpu.busy_pct, cpu_iowait_pct=self.cpu.iowait_pct,
                     cpu_steal_pct=self.cpu.steal_pct)
        if self.memory:
            r.update(mem_used_bytes=self.memory.used, mem_used_pct=self.memory.used_pct,
                     swap_used_bytes=self.memory.swap_used)
        if self.load:
            r.update(load1=self.load.load1, load5=self.load.load5, load15=self.load.load15)
        if self.disks is not None:
            r["disk_max_used_pct"] = max((d.used_pct for d in self.disks), default=None)
        if self.net is not None:
            real = [n for n in self.net if n.iface != "lo"]
            r["net_rx_bytes_s"] = _total(n.rx_bytes_s for n in real)
            r["net_tx_bytes_s"] = _total(n.tx_bytes_s for n in real)
        if self.entropy is not None:
            r["entropy"] = self.entropy
        return r


def _total(values: Iterable[float | None]) -> float | None:
    vals = list(values)
    return None if any(v is None for v in vals) else round(sum(v or 0.0 for v in vals), 1)


def _reading(n: int, kinds: set[str]) -> list[str]:
    lines = [marker(f"uptime{n}"), "cat /proc/uptime"]
    if "cpu" in kinds:
        lines += [marker(f"stat{n}"), "grep '^cpu ' /proc/stat"]
    if "net" in kinds:
        lines += [marker(f"net{n}"), "tail -n +3 /proc/net/dev"]
    return lines


def metrics_script(kinds: Iterable[str] = KINDS, interval: float = 1.0) -> str:
    """The one script that samples `kinds`, reading counters twice `interval` s apart."""
    chosen = set(kinds)
    unknown = chosen - set(KINDS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; expected some of {KINDS}")
    if interval < 0:
        raise ValueError("interval must be >= 0 seconds")
    lines = [marker("clock"), "date +%s", *_reading(1, chosen)]
    if interval > 0 and chosen & {"cpu", "net"}:
        lines += [f"sleep {interval:g}", *_reading(2, chosen)]
    if "memory" in chosen:
        lines += [marker("meminfo"),
                  "grep -E '^(MemTotal|MemFree|MemAvailable|Buffers|Cached|SwapTotal"
                  "|SwapFree):' /proc/meminfo"]
    if "load" in chosen:
        lines += [marker("loadavg"), "cat /proc/loadavg"]
    if "disk" in chosen:
        lines += [marker("df"), "df -kP"]
    if "entropy" in chosen:
        lines += [marker("entropy"), "cat /proc/sys/kernel/random/entropy_avail"]
    return script(*lines)


def metrics(*kinds: str, interval: float = 1.0, sudo: bool = False,
            become_user: str | None = None) -> Op:
    """Sample `kinds` (default all); `data` is a Metrics. Rates use `interval` on the host."""
    return Op(name="metrics", command=metrics_script(kinds or KINDS, interval), sudo=sudo,
              become_user=become_user, parse=parse_metrics, check=QUERY)


def parse_metrics(out: str) -> Metrics:
    """A metrics script's output into one Metrics sample."""
    s = sections(out)
    t1 = _first_float(s.get("uptime1", ""))
    t2 = _first_float(s.get("uptime2", ""))
    elapsed = round(t2 - t1, 3) if t1 is not None and t2 is not None and t2 > t1 else None
    cpu = None
    if "stat1" in s:
        c1 = parse_cpu_counters(s["stat1"])
        cpu = cpu_rates(c1, parse_cpu_counters(s["stat2"])) if "stat2" in s else Cpu(counters=c1)
    net = None
    if "net1" in s:
        n1 = parse_net_dev(s["net1"])
        net = net_rates(n1, parse_net_dev(s["net2"]), elapsed) if "net2" in s and elapsed else n1
    return Metrics(
        at=to_float(s.get("clock")) or 0.0, interval_s=elapsed, cpu=cpu, net=net,
        memory=parse_meminfo(s["meminfo"]) if "meminfo" in s else None,
        load=parse_loadavg(s["loadavg"]) if "loadavg" in s else None,
        disks=parse_df(s["df"]) if "df" in s else None,
        entropy=to_int(s.get("entropy")),
    )


def _first_float(text: str) -> float | None:
    parts = text.split()
    return to_float(parts[0]) if parts else None


def parse_cpu_counters(text: str) -> dict[str, int]:
    """The aggregate `cpu` line of /proc/stat into named jiffy counters."""
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "cpu":
            return {name: int(v) for name, v in zip(_CPU_FIELDS, f[1:], strict=False)}
    raise ValueError("no aggregate 'cpu' line in /proc/stat output")


def cpu_rates(before: dict[str, int], after: dict[str, int]) -> Cpu:
    """Percent shares between two /proc/stat readings (works across any window)."""
    delta = {k: max(after.get(k, 0) - before.get(k, 0), 0) for k in _CPU_FIELDS}
    total = sum(delta.values())
    if total == 0:
        return Cpu(busy_pct=0.0, user_pct=0.0, system_pct=0.0, iowait_pct=0.0, steal_pct=0.0,
                   idle_pct=100.0, counters=after)

    def pct(*keys: str) -> float:
        return round(100.0 * sum(delta[k] for k in keys) / total, 2)

    idle = pct("idle", "iowait")
    return Cpu(busy_pct=round(100.0 - idle, 2), user_pct=pct("user", "nice"),
               system_pct=pct("system", "irq", "softirq"), iowait_pct=pct("iowait"),
               steal_pct=pct("steal"), idle_pct=pct("idle"), counters=after)


def parse_net_dev(text: str) -> list[NetIface]:
    """/proc/net/dev rows (headers tolerated) into counters per interface."""
    rows: list[NetIface] = []
    for line in text.splitlines():
        name, found, rest = line.partition(":")
        f = rest.split()
        if not found or len(f) < 16 or not f[0].isdigit():
            continue
        rows.append(NetIface(iface=name.strip(), rx_bytes=int(f[0]), rx_packets=int(f[1]),
                             rx_errors=int(f[2]), tx_bytes=int(f[8]), tx_packets=int(f[9]),
                             tx_errors=int(f[10])))
    return rows


def net_rates(before: list[NetIface], after: list[NetIface], seconds: float) -> list[NetIface]:
    """`after` with per-second rates over `seconds` since `before` (counter resets → 0)."""
    old = {n.iface: n for n in before}

    def rate(a: int, b: int) -> float:
        return round(max(a - b, 0) / seconds, 1)

    result: list[NetIface] = []
    for n in after:
        o = old.get(n.iface)
        if o is None or seconds <= 0:
            result.append(n)
            continue
        result.append(msgspec.structs.replace(
            n, rx_bytes_s=rate(n.rx_bytes, o.rx_bytes), tx_bytes_s=rate(n.tx_bytes, o.tx_bytes),
            rx_packets_s=rate(n.rx_packets, o.rx_packets),
            tx_packets_s=rate(n.tx_packets, o.tx_packets)))
    return result


def parse_meminfo(text: str) -> Memory:
    """/proc/meminfo (kB) into Memory in bytes."""
    kb = {k: to_int(v.split()[0]) or 0 for k, v in key_values(text, ":").items() if v.split()}
    total = kb.get("MemTotal", 0) * 1024
    if "MemAvailable" in kb:
        available = kb["MemAvailable"] * 1024
    else:  # kernels before 3.14
        available = (kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)) * 1024
    used = max(total - available, 0)
    swap_total = kb.get("SwapTotal", 0) * 1024
    return Memory(total=total, available=available, used=used,
                  used_pct=round(100.0 * used / total, 2) if total else 0.0,
                  swap_total=swap_total, swap_used=swap_total - kb.get("SwapFree", 0) * 1024)


def parse_loadavg(text: str) -> Load:
    """/proc/loadavg into Load."""
    f = text.split()
    running, _, procs = f[3].partition("/") if len(f) > 3 else ("0", "", "0")
    return Load(load1=float(f[0]), load5=float(f[1]), load15=float(f[2]),
                running=to_int(running) or 0, procs=to_int(procs) or 0)


def parse_df(text: str) -> list[DiskUsage]:
    """`df -kP` rows for real filesystems (pseudo ones like tmpfs are skipped)."""
    rows: list[DiskUsage] = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 6 or not f[1].isdigit() or f[0] in PSEUDO_FS or int(f[1]) == 0:
            continue
        size, used, avail = int(f[1]) * 1024, int(f[2]) * 1024, int(f[3]) * 1024
        mount = " ".join(f[5:])
        rows.append(DiskUsage(mount=mount, fs=f[0], size_bytes=size, used_bytes=used,
                              avail_bytes=avail,
                              used_pct=round(100.0 * used / (used + avail), 2)
                              if used + avail else 0.0))
    return rows
