"""Machines benchmark: create+start+destroy of N domains, queue jobs/s, event latency.

    python bench/bench_machines.py [--domains 20] [--jobs 2000] [--qemu 0]

On libvirt's test driver (a custom node in a temp dir) through the real Machines service
and its durable queue; optionally on embedded QEMU (TCG, diskless, 64 MiB domains) with
`--qemu N`. Event latency is from libvirt's callback (in its event thread) to a subscriber
on the asyncio loop. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from systems_fixtures import node_uri, qemu_root

from reops.store.model import Job
from reops.store.queue import JobQueue
from reops.store.sqlite import Store
from reops.systems.config import load_machines_config
from reops.systems.machines import Machines


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def lifecycle(tmp: Path, hypervisor: str, uri: str, n: int, presets: list[str],
                    extra: str = "") -> dict[str, Any]:
    """create (define + start + IP) N, then stop N, then destroy N, all through the queue."""
    cfg = tmp / "config.toml"
    cfg.write_text(f'[hypervisors.{hypervisor}]\nuri = "{uri}"\n{extra}\n'
                   f"[machines]\nstop_timeout = 0.2\nip_timeout = 5\n"
                   f"concurrency = {{ create = {n}, stop = {n}, destroy = {n} }}\n")
    latencies: list[float] = []
    async with Machines.open(tmp, load_machines_config(cfg)) as m:
        m.add_type("bench")
        (await m.hypervisor_events(hypervisor)).subscribe(
            lambda ev: latencies.append(time.time() - ev.time))
        out: dict[str, Any] = {"domains": n}
        for step in ("create", "stop", "destroy"):
            t0 = time.perf_counter()
            if step == "create":
                jobs = await m.create("bench", [*presets, f"count={n}"])
            else:
                jobs = m.submit(step, "typed:bench")
            done = await m.wait(jobs)
            dt = time.perf_counter() - t0
            bad = [j.error for j in done if j.state != "succeeded"]
            if bad:
                raise SystemExit(f"{step} failed: {bad[0]}")
            out[f"{step}_s"] = round(dt, 3)
            out[f"{step}_jobs_per_s"] = round(n / dt, 1)
        out["total_s"] = round(out["create_s"] + out["stop_s"] + out["destroy_s"], 3)
        out["events"] = len(latencies)
        out["event_latency_ms_p50"] = round(statistics.median(latencies) * 1000, 3)
        out["event_latency_ms_p95"] = round(pct(latencies, 0.95) * 1000, 3)
        return out


async def queue_throughput(tmp: Path, jobs: int) -> dict[str, Any]:
    """Pure queue overhead: no-op jobs, each persisted 3 times (queued, running, done)."""
    store = Store(tmp / "queue.db")

    async def noop(job: Job) -> None:
        return None

    q = JobQueue(store, {"start": noop}, limit=lambda op: 64)
    await q.start()
    t0 = time.perf_counter()
    submitted = [q.submit("start", None) for _ in range(jobs)]
    for j in submitted:
        await q.wait(j.id)
    dt = time.perf_counter() - t0
    await q.close()
    store.close()
    return {"jobs": jobs, "seconds": round(dt, 3), "jobs_per_s": round(jobs / dt, 1)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--qemu", type=int, default=0, help="also N domains on embedded QEMU")
    a = ap.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "test").mkdir()
        result["test_driver"] = await lifecycle(
            tmp / "test", "lab", node_uri(tmp / "test"), a.domains, ["tiny", "debian-12"])
        (tmp / "queue").mkdir()
        result["queue_noop"] = await queue_throughput(tmp / "queue", a.jobs)
        if a.qemu:
            (tmp / "qemu").mkdir()
            result["embedded_qemu"] = await lifecycle(
                tmp / "qemu", "qemu", f"qemu:///embed?root={qemu_root()}", a.qemu,
                ["tiny", "ram=64", "disk_gb=0"], extra='network = ""\n')
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
