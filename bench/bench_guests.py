"""Guests benchmark: create -> SSH-reachable per guest, N at once, guest RSS, provisioning.

    python bench/bench_guests.py [--guests 10] [--single 3]

The tiny image (reops images build tiny, cached per package versions) on embedded QEMU
(TCG) through the real Machines service and its queue, in a private REOPS_HOME and QEMU
root under /tmp. Per guest: its create job's duration (overlay, seed, define, boot, wait
for SSH's banner). First `--single` guests one after another, then `--guests` at once
(create concurrency raised to match). Then each QEMU's RSS, a provisioning round trip
over all guests (a one-command recipe), and destroy. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2) if xs else 0.0


def _rss_mib(root: str) -> list[float]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            if b"qemu-system" not in cmd or root.encode() not in cmd:
                continue
            for line in (d / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return out


async def main(guests: int, single: int) -> dict[str, Any]:
    from reops.systems import images
    from reops.systems.api import connect

    home = Path(os.environ["REOPS_HOME"])
    root = os.environ["BENCH_QEMU_ROOT"]
    pool = images.pool_for(f"qemu:///embed?root={root}", "default")
    t0 = time.monotonic()
    images.install_tiny(pool, Path(os.environ.get("BENCH_IMAGE_CACHE",
                                                   "/var/tmp/reops-test-images")))
    build_s = time.monotonic() - t0
    recipe = home / "bench_recipe.py"
    recipe.write_text("from reops import exec_\n\ndef provision(hosts):\n"
                      "    return exec_(hosts, 'echo ok > /root/provisioned')\n")
    api = await connect(hub=False)
    try:
        await api.add_type("bench", "bench guests", None, {})
        await api.add_type("benchp", "bench guests", str(recipe), {})

        def took(j: Any) -> float:
            return float((j.finished_at or 0) - (j.started_at or 0))

        one: list[float] = []
        for _ in range(single):
            jobs = await api.create("bench", ["tiny", "image=tiny"], 1, None, None)
            done = await api.wait(jobs)
            assert all(j.state == "succeeded" for j in done), [j.error for j in done]
            one += [took(j) for j in done]
            await api.wait(await api.submit("destroy", "typed:bench"))
        t0 = time.monotonic()
        jobs = await api.create("bench", ["tiny", "image=tiny"], guests, None, None)
        done = await api.wait(jobs)
        wall = time.monotonic() - t0
        failed = [j.error for j in done if j.state != "succeeded"]
        many = [took(j) for j in done if j.state == "succeeded"]
        rss = _rss_mib(root)
        running = await api.systems("typed:bench & running")
        await api.wait(await api.submit("destroy", "typed:bench"))
        # provisioning round trip: its own guests with a recipe, after create's own run
        made = await api.wait(await api.create("benchp", ["tiny", "image=tiny"], 2, None,
                                               None))
        assert all(j.state == "succeeded" for j in made), [j.error for j in made]
        t0 = time.monotonic()
        prov = await api.wait(await api.submit("provision", "typed:benchp"))
        prov_s = time.monotonic() - t0
        await api.wait(await api.submit("destroy", "typed:benchp"))
    finally:
        await api.aclose()
    return {
        "image_install_s": round(build_s, 2),
        "single": {"n": len(one), "create_to_ssh_p50_s": _pct(one, 0.5),
                   "create_to_ssh_p95_s": _pct(one, 0.95)},
        "parallel": {"n": guests, "ok": len(many), "failed": failed[:3],
                     "create_to_ssh_p50_s": _pct(many, 0.5),
                     "create_to_ssh_p95_s": _pct(many, 0.95), "wall_s": round(wall, 2),
                     "running": len(running)},
        "guest_rss_mib": {"n": len(rss), "mean": round(statistics.mean(rss), 1) if rss else 0,
                          "max": round(max(rss), 1) if rss else 0},
        "provision_round_trip_s": {"guests": 2, "wall_s": round(prov_s, 2),
                                   "ok": sum(j.state == "succeeded" for j in prov)},
        "cpus": os.cpu_count(),
    }


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, default=10)
    ap.add_argument("--single", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reops-bench-guests-"))
    root = f"/tmp/rbg-{os.getpid()}"  # QEMU's monitor socket path must stay short
    home = tmp / "home"
    home.mkdir(mode=0o700)
    config = home / "config.toml"
    config.write_text(f'[hypervisors.local]\nuri = "qemu:///embed?root={root}"\n\n'
                      f"[machines]\nip_timeout = 300\nstop_timeout = 10\n"
                      f"concurrency = {{create = {max(a.guests, 1)}}}\ndefault_concurrency = 16\n")
    os.environ.update(REOPS_HOME=str(home), REOPS_CONFIG=str(config), BENCH_QEMU_ROOT=root)
    try:
        print(json.dumps(asyncio.run(main(a.guests, a.single)), indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    run()
