"""Issue 8, the job queue under partial failure: what a crash, a hung hypervisor or a failed
write leaves behind. Real parts: a real SQLite store, real runner processes killed with
SIGKILL, libvirt's test driver, real threads blocked like a hung libvirt call.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from systems_fixtures import config_toml

from reops.core.model import Result
from reops.store.model import Job, System, Type
from reops.store.queue import JobQueue, QueueLock
from reops.store.sqlite import Store
from reops.systems.config import load_machines_config
from reops.systems.libvirt.hypervisor import in_thread
from reops.systems.machines import Machines

#: bound on waiting for a job in these tests: reaching it means the behaviour is wrong
WAIT = 60.0


def _run_until(script: str, *args: str, marker: str = "READY") -> int:
    """Run `script` in a new Python process until it prints `marker`, then SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks until the child says it is mid-job
            if line.startswith(marker):
                break
        else:
            raise AssertionError(f"the runner exited ({proc.wait()}) before {marker}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.pid


# ── the store: private and durable ───────────────────────────────────────────────────────


def test_store_is_private_and_fully_synchronous(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store(home / "machines.db")
    try:
        assert stat.S_IMODE((home / "machines.db").stat().st_mode) == 0o600
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert store.pragma("synchronous") == 2  # FULL
        store.put_job(Job(id="a" * 40, op="sync"))
        assert stat.S_IMODE((home / "machines.db-wal").stat().st_mode) == 0o600
        lock = QueueLock(home / "machines.db.queue.lock")
        lock.acquire()
        lock.release()
        assert stat.S_IMODE((home / "machines.db.queue.lock").stat().st_mode) == 0o600
    finally:
        store.close()


def test_a_loose_store_file_is_tightened_on_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "machines.db").touch()
    (home / "machines.db").chmod(0o644)
    (home / "machines.db-wal").touch()
    (home / "machines.db-wal").chmod(0o644)
    store = Store(home / "machines.db")
    try:
        store.put_job(Job(id="a" * 40, op="sync"))
        for name in ("machines.db", "machines.db-wal", "machines.db-shm"):
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    finally:
        store.close()


# ── interrupted jobs: retried only when idempotent and recent ────────────────────────────

RUNNER = textwrap.dedent("""
    import asyncio, sys
    from reops.store.queue import JobQueue, QueueLock
    from reops.store.sqlite import Store

    async def main():
        async def hang(job):
            print("READY", job.op, flush=True)
            await asyncio.Event().wait()  # forever: the test kills us here
        q = JobQueue(Store(sys.argv[1]), {sys.argv[2]: hang})
        await q.start()
        q.submit(sys.argv[2], "a" * 40)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


@pytest.mark.parametrize("op,within,retried", [
    ("destroy", 600.0, True),    # idempotent, began moments ago: run again
    ("destroy", 0.0, False),     # idempotent, but older than the maximum age
    ("revert", 600.0, False),    # not idempotent, however recent
])
async def test_interrupted_job_is_retried_only_when_idempotent_and_recent(
        tmp_path: Path, op: str, within: float, retried: bool) -> None:
    db = tmp_path / "machines.db"
    pid = _run_until(RUNNER, str(db), op)
    store = Store(db)
    ran: list[Job] = []

    async def ok(job: Job) -> dict[str, Any]:
        ran.append(job)
        return {"ok": True}

    q = JobQueue(store, {op: ok}, retry_within=within)
    try:
        (first,) = await q.start()
        assert first.state == "interrupted" and f"(pid {pid})" in first.error
        assert first.reason == "crash"
        async with asyncio.timeout(WAIT):
            final = await q.wait(first.id)
        if retried:
            assert "retried as job" in first.error
            assert final.state == "succeeded" and final.retry_of == first.id
            assert [j.id for j in ran] == [final.id]
        else:
            assert first.retried_by is None and final == first and ran == []
            assert f"run `reops systems {op} aaaaaaa" in first.error
            assert (f"retry_interrupted_within = {within:g}s" in first.error if op == "destroy"
                    else "not retried because revert is not idempotent" in first.error)
        assert len(store.jobs()) == (2 if retried else 1)
    finally:
        await q.close()
        store.close()


def test_interrupt_and_its_retry_are_one_transaction(tmp_path: Path) -> None:
    """A failure between the two writes (here: the retry's insert fails inside SQLite) leaves
    neither: the job is still `running` for the next start, never "retried as" a ghost."""
    db = tmp_path / "machines.db"
    pid = _run_until(RUNNER, str(db), "destroy")
    other = sqlite3.connect(db)  # a second, ordinary connection to the same file
    other.executescript("""
        CREATE TRIGGER no_retries BEFORE INSERT ON jobs
        WHEN json_extract(NEW.data, '$.retry_of') IS NOT NULL
        BEGIN SELECT RAISE(ABORT, 'disk full'); END;
    """)
    store = Store(db)

    async def ok(job: Job) -> dict[str, Any]:
        return {}

    async def start_twice() -> Job:
        q = JobQueue(store, {"destroy": ok})
        with pytest.raises(sqlite3.IntegrityError, match="disk full"):
            await q.start()
        (job,) = store.jobs()
        assert (job.state, job.retried_by, job.error) == ("running", None, "")
        other.executescript("DROP TRIGGER no_retries;")
        q = JobQueue(store, {"destroy": ok})  # the lock was released: a new start works
        (first,) = await q.start()
        async with asyncio.timeout(WAIT):
            final = await q.wait(first.id)
        await q.close()
        return final

    try:
        final = asyncio.run(start_twice())
        assert final.state == "succeeded" and final.attempt == 2
        assert f"(pid {pid})" in store.job(final.retry_of or "").error
    finally:
        other.close()
        store.close()


# ── create, then provisioning as its own job ─────────────────────────────────────────────

PROVISIONING = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from reops.systems.config import load_machines_config
    from reops.systems.machines import Machines

    async def main():
        root, marker = Path(sys.argv[1]), Path(sys.argv[2])
        async def provision(system, type_):
            with marker.open("a") as f:
                f.write(system.hostname + "\\n")
            print("READY", flush=True)
            await asyncio.Event().wait()  # mid-recipe: the test kills us here
        m = Machines.open(root, load_machines_config(root / "config.toml"), provision=provision)
        async with m:
            m.add_type("redis", provision="flows/redis.py")
            await m.create("redis", ["tiny"], hostname="p1")
            await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_create_killed_while_provisioning_is_not_created_again(tmp_path: Path) -> None:
    config_toml(tmp_path)
    marker = tmp_path / "provisioned"
    pid = _run_until(PROVISIONING, str(tmp_path), str(marker))
    assert marker.read_text() == "p1\n"
    provisioned: list[str] = []

    async def provision(s: System, t: Type) -> Result:
        with marker.open("a") as f:
            f.write(s.hostname + "\n")
        provisioned.append(s.hostname)
        return Result(host=s.hostname, op="provision", status="ok", code=0)

    async with Machines.open(tmp_path, load_machines_config(tmp_path / "config.toml"),
                             provision=provision) as m:
        async with asyncio.timeout(WAIT):
            done = await m.wait(m.jobs())  # whatever the restart queued has run
        assert marker.read_text() == "p1\n" and provisioned == []  # the recipe ran once
        create, prov = m.jobs()
        assert (create.op, create.state, create.followed_by) == ("create", "succeeded", prov.id)
        assert (prov.op, prov.state, prov.follows, prov.retried_by) == (
            "provision", "interrupted", create.id, None)
        assert f"(pid {pid})" in prov.error
        assert "not retried because provision is not idempotent" in prov.error
        assert f"`reops systems provision {create.system_id[:7]}`" in prov.error
        assert [j.id for j in done] == [prov.id, prov.id]  # create is followed to it
        assert m.systems("p1")[0].state == "running"


async def test_create_queues_provisioning_and_wait_follows_it(tmp_path: Path) -> None:
    ran: list[str] = []

    async def provision(s: System, t: Type) -> Result:
        ran.append(s.hostname)
        return Result(host=s.hostname, op="provision", status="ok", code=0, out="done\n")

    async with Machines.open(tmp_path, load_machines_config(config_toml(tmp_path)),
                             provision=provision) as m:
        m.add_type("redis", provision="flows/redis.py")
        m.add_type("bare")
        (created,) = await m.create("redis", ["tiny"], hostname="r1")
        (bare,) = await m.create("bare", ["tiny"], hostname="b1")
        async with asyncio.timeout(WAIT):
            finished = await m.wait([created, bare])
        assert [(j.op, j.state) for j in finished] == [
            ("provision", "succeeded"), ("create", "succeeded")]
        assert finished[0].follows == created.id and ran == ["r1"]
        assert m.job(created.id).result["provision"] == "flows/redis.py (queued)"
        assert m.job(bare.id).followed_by is None


# ── deadlines: a hung call fails its job and frees the slot ──────────────────────────────


async def test_a_hung_call_fails_as_timeout_and_frees_the_slot(tmp_path: Path) -> None:
    store = Store(tmp_path / "machines.db")
    hung = threading.Event()  # never set while the job runs: a libvirtd that never answers

    async def stop(job: Job) -> dict[str, Any]:
        if job.args["hang"]:
            await in_thread(hung.wait)  # a blocking call in its own thread, as libvirt's
        return {"stopped": True}

    q = JobQueue(store, {"stop": stop}, limit=lambda op: 1,
                 deadline=lambda op: {"stop": 0.2}.get(op, 3600.0))
    await q.start()
    try:
        first = q.submit("stop", "a" * 40, hang=True)
        second = q.submit("stop", "b" * 40, hang=False)  # waits for the only stop slot
        async with asyncio.timeout(WAIT):
            timed_out, after = await q.wait(first.id), await q.wait(second.id)
        assert (timed_out.state, timed_out.reason) == ("failed", "timeout")
        assert timed_out.error.startswith("timeout: stop did not finish within 0.2s")
        assert "\n" not in timed_out.error and "reops systems stop aaaaaaa" in timed_out.error
        assert after.state == "succeeded"
    finally:
        hung.set()
        await q.close()
        store.close()


def test_deadlines_and_retry_age_come_from_the_config(tmp_path: Path) -> None:
    cfg = load_machines_config(config_toml(
        tmp_path, extra="retry_interrupted_within = 30\n\n[machines.deadlines]\nsnapshot = 9\n"))
    s = cfg.settings
    assert (s.retry_interrupted_within, s.deadline("snapshot")) == (30, 9)
    assert s.deadline("stop") > s.stop_timeout and s.deadline("start") > s.ip_timeout



def test_a_job_as_a_result_says_lost_or_timeout() -> None:
    """Streams over machines: an interrupted job may have run (lost), a deadline is timeout."""
    from reops.systems.streams import job_result

    def status(**changes: Any) -> str:
        return job_result("h1", Job(id="a" * 40, op="stop", **changes), 0.0).status

    assert status(state="interrupted", error="interrupted: …") == "lost"
    assert status(state="failed", reason="timeout", error="timeout: …") == "timeout"
    assert status(state="failed", reason="error", error="it broke") == "failed"
    assert status(state="succeeded") == "ok"
