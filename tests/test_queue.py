"""The durable job queue: bounds, order, events, and surviving a SIGKILL of its process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from reops.store.model import Job, JobEvent, MachinesError
from reops.store.queue import JobQueue
from reops.store.sqlite import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "machines.db")
    yield s
    s.close()


class Gate:
    """Handlers that block until released, recording how many ran at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.order: list[str] = []
        self.release = asyncio.Event()
        self.started = asyncio.Queue[str]()

    async def handler(self, job: Job) -> dict[str, Any]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.order.append(job.args.get("tag", job.op))
        await self.started.put(job.id)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        if job.args.get("fail"):
            raise MachinesError("it broke")
        return {"tag": job.args.get("tag")}


@pytest.fixture
async def gate_queue(store: Store) -> AsyncIterator[tuple[JobQueue, Gate]]:
    gate = Gate()
    handlers = {op: gate.handler for op in ("create", "start", "stop", "snapshot")}
    q = JobQueue(store, handlers, limit=lambda op: {"create": 2}.get(op, 8))
    await q.start()
    yield q, gate
    await q.close()


async def test_concurrency_is_bounded_per_operation(gate_queue: tuple[JobQueue, Gate]) -> None:
    q, gate = gate_queue
    jobs = [q.submit("create", None, tag=f"c{i}") for i in range(5)]
    stops = [q.submit("stop", None, tag=f"s{i}") for i in range(3)]
    for _ in range(2 + 3):  # two creates (the bound) and every stop start at once
        await gate.started.get()
    assert gate.peak == 5 and gate.order.count("c0") == 1 and gate.started.empty()
    gate.release.set()
    done = [await q.wait(j.id) for j in jobs + stops]
    assert all(j.state == "succeeded" for j in done)
    assert sorted(gate.order) == sorted([*(f"c{i}" for i in range(5)),
                                         *(f"s{i}" for i in range(3))])


async def test_jobs_of_one_system_run_in_order(gate_queue: tuple[JobQueue, Gate]) -> None:
    q, gate = gate_queue
    gate.release.set()
    sid = "f" * 40
    jobs = [q.submit(op, sid, tag=op) for op in ("create", "start", "snapshot", "stop")]
    await asyncio.gather(*(q.wait(j.id) for j in jobs))
    assert gate.order == ["create", "start", "snapshot", "stop"]
    assert gate.peak == 1


async def test_events_and_failures(gate_queue: tuple[JobQueue, Gate], store: Store) -> None:
    q, gate = gate_queue
    events: list[JobEvent] = []
    q.events.subscribe(events.append)
    gate.release.set()
    ok = q.submit("start", None, tag="ok")
    bad = q.submit("start", None, tag="bad", fail=True)
    assert (await q.wait(ok.id)).result == {"tag": "ok"}
    failed = await q.wait(bad.id)
    assert (failed.state, failed.error) == ("failed", "it broke")
    assert store.job(bad.id[:6]).state == "failed"  # on disk too
    kinds = [(e.job.id, e.event) for e in events]
    assert [k for i, k in kinds if i == ok.id] == ["queued", "started", "succeeded"]
    assert [k for i, k in kinds if i == bad.id] == ["queued", "started", "failed"]


async def test_one_runner_per_store(store: Store, gate_queue: tuple[JobQueue, Gate]) -> None:
    other = JobQueue(store, {})
    with pytest.raises(MachinesError, match=rf"run by another process \(pid {os.getpid()}\)"):
        await other.start()


# ── SIGKILL mid-job, then restart: nothing lost ─────────────────────────────────────────

RUNNER = textwrap.dedent("""
    import asyncio, sys
    from reops.store.queue import JobQueue
    from reops.store.sqlite import Store

    async def main():
        store = Store(sys.argv[1])
        started = 0
        async def hang(job):
            nonlocal started
            started += 1
            print("STARTED", job.op, job.args["tag"], flush=True)
            if started == 2:
                print("READY", flush=True)
            await asyncio.Event().wait()  # forever: the test kills us here
        q = JobQueue(store, {"start": hang, "snapshot": hang}, limit=lambda op: 1)
        await q.start()
        q.submit("start", "a" * 40, tag="c1")      # runs, gets killed: idempotent, retried
        q.submit("start", "b" * 40, tag="c2")      # queued behind the bound of 1
        q.submit("snapshot", "a" * 40, tag="s2")   # queued behind c1 on the same system
        q.submit("snapshot", "c" * 40, tag="s1")   # runs, gets killed: not retried
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_sigkill_mid_job_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "machines.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(db)], stdout=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks until the child says both jobs are running
            lines.append(line.split())
            if line.startswith("READY"):
                break
        assert sorted(x[2] for x in lines if x[0] == "STARTED") == ["c1", "s1"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    store = Store(db)
    before = {j.args["tag"]: j for j in store.jobs()}
    assert {t: j.state for t, j in before.items()} == {
        "c1": "running", "c2": "queued", "s1": "running", "s2": "queued"}

    ran: list[str] = []

    async def ok(job: Job) -> dict[str, Any]:
        ran.append(job.args["tag"])
        return {"ran": job.args["tag"]}

    q = JobQueue(store, {"start": ok, "snapshot": ok}, limit=lambda op: 1)
    interrupted = await q.start()
    try:
        assert sorted(j.args["tag"] for j in interrupted) == ["c1", "s1"]
        c1, s1 = (store.job(before[t].id) for t in ("c1", "s1"))
        assert c1.state == "interrupted" and c1.retried_by is not None
        assert f"(pid {proc.pid})" in c1.error and "retried as job" in c1.error
        assert s1.state == "interrupted" and s1.retried_by is None
        assert "not retried because snapshot is not idempotent" in s1.error
        finished = {t: await q.wait(before[t].id) for t in ("c1", "c2", "s1")}
        assert finished["c1"].state == "succeeded" and finished["c1"].retry_of == c1.id
        assert finished["c1"].attempt == 2
        assert finished["c2"].state == "succeeded"
        assert finished["s1"].state == "interrupted"
        finished_s2 = (await q.wait(before["s2"].id)).state
        assert finished_s2 == "succeeded"
        assert sorted(ran) == ["c1", "c2", "s2"]
        assert ran.index("c1") < ran.index("s2")  # the retry kept its place on system a
    finally:
        await q.close()
        store.close()
