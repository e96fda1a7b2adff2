"""The job queue on a shared store: claims, leases, renewals and take-overs.

Why apart: one runner under a flock (the embedded SQLite store) needs none of it. On a
shared store (PostgreSQL) several controllers run one queue (reops.store.queue.JobQueue):
each claims queued jobs in batches, renews its leases while they run, records a job's end
only while its claim holds, and takes over the jobs of controllers that stopped renewing.
These are the queue's duties there; JobQueue calls them when it is `shared`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import msgspec

from reops.store.base import Claim, Controller, StoreError
from reops.store.model import Job, JobEventKind

if TYPE_CHECKING:
    from reops.store.queue import JobQueue

log = logging.getLogger("reops.queue")


async def start_shared(q: JobQueue) -> list[Job]:
    q._started = True
    q._kick = asyncio.Event()
    q._wakeup = await q._call(q.store.listen)
    taken = [] if q.own_only else await take_over(q)
    loop = asyncio.get_running_loop()
    q._helpers = [loop.create_task(pump(q), name="queue-claims"),
                  loop.create_task(keep(q), name="queue-leases")]
    q._kick.set()
    return taken


async def stop_shared(q: JobQueue) -> None:
    """Hand back the claims no handler began (queued again), leave the controllers."""
    for c in list(q._held.values()):
        if c.job.id not in q._begun:
            q._held.pop(c.job.id, None)
            back = msgspec.structs.replace(c.job, state="queued", started_at=None,
                                           controller=None)
            with contextlib.suppress(StoreError):
                await q._call(q.store.finish, c, back)
    if not q.own_only:
        with contextlib.suppress(StoreError):
            await q._call(q.store.leave, q.name)


def release_threads(q: JobQueue) -> None:
    """Close the wake-up once its listening thread has returned (within a second),
    and the store thread."""
    listener, q._listener = q._listener, None
    if listener is not None:
        listener.shutdown(wait=True)
    wakeup, q._wakeup = q._wakeup, None
    if wakeup is not None:
        with contextlib.suppress(Exception):
            wakeup.close()
    io, q._io = q._io, None
    if io is not None:
        io.shutdown(wait=False)


async def pump(q: JobQueue) -> None:
    """Claim queued jobs while there is room; then wait for a NOTIFY, a local
    submission or a finished job, or poll."""
    assert q._kick is not None
    waiting: asyncio.Future[Any] | None = None
    loop = asyncio.get_running_loop()
    try:
        while q._started:
            room = q.cluster.batch - len(q._held)
            got: list[Claim] = []
            ids = (q._own - q._held.keys()) if q.own_only else None
            if room > 0 and ids != set():
                try:
                    got = await q._call(q.store.claim, q.name, room,
                                        q.cluster.lease_s, ids)
                    q._up()
                except StoreError as e:
                    q._down("claiming jobs", e)
                except Exception as e:  # a bug must not stop this controller claiming
                    log.warning("queue (controller %s): claiming jobs failed: %s: %s",
                                q.name, type(e).__name__, e)
                for c in got:
                    q._held[c.job.id] = c
                    launch(q, c)
                if got and len(got) == room:
                    continue  # there may be more: claim again once some finish
            q._kick.clear()
            if waiting is None or waiting.done():
                if q._listener is None:
                    q._listener = ThreadPoolExecutor(
                        1, thread_name_prefix="reops-queue-listen")
                waiting = loop.run_in_executor(q._listener, functools.partial(listen_once, q))
            kicked: asyncio.Future[Any] = loop.create_task(q._kick.wait())
            await asyncio.wait([waiting, kicked], timeout=q.cluster.poll_s,
                               return_when=asyncio.FIRST_COMPLETED)
            kicked.cancel()
    finally:
        if waiting is not None:  # the listener returns within a second: let it
            with contextlib.suppress(Exception):
                await asyncio.shield(waiting)


def listen_once(q: JobQueue) -> bool:
    """Block up to a second for a NOTIFY (True); a store error answers True (look)."""
    w = q._wakeup
    if w is None:
        return False
    try:
        return w.wait(min(1.0, q.cluster.poll_s))
    except StoreError:
        time.sleep(min(1.0, q.cluster.poll_s))
        return True


def launch(q: JobQueue, c: Claim) -> None:
    task = asyncio.get_running_loop().create_task(q._run(c.job, c),
                                                  name=f"job-{c.job.op}")
    q._tasks[c.job.id] = task
    task.add_done_callback(functools.partial(q._forget, c.job.id))


async def keep(q: JobQueue) -> None:
    """Every third of a lease: renew ours (a lost one stops its job), beat, and take
    over the jobs of controllers whose leases ran out."""
    every = q.cluster.lease_s / 3
    while q._started:
        await renew(q)
        if q.own_only:  # no member: renews its own claims only
            await asyncio.sleep(every)
            continue
        try:
            await q._call(beat, q)
            await take_over(q)
            q._up()
        except StoreError as e:
            q._down("beating and taking over expired claims", e)
        except Exception as e:  # a bug must not stop renewals and take-overs
            log.warning("queue (controller %s): beating or taking over failed: %s: %s",
                        q.name, type(e).__name__, e)
        await asyncio.sleep(every)


def beat(q: JobQueue) -> None:
    """Beat with {"jobs": held}, kept beside what else beats under this name in this
    process (the hub's flows): one row per controller."""
    load = next((dict(c.load) for c in q.store.controllers()
                 if c.name == q.name and c.pid == os.getpid()), {})
    load["jobs"] = float(len(q._held))
    q.store.beat(Controller(name=q.name, host=socket.gethostname(),
                            pid=os.getpid(), load=load))


async def renew(q: JobQueue) -> None:
    held = [c for c in q._held.values() if c.job.id not in q._finishing]
    if not held:
        return
    try:
        kept = await q._call(q.store.renew, held, q.cluster.lease_s)
    except StoreError as e:
        q._down("renewing leases", e)
        return
    except Exception as e:  # as a store error: try again at the next tick
        log.warning("queue (controller %s): renewing leases failed: %s: %s", q.name,
                    type(e).__name__, e)
        return
    renewed = {c.job.id: c for c in kept}
    for c in held:
        mine = q._held.get(c.job.id)
        if mine is None or mine.epoch != c.epoch or c.job.id in q._finishing:
            continue  # finished meanwhile
        if c.job.id in renewed:
            q._held[c.job.id] = renewed[c.job.id]
            continue
        q._held.pop(c.job.id, None)
        log.warning("controller %s lost its lease on job %s (%s): another controller"
                    " took it over; stopping it here, nothing of it is recorded by this"
                    " controller", q.name, c.job.short_id, c.job.op)
        task = q._tasks.get(c.job.id)
        if task is not None:
            task.cancel()


async def take_over(q: JobQueue) -> list[Job]:
    """Jobs of controllers that stopped renewing: interrupted, retried when safe."""
    out = []
    while True:
        claims = await q._call(q.store.expired, q.name, q.cluster.batch,
                               q.cluster.lease_s)
        for c in claims:
            why = (f"controller {c.job.controller or '?'} stopped renewing its lease"
                   f" (dead or stalled; taken over by controller {q.name})")
            changes = q._interrupted(c.job, why, "lease", where="")
            if await q._call(finish_sync, q, c, changes):
                log.warning("job %s %s: %s", c.job.short_id, c.job.op, changes[0][1].error)
                q._announce(changes)
                out.append(changes[0][1])
        if len(claims) < q.cluster.batch:
            return out


def finish_sync(q: JobQueue, claim: Claim, changes: list[tuple[JobEventKind, Job]],
                patience: float | None = None) -> bool:
    """`finish` while the claim may still hold, through a store that is restarting:
    a COMMIT whose answer was lost is recognised by reading the job back."""
    done, then = changes[0][1], [j for _, j in changes[1:]]
    until = time.monotonic() + (q.cluster.lease_s if patience is None else patience)
    tried = False
    while True:
        try:
            if q.store.finish(claim, done, then):
                return True
            if not tried:
                return False
            now = q.store.job(done.id)  # fenced, or our lost COMMIT went through?
            return now.state == done.state and now.finished_at == done.finished_at
        except StoreError as e:
            if time.monotonic() > until:
                log.warning("queue (controller %s): job %s's end could not be recorded:"
                            " %s", q.name, done.short_id, e)
                return False
            tried = True
            time.sleep(0.5)


async def settle(q: JobQueue, claim: Claim, changes: list[tuple[JobEventKind, Job]]
                 ) -> None:
    """Record a job's end if our claim holds; announce it only then."""
    job = changes[0][1]
    if job.id not in q._held:
        return  # lost meanwhile: logged by _renew
    q._finishing.add(job.id)
    try:
        ok = await asyncio.shield(q._call(finish_sync, q, claim, changes))
    finally:
        q._finishing.discard(job.id)
        q._held.pop(job.id, None)
        q._begun.discard(job.id)
    ended(q, claim, changes, ok)


def settle_now(q: JobQueue, claim: Claim, changes: list[tuple[JobEventKind, Job]]
               ) -> None:
    """`_settle` from a cancelled task (shutting down): blocks the loop briefly."""
    job = changes[0][1]
    q._held.pop(job.id, None)
    q._begun.discard(job.id)
    ended(q, claim, changes, finish_sync(q, claim, changes, patience=2.0))


def ended(q: JobQueue, claim: Claim, changes: list[tuple[JobEventKind, Job]], ok: bool
          ) -> None:
    job = changes[0][1]
    q._own.discard(job.id)
    if ok:
        if q.own_only:  # its retry or follow-up is ours to run too
            q._own.update(j.id for event, j in changes[1:] if event == "queued")
        q._announce(changes)
    else:
        log.warning("controller %s lost its lease on job %s (%s) before it ended"
                    " (%s here): another controller took it over; nothing recorded",
                    q.name, job.short_id, job.op, job.state)
    if q._kick is not None:
        q._kick.set()  # room for another claim
