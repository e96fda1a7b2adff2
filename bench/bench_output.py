"""Controller memory while every host prints a lot: the SSH output cap, measured.

    .venv/bin/python bench/bench_output.py [--hosts 50] [--mb 200] [--forks 256]
                                           [--max-output BYTES]

Brings up a lab of real sshd hosts on 127.0.5.1.. (own range, a free port), then runs one
`exec` step in this process where every host prints `--mb` MB of 'a' on stdout. Samples
this process's RSS every 50 ms while the step runs and reports the baseline, the peak
(VmHWM) and the per-stream cap in one JSON object. With the cap the peak stays near
baseline + hosts_in_flight x (max_output + one read chunk + asyncssh's channel window),
however much the hosts print. The lab goes down at the end, even on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reops.core.settings import Settings
from reops.lab.fleet import Lab
from reops.ops.shell import exec_
from reops.transports.ssh.executor import SshExecutor

FIRST_ADDRESS = "127.0.5.1"
SAMPLE_EVERY_S = 0.05


def status_kb(field: str) -> int:
    """A VmRSS/VmHWM figure of this process, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


async def measure(lab: Lab, mb: int, settings: Settings) -> dict[str, Any]:
    hosts = list(lab.info.as_hosts())
    ex = SshExecutor(settings)
    size = mb * 1_000_000
    op = exec_(f"head -c {size} /dev/zero | tr '\\0' 'a'")
    # connect first, so the figure is about output, not about handshakes
    warm = await asyncio.gather(*(ex.run(h, exec_("true")) for h in hosts))
    assert all(r.ok for r in warm), [r.err for r in warm if not r.ok]
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: peak of this step only
    base = status_kb("VmRSS")
    peak_sampled = base
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak_sampled
        while not done.is_set():
            peak_sampled = max(peak_sampled, status_kb("VmRSS"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), SAMPLE_EVERY_S)

    sampler = asyncio.ensure_future(sample())
    t0 = time.perf_counter()
    results = await asyncio.gather(*(ex.run(h, op) for h in hosts))
    elapsed = time.perf_counter() - t0
    done.set()
    await sampler
    await ex.close()
    bad = [r for r in results if not r.ok]
    longest = max(len(r.out) for r in results)
    return {
        "hosts": len(hosts), "mb_per_host": mb, "forks": settings.forks,
        "max_output_bytes": settings.max_output,
        "failed_hosts": len(bad), "first_error": bad[0].err if bad else "",
        "longest_out_chars": longest,
        "rss_before_kb": base, "rss_peak_sampled_kb": peak_sampled,
        "vm_hwm_kb": status_kb("VmHWM"),
        "growth_mb": round((peak_sampled - base) / 1024, 1),
        "bytes_streamed_gb": round(len(hosts) * size / 1e9, 2),
        "seconds": round(elapsed, 1),
        "throughput_mb_s": round(len(hosts) * size / 1e6 / elapsed, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--forks", type=int, default=Settings().forks)
    p.add_argument("--max-output", type=int, default=Settings().max_output,
                   help="bytes kept per stream (head + tail)")
    args = p.parse_args()
    settings = Settings(connect_timeout=60.0, command_timeout=3600.0, forks=args.forks,
                        max_output=args.max_output)
    with tempfile.TemporaryDirectory(prefix="reops-bench-output-") as tmp:
        lab = Lab(Path(tmp) / "lab", hosts=args.hosts, base_port=free_port(FIRST_ADDRESS),
                  first_address=FIRST_ADDRESS)
        lab.up()
        try:
            report = asyncio.run(measure(lab, args.mb, settings))
        finally:
            lab.down()
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
