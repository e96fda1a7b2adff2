"""Failover time: a controller running a flow is killed (-9); how long until a peer runs it.

Two real `reops hub` processes on one real PostgreSQL (Debian's binaries, a private cluster
as in the tests): a flow firing every 0.2 s is started on ctl1, ctl1 is killed, and the
clock runs until the flow's audit shows ctl2 taking it over and then firing. The bound by
design is `[cluster] lease_s` plus one renewal (lease/3); this measures it, per lease.

    python bench/bench_failover.py                     # leases 3 s and 15 s (the default), 3 each
    python bench/bench_failover.py --leases 5 --runs 5
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg_server import PgServer, pg_bin

from reops.lab.agents import LabHub
from reops.store.pg_flows import PgFlowStore

FLOW = '''\
"""A clock on the runtime loop: each tick is a firing in the audit."""
import reactivex
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler

from reops.core.runtime import get_runtime
from reops.flows import flow


@flow
def tick(every: float = 0.2) -> object:
    """Fire every EVERY seconds."""
    return reactivex.interval(every, scheduler=AsyncIOThreadSafeScheduler(get_runtime().loop))
'''


def hub(root: Path, name: str, url: str, lease: float) -> LabHub:
    home = root / name
    home.mkdir(mode=0o700)
    env = {"REOPS_STORE_URL": url, "REOPS_HUB_NAME": name,
           "REOPS_CLUSTER_LEASE_S": str(lease), "REOPS_HUB_CONTROL": "",
           "REOPS_HUB_KEYS_DIR": "", "REOPS_HUB_BUS_IN": "tcp://127.0.0.1:*",
           "REOPS_HUB_BUS_OUT": "tcp://127.0.0.1:*"}
    return LabHub(home=home, bind="tcp://127.0.0.1:*", env=env).start()


def one(server: PgServer, lease: float) -> tuple[float, float]:
    """(seconds to the take-over row, seconds to ctl2's first firing) after kill -9."""
    db = f"b_{os.urandom(6).hex()}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
    url = server.url(db)
    store = PgFlowStore(url)
    root = Path(tempfile.mkdtemp(prefix="reops-failover-"))
    a = b = None
    try:
        a, b = hub(root, "ctl1", url, lease), hub(root, "ctl2", url, lease)
        (root / "tick.py").write_text(FLOW)
        env = {**os.environ, **a.env, "REOPS_HOME": str(a.home)}
        subprocess.run([sys.executable, "-m", "reops.cli.main", "flows", "start",
                        str(root / "tick.py")], env=env, check=True, capture_output=True,
                       timeout=120)
        wait(lambda: any(r.controller == "ctl1" for r in store.audit("tick")
                         if r.status == "fired"), "ctl1 firing")
        assert a.proc is not None
        t0 = time.monotonic()
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        taken = wait(lambda: any(r.status == "taken-over" for r in store.audit("tick")),
                     "the take-over", lease * 4 + 30) - t0
        firing = wait(lambda: any(r.controller == "ctl2" and r.status == "fired"
                                  for r in store.audit("tick")), "ctl2 firing") - t0
        return taken, firing
    finally:
        for h in (a, b):
            if h is not None and h.proc is not None and h.proc.poll() is None:
                h.stop(signal.SIGKILL)
        store.close()
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def wait(check: object, what: str, timeout: float = 60.0) -> float:
    """Poll `check` (every 20 ms: the resolution of the figures) until true; when it was."""
    end = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > end:
            raise SystemExit(f"bench_failover: timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leases", default="3,15", help="lease_s values, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    bindir = pg_bin()
    if bindir is None:
        raise SystemExit("bench_failover: PostgreSQL is not installed "
                         "(apt-get install postgresql)")
    server = PgServer(bindir)
    server.start()
    try:
        print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print("lease_s  renew  take-over p50 / max   first firing on ctl2 p50 / max   bound")
        for lease in (float(x) for x in args.leases.split(",")):
            got = [one(server, lease) for _ in range(args.runs)]
            taken, firing = [t for t, _ in got], [f for _, f in got]
            print(f"{lease:7g}  {lease / 3:5.1f}  {statistics.median(taken):8.2f} / "
                  f"{max(taken):5.2f} s   {statistics.median(firing):14.2f} / "
                  f"{max(firing):5.2f} s   {lease + lease / 3:5.1f} s", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
