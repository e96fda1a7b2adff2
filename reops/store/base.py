"""The one store interface both engines implement, and the error they raise.

Callers (the machines layer, the job queue, the hub's flow runner) type against these
Protocols, never against an engine, so `[store] url` picks SQLite (embedded, one
controller) or PostgreSQL (shared by several controllers) without a change elsewhere.
The flow runner's half is `reops.store.flows.FlowStore`; this module adds the machines'
half (Types, Systems, Jobs) and what every engine has in common (schema migrations).

Room for the distributed queue (issue 13, next step): claims (`FOR UPDATE SKIP LOCKED` on
PostgreSQL), leases with a fencing epoch and controller heartbeats become methods of a
`QueueStore` Protocol beside `MachineStore`; SQLite keeps its one-runner flock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from reops.store.model import Job, JobState, MachinesError, System, Type


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
    def jobs(self, states: Iterable[JobState] = (), limit: int | None = None) -> list[Job]: ...
