"""The durable job queue: jobs in SQLite, asyncio workers, job events as an Observable.

A job is on disk before `submit` returns. Workers are bounded per operation (so twenty
creates do not overwhelm a hypervisor while a stop still runs at once) and serialized per
system (a start waits for that system's create). One process at a time runs the queue
(an flock next to the store); when it dies mid-job, the next one to start it marks that
job interrupted, says so, and re-queues it when the operation is safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec
import reactivex as rx
from reactivex.subject import Subject

from reops.systems.model import (
    Job,
    JobEvent,
    JobEventKind,
    JobOp,
    MachinesError,
    System,
    new_id,
)
from reops.systems.store import Store

Handler = Callable[[Job], Awaitable[Mapping[str, Any] | None]]

#: operations whose handlers are idempotent, so an interrupted run may simply run again
RETRY_SAFE: frozenset[str] = frozenset(
    {"create", "start", "stop", "destroy", "clear", "reload", "revert", "sync"}
)


class QueueLock:
    """One queue runner per store: an exclusive flock, released when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "?"
            f.close()
            raise MachinesError(
                f"the job queue for {self.path.parent} is run by another process (pid {owner});"
                " stop it or send the work there (`reops hub`)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class JobQueue:
    """Runs stored jobs with per-operation bounds; `events` reports every state change."""

    def __init__(
        self,
        store: Store,
        handlers: Mapping[str, Handler],
        limit: Callable[[str], int] = lambda op: 4,
        retry_safe: Collection[str] = RETRY_SAFE,
    ) -> None:
        self.store = store
        self._handlers = dict(handlers)
        self._limit = limit
        self._retry_safe = frozenset(retry_safe)
        self._lock = QueueLock(store.path.with_name(store.path.name + ".queue.lock"))
        self._subject: Subject[JobEvent] = Subject()
        self.events: rx.Observable[JobEvent] = self._subject
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._system_locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[Job]]] = {}
        self._started = False

    # ---- lifecycle
    async def start(self) -> list[Job]:
        """Own the queue, recover after a crash, run what is queued; returns the interrupted."""
        self._lock.acquire()
        self._started = True
        interrupted = [
            self._interrupt(j, "the process running the queue stopped")
            for j in self.store.jobs(states=("running",))
        ]
        for j in interrupted:  # retries keep their place: before jobs queued after them
            if j.retried_by:
                self._schedule(self.store.job(j.retried_by))
        self.rescan()
        return interrupted

    def rescan(self) -> None:
        """Schedule queued jobs this runner does not know yet (e.g. written by another process)."""
        for job in self.store.jobs(states=("queued",)):
            self._schedule(job)

    async def close(self) -> None:
        """Stop the workers; running jobs are recorded as interrupted (and re-queued if safe)."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._started:
            self._lock.release()
            self._started = False

    # ---- submitting and waiting
    def submit(self, op: JobOp, system_id: str | None = None, **args: Any) -> Job:
        """Persist a job, announce it, and schedule it when this process runs the queue."""
        return self.submit_jobs([Job(id=new_id(), op=op, system_id=system_id, args=args)])[0]

    def submit_jobs(self, jobs: list[Job], systems: Collection[System] = ()) -> list[Job]:
        """Record `systems` and their `jobs` in one transaction, then announce and run them."""
        for job in jobs:
            if job.op not in self._handlers:
                raise MachinesError(f"unknown operation {job.op!r}")
        self.store.record(systems, jobs)
        for job in jobs:
            self._emit("queued", job)
            if self._started:
                self._schedule(job)
        return jobs

    async def wait(self, job_id: str) -> Job:
        """The job once finished; an interrupted job is followed to its retry."""
        job = self.store.job(job_id)
        while not job.done:
            if job.retried_by:
                job = self.store.job(job.retried_by)
                continue
            if job.id not in self._tasks:
                raise MachinesError(
                    f"job {job.short_id} is {job.state} but not run by this process"
                    " (is another process or `reops hub` running the queue?)"
                )
            fut: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(job.id, []).append(fut)
            job = await fut
        return job

    # ---- running
    def _schedule(self, job: Job) -> None:
        if job.id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.op}")
        self._tasks[job.id] = task
        task.add_done_callback(functools.partial(self._forget, job.id))

    def _forget(self, job_id: str, _task: object) -> None:
        self._tasks.pop(job_id, None)

    def _sem(self, op: str) -> asyncio.Semaphore:
        if op not in self._sems:
            self._sems[op] = asyncio.Semaphore(self._limit(op))
        return self._sems[op]

    def _serial(self, system_id: str | None) -> asyncio.Lock | contextlib.nullcontext[None]:
        if system_id is None:
            return contextlib.nullcontext()
        return self._system_locks.setdefault(system_id, asyncio.Lock())

    async def _run(self, job: Job) -> None:
        async with self._serial(job.system_id), self._sem(job.op):
            job = self._update(job, "started", state="running", started_at=time.time(),
                               pid=os.getpid())
            try:
                result = await self._handlers[job.op](job)
            except asyncio.CancelledError:
                self._interrupt(job, "the queue was shut down")
                raise
            except MachinesError as e:
                self._update(job, "failed", state="failed", error=str(e),
                             finished_at=time.time())
            except Exception as e:  # a bug or an unexpected libvirt answer: keep the reason
                self._update(job, "failed", state="failed", error=f"{type(e).__name__}: {e}",
                             finished_at=time.time())
            else:
                self._update(job, "succeeded", state="succeeded", result=dict(result or {}),
                             finished_at=time.time())

    def _interrupt(self, job: Job, why: str) -> Job:
        """Record an interrupted job with a clear reason; re-queue it when safe."""
        since = datetime.fromtimestamp(job.started_at or job.created_at).isoformat(
            sep=" ", timespec="seconds")
        where = f" (pid {job.pid})" if job.pid else ""
        retry: Job | None = None
        if job.op in self._retry_safe:
            retry = Job(id=new_id(), op=job.op, system_id=job.system_id, args=job.args,
                        attempt=job.attempt + 1, retry_of=job.id)
            then = f"retried as job {retry.short_id}"
        else:
            then = f"not retried: {job.op} is not safe to repeat; check the system, then rerun"
        msg = f"interrupted: {why}{where} while this job was running (since {since}); {then}"
        done = self._update(job, "interrupted", state="interrupted", error=msg,
                            finished_at=time.time(),
                            retried_by=retry.id if retry else None)
        if retry is not None:
            self.store.put_job(retry)
            self._emit("queued", retry)
        return done

    def _update(self, job: Job, event: JobEventKind, **changes: Any) -> Job:
        job = msgspec.structs.replace(job, **changes)
        self.store.put_job(job)
        self._emit(event, job)
        if job.state != "running":
            for fut in self._waiters.pop(job.id, []):
                if not fut.done():
                    fut.set_result(job)
        return job

    def _emit(self, event: JobEventKind, job: Job) -> None:
        self._subject.on_next(JobEvent(event=event, job=job))
