"""The shared engine: Types, Systems and Jobs (the queue's claims) in PostgreSQL.

Several controllers use one database, so the schema is migrated under an advisory lock
(two `reops store migrate` at once apply each step once) and every change is one short
transaction, as in SQLite. Rows keep the same msgspec JSON (TEXT: byte-exact, the same
decoder as SQLite) plus the columns we select and order on.

Its parts: the connection (reops.store.pg_conn), the schema (reops.store.pg_schema), the
flows' store (reops.store.pg_flows).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import errors

from reops.store.base import Claim, Controller, Wakeup, id_prefix, only_one
from reops.store.model import Job, JobState, MachinesError, System, Type
from reops.store.pg_conn import (
    CONNECT_TIMEOUT,
    JOBS_CHANNEL,
    SERVER_NOW,
    Pg,
    _PgWakeup,
    as_text,
    server_now,
)
from reops.store.pg_schema import MACHINE_MIGRATIONS

#: a queued job is claimable when no older job of its system is unfinished: a system's
#: jobs run one at a time and in order across controllers (a start waits for its create).
#: Another controller's claim in flight locks that older row, which still reads queued here.
FIFO_PER_SYSTEM = ("(j.system_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs o WHERE"
                   " o.system_id = j.system_id AND o.seq < j.seq AND o.state IN"
                   " ('queued', 'running')))")


class PgStore:
    """`MachineStore` on PostgreSQL; opening it migrates the schema."""

    def __init__(self, url: str, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self._timeout = connect_timeout
        self._pg = Pg(url, "machines", MACHINE_MIGRATIONS, connect_timeout)
        self.where = self._pg.where
        self.applied = self.migrate()  # what opening it migrated

    @property
    def reconnects(self) -> int:
        return self._pg.reconnects

    def migrate(self) -> list[int]:
        return self._pg.migrate()

    @property
    def schema_version(self) -> int:
        return self._pg.schema_version

    def close(self) -> None:
        self._pg.close()

    # ---- types
    def put_type(self, t: Type) -> None:
        self._pg.run(lambda db: db.execute(
            "INSERT INTO types VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
            " SET data = excluded.data", (t.name, as_text(t))), what=f"saving type {t.name}")

    def get_type(self, name: str) -> Type:
        found = self._pg.rows("SELECT data FROM types WHERE name = %s", (name,), Type)
        if not found:
            known = ", ".join(t.name for t in self.types()) or "none; add one with `types add`"
            raise MachinesError(f"unknown type {name!r} (known: {known})")
        return found[0]

    def types(self) -> list[Type]:
        return self._pg.rows("SELECT data FROM types ORDER BY name", (), Type)

    def remove_type(self, name: str) -> None:
        self.get_type(name)

        def remove(db: psycopg.Connection[Any]) -> None:
            db.execute("LOCK TABLE systems IN SHARE MODE")  # no system takes it meanwhile
            row = db.execute("SELECT count(*) FROM systems WHERE type = %s", (name,)).fetchone()
            used = row[0] if row else 0
            if used:
                raise MachinesError(f"type {name!r} is used by {used} system(s)")
            db.execute("DELETE FROM types WHERE name = %s", (name,))
        self._pg.run(remove, what=f"removing type {name}")

    # ---- systems
    def record(self, systems: Iterable[System], jobs: Iterable[Job] = ()) -> None:
        """Insert or replace systems and jobs together: all are recorded, or none."""
        systems, jobs = list(systems), list(jobs)

        def write(db: psycopg.Connection[Any]) -> None:
            for s in systems:
                db.execute(
                    "INSERT INTO systems VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id)"
                    " DO UPDATE SET hostname = excluded.hostname, type = excluded.type,"
                    " hypervisor = excluded.hypervisor, domain = excluded.domain,"
                    " data = excluded.data",
                    (s.id, s.hostname, s.type, s.placement.hypervisor, s.placement.domain,
                     as_text(s)))
            _put_jobs(db, jobs)
        try:
            self._pg.run(write, what="recording systems and jobs")
        except errors.UniqueViolation as e:
            why = " ".join(str(e).split())
            raise MachinesError(f"a system with that domain name already exists ({why})"
                                ) from None

    def put_systems(self, systems: Iterable[System]) -> None:
        self.record(systems)

    def put_system(self, s: System) -> None:
        self.put_systems([s])

    def system(self, id_: str) -> System | None:
        found = self._pg.rows("SELECT data FROM systems WHERE id = %s", (id_,), System)
        return found[0] if found else None

    def systems(self) -> list[System]:
        return self._pg.rows("SELECT data FROM systems ORDER BY hostname, id", (), System)

    def system_by_domain(self, hypervisor: str, domain: str) -> System | None:
        found = self._pg.rows("SELECT data FROM systems WHERE hypervisor = %s AND domain = %s",
                              (hypervisor, domain), System)
        return found[0] if found else None

    def system_by_prefix(self, prefix: str) -> System:
        return only_one("system", prefix, self._pg.rows(
            "SELECT data FROM systems WHERE id LIKE %s ORDER BY id LIMIT 2",
            (id_prefix(prefix) + "%",), System))

    def remove_system(self, id_: str) -> None:
        self._pg.run(lambda db: db.execute("DELETE FROM systems WHERE id = %s", (id_,)),
                     what=f"removing system {id_[:7]}")

    # ---- jobs
    def put_job(self, j: Job) -> None:
        self.put_jobs([j])

    def put_jobs(self, jobs: Iterable[Job]) -> None:
        """Write jobs together (e.g. an interrupted job and its retry): all, or none."""
        jobs = list(jobs)
        self._pg.run(lambda db: _put_jobs(db, jobs), what="saving jobs")

    def listen(self) -> Wakeup:
        """Woken (LISTEN/NOTIFY) when any controller queues jobs (Wakeup)."""
        return _PgWakeup(self.url, self.where, self._timeout)

    def job(self, id_or_prefix: str) -> Job:
        """A job by full id or unique prefix; a clear error when none or several match."""
        return only_one("job", id_or_prefix, self._pg.rows(
            "SELECT data FROM jobs WHERE id LIKE %s ORDER BY seq LIMIT 2",
            (id_prefix(id_or_prefix) + "%",), Job))

    def jobs(self, states: Iterable[JobState] = (), limit: int | None = None,
             controller: str | None = None) -> list[Job]:
        """Jobs oldest first, optionally only in `states`, optionally the newest `limit`,
        optionally only those `controller` ran."""
        wanted = list(states)
        where: list[str] = []
        args: list[object] = []
        if wanted:
            where.append("state = ANY(%s)")
            args.append(wanted)
        if controller is not None:
            where.append("data::jsonb ->> 'controller' = %s")
            args.append(controller)
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT data, seq FROM jobs {cond} ORDER BY seq DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self._pg.rows(f"SELECT data FROM ({sql}) AS newest ORDER BY seq", args, Job)


    # ---- controllers (Membership)
    def beat(self, c: Controller) -> None:
        """Record that `c` is alive now (a new pid under the same name starts a new since)."""
        def beat(db: psycopg.Connection[Any]) -> None:
            now = server_now(db)
            row = db.execute("SELECT data FROM controllers WHERE name = %s FOR UPDATE",
                             (c.name,)).fetchone()
            was = msgspec.json.decode(row[0], type=Controller) if row else None
            since = was.since if was is not None and was.pid == c.pid else now
            new = msgspec.structs.replace(c, since=since, age_s=0.0)
            db.execute("INSERT INTO controllers VALUES (%s, %s, %s) ON CONFLICT (name)"
                       " DO UPDATE SET seen_at = excluded.seen_at, data = excluded.data",
                       (c.name, now, as_text(new)))
        self._pg.run(beat, what=f"recording controller {c.name}'s heartbeat")

    def controllers(self) -> list[Controller]:
        """Every controller that ever beat, by name, with its `age_s`."""
        rows = self._pg.run(lambda db: db.execute(
            f"SELECT data, greatest(0, {SERVER_NOW} - seen_at) FROM controllers ORDER BY name"
        ).fetchall(), what="reading controllers")
        return [msgspec.structs.replace(msgspec.json.decode(d, type=Controller),
                                        age_s=float(age)) for d, age in rows]

    def leave(self, name: str) -> None:
        """Forget a controller (it stopped cleanly)."""
        self._pg.run(lambda db: db.execute("DELETE FROM controllers WHERE name = %s",
                                           (name,)), what=f"removing controller {name}")

    # ---- claims (QueueStore): SKIP LOCKED, so controllers never wait on each other's rows
    def claim(self, controller: str, limit: int, lease_s: float,
              ids: Collection[str] | None = None) -> list[Claim]:
        """Up to `limit` queued jobs, oldest first, now running under `controller`; only
        those among `ids` when given."""
        only = "" if ids is None else " AND id = ANY(%s)"
        args: tuple[object, ...] = (int(limit),) if ids is None else (list(ids), int(limit))
        return self._pg.run(lambda db: self._take(db, db.execute(
            f"SELECT data, epoch FROM jobs j WHERE state = 'queued'{only} AND"
            f" {FIFO_PER_SYSTEM} ORDER BY seq LIMIT %s FOR UPDATE OF j SKIP LOCKED",
            args).fetchall(), controller, lease_s, start=True), what="claiming jobs")

    def expired(self, controller: str, limit: int, lease_s: float) -> list[Claim]:
        """Take over running jobs whose lease ran out (their controller died or stalled)."""
        return self._pg.run(lambda db: self._take(db, db.execute(
            "SELECT data, epoch FROM jobs WHERE state = 'running' AND lease_until <= "
            f"{SERVER_NOW} ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED", (int(limit),)).fetchall(),
            controller, lease_s, start=False), what="taking over expired claims")

    def _take(self, db: psycopg.Connection[Any], rows: list[tuple[str, int]],
              controller: str, lease_s: float, start: bool) -> list[Claim]:
        now = server_now(db)
        claims = []
        for data, epoch in rows:
            job = msgspec.json.decode(data, type=Job)
            if start:
                job = msgspec.structs.replace(job, state="running", started_at=now,
                                              controller=controller)
            claims.append(Claim(job=job, controller=controller, epoch=epoch + 1,
                                lease_until=now + lease_s))
        with db.cursor() as cur:  # one round trip for the batch
            cur.executemany(
                "UPDATE jobs SET state = %s, data = %s, owner = %s, epoch = %s,"
                " lease_until = %s WHERE id = %s",
                [(c.job.state, as_text(c.job), controller, c.epoch, c.lease_until, c.job.id)
                 for c in claims])
        return claims

    def renew(self, claims: Iterable[Claim], lease_s: float) -> list[Claim]:
        """Extend the claims that still hold; the ones missing from the answer are lost."""
        claims = list(claims)

        def renew(db: psycopg.Connection[Any]) -> list[Claim]:
            now = server_now(db)
            out = []
            for c in claims:
                cur = db.execute("UPDATE jobs SET lease_until = %s WHERE id = %s AND owner = %s"
                                 " AND epoch = %s AND lease_until > %s",
                                 (now + lease_s, c.job.id, c.controller, c.epoch, now))
                if cur.rowcount:
                    out.append(msgspec.structs.replace(c, lease_until=now + lease_s))
            return out
        return self._pg.run(renew, what="renewing claims")

    def finish(self, claim: Claim, job: Job, then: Iterable[Job] = ()) -> bool:
        """Write the job's end and the jobs it queued if `claim` still holds; False: fenced
        (its lease ran out or another controller took it over), nothing written."""
        then = list(then)

        def finish(db: psycopg.Connection[Any]) -> bool:
            cur = db.execute(
                "UPDATE jobs SET state = %s, data = %s, owner = NULL, lease_until = NULL"
                f" WHERE id = %s AND owner = %s AND epoch = %s AND lease_until > {SERVER_NOW}",
                (job.state, as_text(job), job.id, claim.controller, claim.epoch))
            if not cur.rowcount:
                return False
            _put_jobs(db, then)
            return True
        # not replayed: a COMMIT lost on the way back would be judged fenced the second time
        return self._pg.run(finish, what=f"finishing job {job.short_id}", idempotent=False)


def _put_jobs(db: psycopg.Connection[Any], jobs: Sequence[Job]) -> None:
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO jobs (id, op, system_id, state, data) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state, data = excluded.data",
            [(j.id, j.op, j.system_id, j.state, as_text(j)) for j in jobs])
    if any(j.state == "queued" for j in jobs):  # delivered on COMMIT, once per transaction
        db.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
