"""The durable job queue: jobs in the store, asyncio workers, job events as an Observable.

A job is on disk before `submit` returns. Workers are bounded per operation (so twenty
creates do not overwhelm a hypervisor while a stop still runs at once) and serialized per
system (a start waits for that system's create). Every job has a deadline: a hung libvirtd
fails it as "timeout" and frees its slot. One process at a time runs the queue (an flock
next to the store); when it dies mid-job, the next one to start it marks that job
interrupted and says why, and re-queues it only when the operation is idempotent (IDEMPOTENT)
and it began recently (`retry_interrupted_within`): never a late replay, never a second run
of a command on a machine.

On a shared store (PostgreSQL: `[store] url`) several controllers run one queue, with no
flock: each claims queued jobs in batches (`QueueStore.claim`, a lease and a fencing epoch
per job), renews its leases while the jobs run, and records a job's end only while its
claim holds (`finish`); a controller that lost a lease commits nothing and says so in its
log. It wakes on `Wakeup` (LISTEN/NOTIFY) and polls as the fallback. A dead controller's
running jobs are taken over once their lease ran out (`expired`), by the same rules as a
restart above: re-run only when idempotent, else interrupted. Every job records the
controller that ran it; each controller beats (`Membership.beat`) while its queue runs.
Those duties on a shared store are in reops.store.queue_claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import msgspec
import reactivex as rx
from reactivex.subject import Subject

from reops.store.base import Claim, JobStore, StoreError, Wakeup
from reops.store.model import (
    Job,
    JobEvent,
    JobEventKind,
    JobOp,
    MachinesError,
    System,
    new_id,
)
from reops.store.queue_claims import release_threads, settle, settle_now, start_shared, stop_shared
from reops.store.sqlite import Store

log = logging.getLogger("reops.queue")
P = ParamSpec("P")
R = TypeVar("R")


class Done(msgspec.Struct, frozen=True, kw_only=True):
    """A handler's success that queues more work, recorded with it in one transaction
    (create -> provision: a crash never leaves a finished create without its provisioning)."""

    result: dict[str, Any]
    then: tuple[Job, ...] = ()


Handler = Callable[[Job], Awaitable[Mapping[str, Any] | Done | None]]

#: Whether an interrupted run of each operation may simply run again, and why. An operation
#: qualifies only if its handler first checks the state it converges on (so a second run
#: finds the work done, or finishes it) and runs no command on a machine (at most once).
IDEMPOTENT: dict[str, tuple[bool, str]] = {
    "destroy": (True, "it finds the record gone, or removes what is left of the domain"),
    "clear": (True, "it only forgets a record, and finds it gone the second time"),
    "sync": (True, "it only reads (libvirt, or `true` over SSH) and refreshes records"),
    "start": (True, "it boots only a domain that is not running; Wake-on-LAN is one packet"),
    "reload": (True, "it removes the domain and volumes first, then re-creates the record's"),
    "create": (False, "a second run would reuse a volume or domain the first left half made"),
    "stop": (False, "stopping a physical machine runs `shutdown` on it, at most once"),
    "snapshot": (False, "the first run may have taken the snapshot"),
    "revert": (False, "a second revert would discard what happened since the first"),
    "provision": (False, "the Type's recipe runs commands on the machine, at most once"),
}
RETRY_SAFE: frozenset[str] = frozenset(op for op, (safe, _) in IDEMPOTENT.items() if safe)
#: default for `[machines] retry_interrupted_within` (seconds)
RETRY_WITHIN = 600.0


class Cluster(msgspec.Struct, frozen=True, kw_only=True):
    """How a controller shares the queue of a shared store (`[store]` lease, poll,
    claim_batch; `[hub] name`). The lease is judged on the store's clock."""

    controller: str = ""  # "": the host name
    lease_s: float = 30.0  # a claim lasts this long unless renewed (every third of it)
    poll_s: float = 2.0  # look for queued jobs at least this often (LISTEN is the fast path)
    batch: int = 16  # jobs claimed at once; also the most held (claimed, unfinished)


def _again(job: Job) -> str:
    """The command an operator runs to do an interrupted job's work again."""
    sid = (job.system_id or "")[:7]
    if job.op == "create":
        return f"`reops systems reload {sid}` (re-creates it from its record) or `destroy {sid}`"
    if job.op == "sync":
        return f"`reops systems sync --hypervisor {job.args.get('hypervisor', '')}`"
    name = f" {job.args['name']}" if "name" in job.args else ""
    return f"`reops systems {job.op} {sid}{name}`"

class QueueLock:
    """One queue runner per store: an exclusive flock, released when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        f = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), "a+")
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
        store: JobStore,
        handlers: Mapping[str, Handler],
        limit: Callable[[str], int] = lambda op: 4,
        deadline: Callable[[str], float] = lambda op: 3600.0,
        retry_within: float = RETRY_WITHIN,
        idempotent: Mapping[str, tuple[bool, str]] = IDEMPOTENT,
        *,
        cluster: Cluster | None = None,
        shared: bool | None = None,
    ) -> None:
        """`shared`: claims (several controllers) instead of the flock; by default on every
        engine but the embedded SQLite one, whose behaviour stays one runner per store."""
        self.store: JobStore = store
        self._handlers = dict(handlers)
        self._limit = limit
        self._deadline = deadline
        self._retry_within = retry_within
        self._idempotent = dict(idempotent)
        self.shared = not isinstance(store, Store) if shared is None else shared
        self.cluster = cluster or Cluster()
        self.name = self.cluster.controller or socket.gethostname()
        self._lock: QueueLock | None = None
        if not self.shared:
            assert isinstance(store, Store)
            self._lock = QueueLock(store.path.with_name(store.path.name + ".queue.lock"))
        # shared: the claims this controller holds (job id -> claim), the ones whose handler
        # began, the ones being finished (a renewal racing a finish is not a lost lease)
        self._held: dict[str, Claim] = {}
        self._begun: set[str] = set()
        self._finishing: set[str] = set()
        self._kick: asyncio.Event | None = None
        self._helpers: list[asyncio.Task[None]] = []
        self._io: ThreadPoolExecutor | None = None  # store calls, one at a time, off the loop
        self._listener: ThreadPoolExecutor | None = None  # waits on the Wakeup
        self._wakeup: Wakeup | None = None
        self._store_down = False
        # own_only: a passing process (a CLI command) runs only the jobs it queued (and
        # their retries and follow-ups), never another's, and is no member of the cluster
        self.own_only = False
        self._own: set[str] = set()
        self._subject: Subject[JobEvent] = Subject()
        self.events: rx.Observable[JobEvent] = self._subject
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._system_locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[Job]]] = {}
        self._started = False

    # ---- lifecycle
    async def start(self, *, own_only: bool = False) -> list[Job]:
        """Own the queue, recover after a crash, run what is queued; returns the interrupted.
        Shared: join the controllers claiming from the store; returns the jobs of dead
        controllers it took over now (more are taken over while it runs). `own_only`
        (shared only): run just the jobs submitted here, their retries and follow-ups —
        a CLI command, which must not pick up (and, exiting, interrupt) others' work."""
        if self.shared:
            self.own_only = own_only
            return await start_shared(self)
        assert self._lock is not None
        self._lock.acquire()
        try:
            interrupted = [
                self._interrupt(j, "the process running the queue stopped", "crash")
                for j in self.store.jobs(states=("running",))
            ]
        except BaseException:
            self._lock.release()
            raise
        self._started = True
        for j in interrupted:  # retries keep their place: before jobs queued after them
            if j.retried_by:
                self._schedule(self.store.job(j.retried_by))
        self.rescan()
        return interrupted

    def rescan(self) -> None:
        """Schedule queued jobs this runner does not know yet (e.g. written by another process)."""
        if self.shared:  # claimed, not scanned
            if self._kick is not None:
                self._kick.set()
            return
        for job in self.store.jobs(states=("queued",)):
            self._schedule(job)

    async def close(self) -> None:
        """Stop the workers; running jobs are recorded as interrupted (retried when safe,
        by the next start: the retry is on disk, nothing more runs here)."""
        closing, self._started = self._started, False  # follow-ups are stored, not run
        try:
            helpers, self._helpers = self._helpers, []
            for h in helpers:  # no new claims while the workers stop
                h.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            while tasks := [t for t in self._tasks.values() if not t.done()]:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if closing and self._lock is not None:
                self._lock.release()
            if closing and self.shared:
                await stop_shared(self)
        finally:  # even when closing is cancelled (a hub stopping): no thread left behind
            release_threads(self)

    # ---- submitting and waiting
    def submit(self, op: JobOp, system_id: str | None = None, **args: Any) -> Job:
        """Persist a job, announce it, and schedule it when this process runs the queue."""
        return self.submit_jobs([Job(id=new_id(), op=op, system_id=system_id, args=args)])[0]

    def submit_jobs(self, jobs: list[Job], systems: Sequence[System] = ()) -> list[Job]:
        """Record `systems` and their `jobs` in one transaction, then announce and run them."""
        for job in jobs:
            if job.op not in self._handlers:
                raise MachinesError(f"unknown operation {job.op!r}")
        self.store.record(systems, jobs)
        if self.own_only:
            self._own.update(j.id for j in jobs)
        for job in jobs:
            self._emit("queued", job)
            if self._started and not self.shared:
                self._schedule(job)
        if self.shared and self._kick is not None:
            self._kick.set()  # claim them here now; other controllers hear the NOTIFY
        return jobs

    async def wait(self, job_id: str) -> Job:
        """The job once finished; followed to its retry, or to the job it queued."""
        job = self.store.job(job_id)
        while not job.done or job.next_id:
            if job.next_id:
                job = self.store.job(job.next_id)
                continue
            fut: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(job.id, []).append(fut)
            if self.shared:  # any controller may run it: our own end, else the store's
                try:
                    job = await asyncio.wait_for(asyncio.shield(fut), self.cluster.poll_s)
                except TimeoutError:
                    try:
                        job = await self._call(self.store.job, job.id)
                    except StoreError as e:  # restarting: the job is safe there, ask again
                        self._down("reading a job", e)
                continue
            if job.id not in self._tasks:
                raise MachinesError(
                    f"job {job.short_id} is {job.state} but not run by this process"
                    " (is another process or `reops hub` running the queue?)"
                )
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

    async def _run(self, job: Job, claim: Claim | None = None) -> None:
        async with self._serial(job.system_id), self._sem(job.op):
            if claim is None:
                job = self._update(job, "started", state="running", started_at=time.time(),
                                   pid=os.getpid(), controller=self.name)
            elif job.id not in self._held:
                return  # its lease was lost while it waited for a slot: not ours to run
            else:  # the claim recorded it running; this process runs it now
                self._begun.add(job.id)
                job = msgspec.structs.replace(job, pid=os.getpid())
                self._emit("started", job)
            limit = self._deadline(job.op)
            deadline = asyncio.timeout(limit)
            changes: list[tuple[JobEventKind, Job]]
            try:
                async with deadline:
                    result = await self._handlers[job.op](job)
            except asyncio.CancelledError:
                if claim is None:
                    self._interrupt(job, "the queue was shut down", "shutdown")
                elif job.id in self._held:  # shut down (a lost lease records nothing)
                    settle_now(self, claim, self._interrupted(
                        job, "the queue was shut down", "shutdown"))
                raise
            except TimeoutError as e:
                if not deadline.expired():
                    changes = [("failed", self._failed(job, f"{type(e).__name__}: {e}"))]
                else:  # the handler's thread may still be blocked in libvirt: leave it
                    why = ("its recipe may still be running on the machine: check it"
                           if job.op == "provision" else "the hypervisor may be hung: check it")
                    changes = [("failed", self._failed(
                        job, f"timeout: {job.op} did not finish within {limit:g}s"
                        f" ([machines] deadlines.{job.op}); {why}, then run"
                        f" {_again(job)} if needed", "timeout"))]
            except MachinesError as e:
                changes = [("failed", self._failed(job, str(e)))]
            except Exception as e:  # a bug or an unexpected libvirt answer: keep the reason
                changes = [("failed", self._failed(job, f"{type(e).__name__}: {e}"))]
            else:
                changes = self._succeeded(job, result)
            if claim is None:
                self._commit(changes)
                for event, j in changes[1:]:
                    if event == "queued" and self._started:
                        self._schedule(j)
            else:
                await settle(self, claim, changes)

    def _failed(self, job: Job, error: str, reason: str = "error") -> Job:
        return msgspec.structs.replace(job, state="failed", error=error, reason=reason,
                                       finished_at=time.time())

    def _succeeded(self, job: Job, result: Mapping[str, Any] | Done | None
                   ) -> list[tuple[JobEventKind, Job]]:
        """Success and the follow-up jobs the handler queued, recorded in one transaction."""
        then = [msgspec.structs.replace(j, follows=job.id) for j in
                (result.then if isinstance(result, Done) else ())]
        data = result.result if isinstance(result, Done) else dict(result or {})
        done = msgspec.structs.replace(
            job, state="succeeded", result=data, finished_at=time.time(),
            followed_by=then[0].id if then else None)
        return [("succeeded", done), *(("queued", j) for j in then)]

    def _interrupt(self, job: Job, why: str, reason: str) -> Job:
        """Record an interrupted job and, when safe, its retry: both in one transaction."""
        changes = self._interrupted(job, why, reason)
        self._commit(changes)
        return changes[0][1]

    def _interrupted(self, job: Job, why: str, reason: str, where: str | None = None
                     ) -> list[tuple[JobEventKind, Job]]:
        """An interrupted job and, when safe, its retry (not written)."""
        now = time.time()
        began = job.started_at or job.created_at
        since = datetime.fromtimestamp(began).isoformat(sep=" ", timespec="seconds")
        if where is not None:
            pass
        elif self.shared and job.controller:
            where = f" (controller {job.controller}, pid {os.getpid()})"
        else:
            where = f" (pid {job.pid})" if job.pid else ""
        safe, because = self._idempotent.get(job.op, (False, "it is not known to be safe"))
        retry: Job | None = None
        if not safe:
            then = (f"not retried because {job.op} is not idempotent ({because});"
                    f" check the system, then run {_again(job)} if needed")
        elif now - began >= self._retry_within:
            then = (f"not retried: it began {now - began:.0f}s ago, more than [machines]"
                    f" retry_interrupted_within = {self._retry_within:g}s;"
                    f" run {_again(job)} if it is still wanted")
        else:
            retry = Job(id=new_id(), op=job.op, system_id=job.system_id, args=job.args,
                        attempt=job.attempt + 1, retry_of=job.id)
            then = f"retried as job {retry.short_id} ({because})"
        msg = f"interrupted: {why}{where} while this job was running (since {since}); {then}"
        done = msgspec.structs.replace(
            job, state="interrupted", error=msg, reason=reason, finished_at=now,
            retried_by=retry.id if retry else None)
        changes: list[tuple[JobEventKind, Job]] = [("interrupted", done)]
        if retry is not None:
            changes.append(("queued", retry))
        return changes

    def _update(self, job: Job, event: JobEventKind, **changes: Any) -> Job:
        job = msgspec.structs.replace(job, **changes)
        self._commit([(event, job)])
        return job

    def _commit(self, changes: list[tuple[JobEventKind, Job]]) -> None:
        """Write jobs in one transaction, then announce them and wake their waiters."""
        self.store.put_jobs(j for _, j in changes)
        self._announce(changes)

    def _announce(self, changes: list[tuple[JobEventKind, Job]]) -> None:
        for event, job in changes:
            self._emit(event, job)
            if job.state != "running":
                for fut in self._waiters.pop(job.id, []):
                    if not fut.done():
                        fut.set_result(job)

    def _emit(self, event: JobEventKind, job: Job) -> None:
        self._subject.on_next(JobEvent(event=event, job=job))

    # ---- shared store: claims, leases, take-overs
    async def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """A store call on the queue's own thread (one at a time, never on the loop)."""
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="reops-queue-store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args, **kwargs))

    def _down(self, doing: str, e: StoreError) -> None:
        """Say once that the store is unreachable (and once that it is back)."""
        if not self._store_down:
            log.warning("queue (controller %s): %s failed, trying again: %s", self.name,
                        doing, e)
        self._store_down = True

    def _up(self) -> None:
        if self._store_down:
            log.warning("queue (controller %s): the store answers again", self.name)
        self._store_down = False
