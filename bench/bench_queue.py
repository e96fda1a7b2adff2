"""Jobs/s through the job queue: SQLite vs PostgreSQL, 1 and 3 controller processes.

    .venv/bin/python bench/bench_queue.py [--jobs 2000] [--controllers 1,3]

Issue 13: no-op jobs (the handler returns at once) through `JobQueue` on a shared store,
claims in batches (`QueueStore.claim`), one fenced `finish` per job. Each controller is a
process of its own (the runner below), started on an empty queue; then the jobs are queued
in one transaction and the clock runs until the last one has succeeded. Reports jobs/s and
p50/p95 of the claim call (one transaction claiming up to a batch) per engine and count.

SQLite here is the same claims over one file (`JobQueue(shared=True)`); `reops` itself runs
one queue process per SQLite store (the flock), so its 3-controller row is what the
PostgreSQL engine is for. The PostgreSQL server is a private cluster started for the run
(tests/pg_server.py: Debian's binaries, fsync off as in the tests) and removed at the end.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from reops.store.base import JobStore
from reops.store.model import Job, new_id
from reops.store.postgres import PgStore
from reops.store.sqlite import Store

RUNNER = r'''
import asyncio, json, signal, sys, time

from reops.store.queue import Cluster, JobQueue

url, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
if url.startswith("postgresql"):
    from reops.store.postgres import PgStore
    store = PgStore(url)
else:
    from reops.store.sqlite import Store
    store = Store(url)
claims = []
claim = store.claim


def timed(*args):
    t = time.perf_counter()
    got = claim(*args)
    if got:
        claims.append(time.perf_counter() - t)
    return got


store.claim = timed


async def noop(job):
    return None


async def main():
    q = JobQueue(store, {"sync": noop}, limit=lambda op: 64, shared=True,
                 cluster=Cluster(controller=name, lease_s=30, poll_s=0.05, batch=64))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await q.start()
    print("READY", flush=True)
    await stop.wait()
    await q.close()
    with open(out, "w") as f:
        json.dump(claims, f)


asyncio.run(main())
'''


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def run(where: str, url: str, open_store: Any, controllers: int, jobs: int,
        tmp: Path) -> dict[str, Any]:
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    store: JobStore = open_store()
    procs, outs = [], []
    try:
        for i in range(controllers):
            out = tmp / f"{where}-{controllers}-{i}.json"
            outs.append(out)
            p = subprocess.Popen([sys.executable, str(script), url, f"ctl{i}", str(out)],
                                 stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None and p.stdout.readline().startswith("READY")
            procs.append(p)
        batch = [Job(id=new_id(), op="sync") for _ in range(jobs)]
        t0 = time.perf_counter()
        store.put_jobs(batch)
        deadline = time.monotonic() + 600
        while store.jobs(states=("queued", "running"), limit=1):
            if time.monotonic() > deadline:
                raise SystemExit(f"{where} x{controllers}: jobs still pending after 600 s")
            time.sleep(0.02)
        took = time.perf_counter() - t0
        done = store.jobs(states=("succeeded",))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        store.close()
    lat = [x for o in outs if o.exists() for x in json.loads(o.read_text())]
    per = {f"ctl{i}": sum(1 for j in done if j.controller == f"ctl{i}")
           for i in range(controllers)}
    return {"engine": where, "controllers": controllers, "jobs": len(done),
            "seconds": round(took, 3), "jobs_per_s": round(len(done) / took, 1),
            "claim_p50_ms": round(pct(lat, 0.5) * 1000, 2),
            "claim_p95_ms": round(pct(lat, 0.95) * 1000, 2),
            "claims": len(lat), "per_controller": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--controllers", default="1,3")
    args = ap.parse_args()
    counts = [int(c) for c in args.controllers.split(",")]
    from pg_server import PgServer, pg_bin

    bindir = pg_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    server = PgServer(bindir)
    server.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="reops-bench-queue-") as d:
            tmp = Path(d)
            for n in counts:
                db = tmp / f"sqlite-{n}" / "machines.db"
                rows.append(run("sqlite", str(db), lambda db=db: Store(db), n, args.jobs,
                                tmp))
                url = server.url()
                # a fresh schema per run: drop what the last one left
                s = PgStore(url)
                s._pg.run(lambda c: c.execute("TRUNCATE jobs, controllers"), what="reset")
                s.close()
                rows.append(run("postgresql", url, lambda url=url: PgStore(url), n,
                                args.jobs, tmp))
    finally:
        server.stop()
    print(json.dumps({"cpus": os.cpu_count(), "jobs": args.jobs, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
