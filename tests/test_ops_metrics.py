"""Metrics: the sampling script, its parser over captured output, rate math, a live run."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reops.core.model import Host
from reops.ops import metrics

DATA = Path(__file__).parent / "data" / "ops"
HOST = Host(name="h1", address="10.0.0.1")


@pytest.mark.parametrize(("kinds", "interval", "has", "lacks"), [
    ((), 1.0, ["sleep 1", "grep '^cpu ' /proc/stat", "tail -n +3 /proc/net/dev", "df -kP",
               "cat /proc/loadavg", "cat /proc/sys/kernel/random/entropy_avail"], []),
    (("cpu",), 0.5, ["sleep 0.5", 'echo "::reops:: stat2"'], ["df -kP", "/proc/net/dev"]),
    (("cpu", "net"), 0, ['echo "::reops:: stat1"'], ["sleep", 'echo "::reops:: stat2"']),
    (("memory", "load", "disk"), 1.0, ["df -kP", "cat /proc/loadavg"], ["sleep"]),
])
def test_script(kinds: tuple[str, ...], interval: float, has: list[str],
                lacks: list[str]) -> None:
    cmd = metrics.metrics(*kinds, interval=interval).command_for(HOST)
    for text in has:
        assert text in cmd
    for text in lacks:
        assert text not in cmd


@pytest.mark.parametrize("call", [lambda: metrics.metrics("gpu"),
                                  lambda: metrics.metrics(interval=-1)])
def test_bad_arguments(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


def test_parse_real_debian12_sample() -> None:
    m = metrics.parse_metrics((DATA / "real-debian12-metrics.txt").read_text())
    assert (m.at, m.interval_s) == (1795780163.0, 1.0)
    assert m.cpu is not None
    # one jiffy of system time and 200 idle over the second: 1/201 busy
    assert (m.cpu.busy_pct, m.cpu.system_pct, m.cpu.idle_pct) == (0.5, 0.5, 99.5)
    assert m.memory == metrics.Memory(total=24684092 * 1024, available=24199260 * 1024,
                                      used=(24684092 - 24199260) * 1024, used_pct=1.96)
    assert m.load == metrics.Load(load1=2.2, load5=1.23, load15=0.53, running=1, procs=127)
    assert m.disks is not None
    assert [d.mount for d in m.disks] == ["/"]  # devtmpfs, tmpfs skipped
    root = m.disks[0]
    assert (root.fs, root.size_bytes, root.used_pct) == ("/dev/vda", 264212084 * 1024, 22.34)
    assert m.net is not None and [n.iface for n in m.net] == ["lo", "ifb0", "ifb1", "eth0"]
    assert m.net[3].rx_bytes == 217448952 and m.net[3].rx_bytes_s == 0.0
    assert m.entropy == 256


def test_parse_raw_counters_without_interval() -> None:
    m = metrics.parse_metrics((DATA / "real-debian12-metrics-raw.txt").read_text())
    assert m.interval_s is None
    assert m.cpu is not None and m.cpu.busy_pct is None and m.cpu.counters["user"] > 0
    assert m.net is not None and all(n.rx_bytes_s is None for n in m.net)


def test_rates_between_two_raw_samples_in_the_stream() -> None:
    """interval=0 plus cpu_rates/net_rates: what a stream does for long windows."""
    before = metrics.parse_cpu_counters("cpu  100 0 50 1000 10 0 0 0 0 0")
    after = metrics.parse_cpu_counters("cpu  160 0 70 1100 30 0 0 20 0 0")
    cpu = metrics.cpu_rates(before, after)  # deltas: 60 user, 20 sys, 100 idle, 20 io, 20 st
    assert (cpu.busy_pct, cpu.user_pct, cpu.system_pct) == (45.45, 27.27, 9.09)
    assert (cpu.iowait_pct, cpu.steal_pct, cpu.idle_pct) == (9.09, 9.09, 45.45)
    a = metrics.parse_net_dev(" eth0: 1000 10 0 0 0 0 0 0 500 5 0 0 0 0 0 0")
    b = metrics.parse_net_dev(" eth0: 21000 30 1 0 0 0 0 0 4500 9 0 0 0 0 0 0\n"
                              " wg0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0")
    rates = metrics.net_rates(a, b, 10.0)
    assert (rates[0].rx_bytes_s, rates[0].tx_bytes_s, rates[0].rx_packets_s) == (
        2000.0, 400.0, 2.0)
    assert rates[0].rx_errors == 1
    assert rates[1].rx_bytes_s is None  # appeared between samples: no rate yet


counters = st.lists(st.integers(min_value=0, max_value=10**12), min_size=8, max_size=8)


@given(counters, counters)
def test_cpu_shares_are_percentages(a: list[int], b: list[int]) -> None:
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    cpu = metrics.cpu_rates(dict(zip(names, a, strict=True)), dict(zip(names, b, strict=True)))
    parts = (cpu.busy_pct, cpu.user_pct, cpu.system_pct, cpu.iowait_pct, cpu.steal_pct,
             cpu.idle_pct)
    assert all(p is not None and 0.0 <= p <= 100.0 for p in parts)  # resets never go < 0


def test_df_skips_pseudo_filesystems_and_keeps_spaces_in_mounts() -> None:
    text = ("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
            "tmpfs 100 0 100 0% /run\n"
            "/dev/sdb1 1000 250 750 25% /mnt/my disk\n")
    assert metrics.parse_df(text) == [metrics.DiskUsage(
        mount="/mnt/my disk", fs="/dev/sdb1", size_bytes=1024000, used_bytes=256000,
        avail_bytes=768000, used_pct=25.0)]


def test_meminfo_before_memavailable() -> None:
    m = metrics.parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\n"
                              "Cached: 350 kB\nSwapTotal: 200 kB\nSwapFree: 150 kB\n")
    assert (m.available, m.used, m.used_pct, m.swap_used) == (
        500 * 1024, 500 * 1024, 50.0, 50 * 1024)


def test_live_sample_on_this_host() -> None:
    op = metrics.metrics(interval=0.2)
    p = subprocess.run(["sh", "-c", op.command_for(HOST)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert op.parse is not None
    m = op.parse(p.stdout)
    assert m.interval_s is not None and 0.1 <= m.interval_s < 5
    assert m.cpu is not None and m.cpu.busy_pct is not None and 0 <= m.cpu.busy_pct <= 100
    assert m.memory is not None and 0 < m.memory.used < m.memory.total
    assert m.load is not None and m.disks and m.net and m.entropy is not None
    assert any(d.mount == "/" for d in m.disks)
    df = pl.DataFrame([m.row(), m.row()])
    assert df.height == 2 and {"cpu_busy_pct", "mem_used_pct", "load1"} <= set(df.columns)
