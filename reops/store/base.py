"""The one store interface both engines implement, and the error they raise.

Callers (the machines layer, the job queue, the hub's flow runner) type against these
Protocols, never against an engine, so `[store] url` picks SQLite (embedded, one
controller) or PostgreSQL (shared by several controllers) without a change elsewhere.
The flow runner's half is `reops.store.flows.FlowStore`; this module adds the machines'
half (Types, Systems, Jobs) and what every engine has in common (schema migrations).

The distributed queue's primitives are `QueueStore`: a controller claims queued jobs for
a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so controllers never wait on each other's
rows; one writer at a time on SQLite), renews it while it works, and finishes a job only
while its claim holds — each claim bumps the job's epoch (a fencing token), so a
controller that lost its lease cannot commit a result over its successor's. A lease that
ran out is taken over with `expired`, and the queue applies its retry rules to it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol, TypeVar, runtime_checkable

import msgspec

from reops.store.model import MIN_PREFIX, Job, JobState, MachinesError, System, Type

T = TypeVar("T")


class StoreError(MachinesError):
    """The store cannot be reached or used: one line naming the store and what to do."""


@runtime_checkable
class Migrating(Protocol):
    """Every engine: a numbered schema, upgraded in order, each step once."""

    #: where the data lives, for messages (a path, or a URL without its password)
    where: str
    #: the migrations opening it applied (empty: it was up to date)
    applied: list[int]

    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet; returns their numbers (empty: up to date)."""
        ...

    @property
    def schema_version(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class MachineStore(Migrating, Protocol):
    """Types, Systems and Jobs; every write is one transaction (all of it, or none)."""

    def put_type(self, t: Type) -> None: ...
    def get_type(self, name: str) -> Type: ...
    def types(self) -> list[Type]: ...
    def remove_type(self, name: str) -> None: ...
    def record(self, systems: Iterable[System], jobs: Iterable[Job] = ()) -> None: ...
    def put_systems(self, systems: Iterable[System]) -> None: ...
    def put_system(self, s: System) -> None: ...
    def system(self, id_: str) -> System | None: ...
    def systems(self) -> list[System]: ...
    def system_by_domain(self, hypervisor: str, domain: str) -> System | None: ...
    def system_by_prefix(self, prefix: str) -> System: ...
    def remove_system(self, id_: str) -> None: ...
    def put_job(self, j: Job) -> None: ...
    def put_jobs(self, jobs: Iterable[Job]) -> None: ...
    def job(self, id_or_prefix: str) -> Job: ...
    def jobs(self, states: Iterable[JobState] = (), limit: int | None = None,
             controller: str | None = None) -> list[Job]:
        """Oldest first; only `states`, only the newest `limit`, only those `controller` ran."""
        ...


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A job a controller holds: until `lease_until` (the store's clock), fenced by `epoch`."""

    job: Job
    controller: str
    epoch: int
    lease_until: float


@runtime_checkable
class QueueStore(Protocol):
    """Claims on the job queue, shared by any number of controllers."""

    def claim(self, controller: str, limit: int, lease_s: float,
              ids: Collection[str] | None = None) -> list[Claim]:
        """Up to `limit` queued jobs, oldest first, now running under `controller`; only
        those among `ids` when given (a process that runs only the jobs it queued)."""
        ...

    def renew(self, claims: Iterable[Claim], lease_s: float) -> list[Claim]:
        """Extend the claims that still hold; the ones missing from the answer are lost."""
        ...

    def finish(self, claim: Claim, job: Job, then: Iterable[Job] = ()) -> bool:
        """Write the job's end and the jobs it queued (`then`) if `claim` still holds;
        False: fenced (the lease ran out or was taken over), nothing written."""
        ...

    def expired(self, controller: str, limit: int, lease_s: float) -> list[Claim]:
        """Take over running jobs whose lease ran out (their controller died or stalled)."""
        ...

    def listen(self) -> Wakeup:
        """A wake-up for when jobs are queued; claimers poll too (the fallback)."""
        ...


class Controller(msgspec.Struct, frozen=True, kw_only=True):
    """A controller sharing the store: who, where, since when, how busy, last seen."""

    name: str
    host: str = ""
    pid: int = 0
    since: float = 0.0  # its first beat (since it started), on the store's clock
    load: dict[str, float] = msgspec.field(default_factory=dict)  # e.g. {"jobs": 3}
    age_s: float = 0.0  # seconds since its last beat, on the store's clock (when read)


@runtime_checkable
class Membership(Protocol):
    """Controllers' heartbeats: who is alive is judged by one clock, the store's."""

    def beat(self, c: Controller) -> None:
        """Record that `c` is alive now (a new pid under the same name starts a new since)."""
        ...

    def controllers(self) -> list[Controller]:
        """Every controller that ever beat, by name, with its `age_s`."""
        ...

    def leave(self, name: str) -> None:
        """Forget a controller (it stopped cleanly)."""
        ...


@runtime_checkable
class Wakeup(Protocol):
    """A wake-up only, never the data: True when there may be new queued jobs to claim.

    PostgreSQL: LISTEN/NOTIFY (payloads stay empty; the claim reads the rows), a dropped
    listening connection is re-made and answers True (something may have been missed).
    SQLite: jobs queued through this process's store; other processes' are found by the
    caller's polling, the fallback on every engine (wait() returns False on timeout)."""

    def wait(self, timeout: float) -> bool: ...
    def close(self) -> None: ...


@runtime_checkable
class JobStore(MachineStore, QueueStore, Membership, Protocol):
    """What the job queue runs on: the jobs, claims on them, and controllers' heartbeats."""


def id_prefix(prefix: str) -> str:
    """An id prefix checked and lower-cased for a lookup by `id LIKE prefix%`, the same on
    every engine: too short or not hex is one line, never a scan of the table."""
    if len(prefix) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in prefix.lower()):
        raise MachinesError(f"bad id {prefix!r}: give at least {MIN_PREFIX} hex characters")
    return prefix.lower()


def only_one(what: str, prefix: str, found: list[T]) -> T:
    """The one row a prefix lookup found (it reads two at most); none or several: one line."""
    if not found:
        raise MachinesError(f"no {what} with id {prefix!r}")
    if len(found) > 1:
        raise MachinesError(f"{what} id {prefix!r} is ambiguous: give more characters")
    return found[0]
