"""Issue 13: several controllers share one job queue on a real PostgreSQL.

Real parts: Debian's PostgreSQL (tests/pg_server.py), controller PROCESSES running
`JobQueue` on `PgStore` (the runner below: what `reops hub` runs through
reops.systems.service, without the hub's agents), SIGKILL and SIGSTOP, `pg_ctl restart`,
and `reops systems create` on libvirt's test driver. Jobs are the queue's own ops with
handlers that only wait and write a ledger line per run: `sync` is idempotent (a re-run is
harmless), `snapshot` is not (each run is one ledger line, which must never be two).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from systems_fixtures import config_toml

from reops.store.model import Job, new_id
from reops.store.postgres import PgStore

REOPS = str(Path(sys.executable).with_name("reops"))
#: bound on any wait here: reaching it means the behaviour is wrong
WAIT = 60.0

RUNNER = r'''
"""One controller: JobQueue on the shared store until SIGTERM."""
import asyncio, logging, os, signal, sys

from reops.store.postgres import PgStore
from reops.store.queue import Cluster, JobQueue

url, name, ledger, lease = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
batch = int(sys.argv[5])
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
out = open(ledger, "a", buffering=1)  # a line per run, written before the job ends


async def work(job):
    out.write(f"{job.id}\n")
    hold = job.args.get("hold")
    while hold and not os.path.exists(hold):  # a job that runs until the test says so
        await asyncio.sleep(0.05)
    await asyncio.sleep(float(job.args.get("s", 0.01)))
    return {"by": name}


async def main():
    store = PgStore(url)
    q = JobQueue(store, {"sync": work, "snapshot": work}, limit=lambda op: 16,
                 cluster=Cluster(controller=name, lease_s=lease, poll_s=0.5, batch=batch))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await q.start()
    print("READY", flush=True)
    await stop.wait()
    await q.close()
    store.close()


asyncio.run(main())
'''


def until(what: str, ok: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll `ok` until it holds; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Controllers:
    """Controller processes on one store, each with its ledger and log."""

    def __init__(self, tmp: Path, url: str, lease: float, batch: int = 16) -> None:
        self.tmp, self.url, self.lease, self.batch = tmp, url, lease, batch
        self.script = tmp / "runner.py"
        self.script.write_text(RUNNER)
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen([sys.executable, str(self.script), self.url, name,
                              str(self.ledger(name)), str(self.lease), str(self.batch)],
                             stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("READY"), (line, self.log(name))
        self.procs[name] = p
        return p

    def ledger(self, name: str) -> Path:
        return self.tmp / f"{name}.ledger"

    def runs(self, name: str) -> list[str]:
        path = self.ledger(name)
        return path.read_text().split() if path.exists() else []

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for name, p in self.procs.items():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise AssertionError(f"{name} did not stop on SIGTERM: {self.log(name)}"
                                     ) from None


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStore]:
    s = PgStore(pg_url)
    yield s
    s.close()


@pytest.fixture
def controllers(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., Controllers]]:
    made: list[Controllers] = []

    def make(lease: float, batch: int = 16) -> Controllers:
        made.append(Controllers(tmp_path, pg_url, lease, batch))
        return made[-1]
    yield make
    for c in made:
        c.stop()


def queue(store: PgStore, n: int, **args: Any) -> list[Job]:
    """n jobs, sync and snapshot alternately (idempotent and not)."""
    jobs = [Job(id=new_id(), op="sync" if i % 2 else "snapshot", args=dict(args))
            for i in range(n)]
    store.put_jobs(jobs)
    return jobs


def ended(store: PgStore) -> bool:
    return not store.jobs(states=("queued", "running"))


def test_three_controllers_one_killed_every_job_ends_exactly_once(
        store: PgStore, controllers: Callable[[float], Controllers]) -> None:
    ctl = controllers(5.0)  # long enough that a loaded machine never delays a live renewal past it
    for name in ("ctl-a", "ctl-b", "ctl-c"):
        ctl.start(name)
    jobs = queue(store, 1000)  # all three wake on the NOTIFY

    def b_busy() -> bool:
        return (len(ctl.runs("ctl-b")) >= 20
                and len(store.jobs(states=("running",), controller="ctl-b")) >= 4)
    until("ctl-b to run 20 jobs and hold 4", b_busy)
    ctl.procs["ctl-b"].kill()  # SIGKILL mid-run: it holds claims on running jobs
    ctl.procs["ctl-b"].wait()
    killed_at = time.time()
    until("every job to end", lambda: ended(store))

    final = {j.id: j for j in store.jobs()}
    runs = {n: Counter(ctl.runs(n)) for n in ("ctl-a", "ctl-b", "ctl-c")}
    interrupted = [final[j.id] for j in jobs if final[j.id].state == "interrupted"]
    assert interrupted, "ctl-b was killed with no job running: the test proves nothing"
    for j in jobs:
        f = final[j.id]
        assert f.state in ("succeeded", "interrupted"), f
        if f.state == "succeeded":  # committed by the controller that ran it, which ran it once
            assert f.result["by"] == f.controller and runs[f.controller][f.id] == 1, f
            assert f.controller != "ctl-b" or (f.finished_at or 0) < killed_at, f
            continue
        assert f.controller == "ctl-b" and f.reason == "lease", f
        assert "controller ctl-b stopped renewing its lease (dead or stalled; taken over by" \
            " controller ctl-" in f.error, f
        if f.op == "sync":  # idempotent: re-run once, on a live controller
            retry = final[f.retried_by or ""]
            assert retry.state == "succeeded" and retry.retry_of == f.id, retry
            assert retry.controller in ("ctl-a", "ctl-c"), retry
        else:  # not idempotent: never run a second time
            assert f.retried_by is None and "not idempotent" in f.error, f
            assert sum(r[f.id] for r in runs.values()) <= 1, f
    retries = [j for j in final.values() if j.retry_of]
    assert len(final) == 1000 + len(retries)  # none lost, none made up
    assert {r.retry_of for r in retries} == {f.id for f in interrupted if f.op == "sync"}
    for name in ("ctl-a", "ctl-c"):  # the live ones took part, and beat
        assert store.jobs(controller=name), name
    assert {c.name for c in store.controllers()} >= {"ctl-a", "ctl-c"}


def test_a_stalled_controller_whose_lease_was_taken_over_records_nothing(
        store: PgStore, controllers: Callable[[float], Controllers], tmp_path: Path) -> None:
    ctl = controllers(2.0)
    go = tmp_path / "go"
    [job] = [Job(id=new_id(), op="snapshot", args={"hold": str(go)})]
    store.put_jobs([job])
    a = ctl.start("ctl-a")
    until("ctl-a to run the job", lambda: ctl.runs("ctl-a") == [job.id])
    a.send_signal(signal.SIGSTOP)  # stalled: no renewals, mid-job
    ctl.start("ctl-b")
    until("ctl-b to take the job over", lambda: store.job(job.id).state == "interrupted")
    taken = store.job(job.id)
    assert taken.controller == "ctl-a" and "taken over by controller ctl-b" in taken.error
    go.touch()
    a.send_signal(signal.SIGCONT)  # it wakes up, finishes the job: finish is fenced
    until("ctl-a to say it lost the lease",
          lambda: f"lost its lease on job {job.short_id}" in ctl.log("ctl-a"))
    ctl.stop()
    assert store.job(job.id) == taken  # nothing of ctl-a's run was written
    assert "nothing" in ctl.log("ctl-a")
    assert ctl.runs("ctl-b") == []  # not idempotent: not run again


def test_postgresql_restarted_under_load_nothing_is_lost(
        pg: Any, store: PgStore, controllers: Callable[[float], Controllers]) -> None:
    ctl = controllers(5.0)
    jobs = [Job(id=new_id(), op="sync", args={"s": 0.3}) for _ in range(600)]
    store.put_jobs(jobs)
    for name in ("ctl-a", "ctl-b", "ctl-c"):
        ctl.start(name)
    until("100 jobs to succeed", lambda: len(store.jobs(states=("succeeded",))) >= 100)
    assert len(store.jobs(states=("queued",))) > 200  # under load when it restarts
    pg.restart()  # every connection dropped: claims, renewals, finishes and LISTEN
    restarted = time.time()
    until("every job to end", lambda: ended(store))
    final = {j.id: j for j in store.jobs()}
    for j in jobs:
        f = final[j.id]
        while f.state == "interrupted" and f.retried_by:  # idempotent: re-run elsewhere
            f = final[f.retried_by]
        assert f.state == "succeeded", f
    assert any((f.finished_at or 0) > restarted for f in final.values())  # work went on
    for name in ("ctl-a", "ctl-b", "ctl-c"):
        assert ctl.procs[name].poll() is None, ctl.log(name)  # reconnected, not dead


def test_systems_create_runs_on_postgresql_through_the_cli(tmp_path: Path, pg_url: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {**os.environ, "REOPS_HOME": str(home), "REOPS_CONFIG": str(config_toml(tmp_path)),
           "REOPS_STORE_URL": pg_url, "REOPS_HUB_NAME": "ctl-cli"}

    def reops(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([REOPS, *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    s = PgStore(pg_url)
    foreign = Job(id=new_id(), op="snapshot", args={"name": "x"})  # queued by someone else
    s.put_jobs([foreign])
    reops("types", "add", "redis", "-d", "redis server")
    made = reops("systems", "create", "redis", "--preset", "small", "--count", "3")
    assert made.stderr.count("succeeded   create") == 3, made.stderr
    assert [m.state for m in s.systems()] == ["running"] * 3
    mine = reops("jobs", "ls", "--controller", "ctl-cli").stdout
    assert mine.count(" create ") == 3 and mine.count("succeeded") == 3, mine
    assert not (home / "machines.db").exists()  # all of it in PostgreSQL
    try:
        assert [(j.op, j.state, j.controller) for j in s.jobs() if j.id != foreign.id] == [
            ("create", "succeeded", "ctl-cli")] * 3
        # a passing command runs only what it queued: never picks up (and, exiting,
        # interrupts) another's job, and is no member of the controllers
        assert s.job(foreign.id) == foreign
        assert "ctl-cli" not in {c.name for c in s.controllers()}
    finally:
        s.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_passing_process_runs_only_the_jobs_it_queued(
        engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import asyncio

    from reops.store.base import JobStore
    from reops.store.queue import Cluster, JobQueue
    from reops.store.sqlite import Store

    db: JobStore = (Store(tmp_path / "machines.db") if engine == "sqlite"
                    else PgStore(request.getfixturevalue("pg_url")))
    foreign = Job(id=new_id(), op="sync")
    db.put_jobs([foreign])

    async def ok(job: Job) -> dict[str, Any]:
        return {}

    async def run() -> Job:
        q = JobQueue(db, {"sync": ok}, shared=True,
                     cluster=Cluster(controller="cli", lease_s=5, poll_s=0.1))
        await q.start(own_only=True)
        try:
            return await asyncio.wait_for(q.wait(q.submit("sync").id), WAIT)
        finally:
            await q.close()
    try:
        mine = asyncio.run(run())
        assert mine.state == "succeeded" and mine.controller == "cli"
        assert db.job(foreign.id) == foreign  # still queued, untouched
    finally:
        db.close()


def test_two_hubs_share_the_queue_a_job_queued_on_one_is_seen_on_the_other(
        tmp_path: Path, pg_url: str) -> None:
    """`reops hub` runs the machines' queue (reops.systems.service): two hubs on one
    PostgreSQL are two controllers; what one queued and ran, the other lists."""
    from concurrent.futures import ThreadPoolExecutor

    from reops.lab.agents import LabHub

    config = config_toml(tmp_path)
    hubs: dict[str, LabHub] = {}

    def env(name: str) -> dict[str, str]:
        return {"REOPS_STORE_URL": pg_url, "REOPS_HUB_NAME": name,
                "REOPS_CONFIG": str(config), "REOPS_STORE_LEASE": "3",
                "REOPS_STORE_POLL": "0.5", "REOPS_HUB_CONTROL": "",
                "REOPS_HUB_KEYS_DIR": "", "REOPS_HUB_BUS_IN": "tcp://127.0.0.1:*",
                "REOPS_HUB_BUS_OUT": "tcp://127.0.0.1:*"}

    def cli(name: str, *args: str) -> str:
        done = subprocess.run([REOPS, *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env(name),
                                   "REOPS_HOME": str(tmp_path / name)})
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    try:
        for name in ("ctl1", "ctl2"):
            (tmp_path / name).mkdir(mode=0o700)
            hubs[name] = LabHub(home=tmp_path / name, env=env(name), bind="tcp://127.0.0.1:*")
        with ThreadPoolExecutor(2) as pool:  # both start at once (each waits for its ping)
            list(pool.map(LabHub.start, hubs.values()))
        s = PgStore(pg_url)
        try:
            until("both hubs' queues to beat", lambda: {
                c.name for c in s.controllers() if "jobs" in c.load} >= {"ctl1", "ctl2"})
            queued = Job(id=new_id(), op="sync", args={"hypervisor": "lab"})
            s.put_jobs([queued])  # as a controller elsewhere would: the NOTIFY wakes them
            until("a hub to run it", lambda: s.job(queued.id).state == "succeeded")
            job = s.job(queued.id)
            assert job.controller in hubs, job
            assert {m.hostname for m in s.systems()} == {"legacy1", "legacy2"}  # imported
        finally:
            s.close()
        ran = cli("ctl1", "jobs", "ls", "--controller", job.controller or "")
        assert job.short_id in ran and "succeeded" in ran, ran  # asked through ctl1's hub
    finally:
        for h in hubs.values():
            h.stop(timeout=30)
        for name, h in hubs.items():
            assert "Traceback" not in h.log, (name, h.log[-3000:])


def test_a_systems_jobs_run_one_at_a_time_in_order_across_controllers(
        store: PgStore, controllers: Callable[[float], Controllers]) -> None:
    """Serialised per system cluster-wide, as one controller serialises them: a start
    never overlaps the create before it, whichever controllers claim them."""
    ctl = controllers(5.0, batch=1)  # one job each at a time: both take part
    for name in ("ctl-a", "ctl-b"):
        ctl.start(name)
    # s1's jobs are slow: a controller done with a quick s0 job must not start the next
    # s1 job while the other still runs the one before it
    jobs = [Job(id=new_id(), op="sync", system_id=f"s{i % 2}", args={"s": 0.3 if i % 2 else 0.02})
            for i in range(12)]
    store.put_jobs(jobs)
    until("every job to end", lambda: ended(store))
    final = [store.job(j.id) for j in jobs]
    assert {j.state for j in final} == {"succeeded"}
    for system in ("s0", "s1"):
        mine = [j for j in final if j.system_id == system]  # in the order queued
        for before, after in pairwise(mine):
            assert (before.finished_at or 0) <= (after.started_at or 0), (before, after)
    assert len({j.controller for j in final}) == 2  # both took part
