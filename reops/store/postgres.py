"""The shared engine: Types, Systems, Jobs and the flows' store in PostgreSQL.

Several controllers use one database, so the schema is migrated under an advisory lock
(two `reops store migrate` at once apply each step once) and every change is one short
transaction, as in SQLite. Rows keep the same msgspec JSON (TEXT: byte-exact, the same
decoder as SQLite) plus the columns we select and order on.

Why psycopg 3 rather than asyncpg: it has both a blocking and an asyncio API over one
libpq (the store is called from threads today — `asyncio.to_thread` in the hub — and the
queue's claim loop can move to `AsyncConnection` without a second driver); pipeline mode
for batch claims; LISTEN/NOTIFY for the queue's wake-ups; server-side `%s` parameters;
and the pure-Python package runs on Debian's own libpq5 (security updates with the OS, no
compiler, no bundled OpenSSL), asyncpg being its own protocol implementation in C.

A connection dropped under us (PostgreSQL restarted, a network blip) is noticed when the
next transaction begins; nothing of that transaction ran, so it reconnects and runs it
again. A connection lost later, mid-transaction, is retried only for idempotent writes
(upserts, deletes, reads); an append (the flows' audit) says in one line that it may not
have been written, and the next call reconnects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg import conninfo, errors

from reops.store.base import Claim, Controller, StoreError, Wakeup, id_prefix, only_one
from reops.store.flows import AUDIT_KEEP, AuditRow, FlowLease, FlowRecord
from reops.store.model import Job, JobState, MachinesError, System, Type

T = TypeVar("T")

#: the machines' schema, by version; append, never edit a released step
MACHINE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE types (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE systems (
        id TEXT PRIMARY KEY, hostname TEXT NOT NULL, type TEXT NOT NULL,
        hypervisor TEXT NOT NULL, domain TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX systems_hostname ON systems(hostname);
    CREATE UNIQUE INDEX systems_domain ON systems(hypervisor, domain) WHERE domain <> '';
    CREATE TABLE jobs (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE,
        op TEXT NOT NULL, system_id TEXT, state TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX jobs_state ON jobs(state);
    """,
    # claims (QueueStore): who holds a running job, until when (the server's clock), and
    # its fencing epoch; partial indexes keep claims off the finished jobs' rows, and the
    # table is vacuumed early (claimed rows leave dead tuples, which slow claims down)
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION;
    CREATE INDEX jobs_queued ON jobs(seq) WHERE state = 'queued';
    CREATE INDEX jobs_leases ON jobs(lease_until) WHERE state = 'running';
    ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.01,
                          autovacuum_vacuum_threshold = 1000);
    """,
    # controllers' heartbeats (Membership), on the server's clock
    """
    CREATE TABLE controllers (
        name TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL, data TEXT NOT NULL);
    """,
    # a system's jobs run one at a time, in order, cluster-wide: a claim looks for an
    # older unfinished job of the same system (see FIFO_PER_SYSTEM)
    """
    CREATE INDEX jobs_system_open ON jobs(system_id, seq)
        WHERE state IN ('queued', 'running');
    """,
)

#: the flows' schema, by version (its own sequence, as flows.db has in SQLite)
FLOW_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE flows (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE audit (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, flow TEXT NOT NULL,
        data TEXT NOT NULL);
    CREATE INDEX audit_flow ON audit(flow, seq);
    """,
    # several controllers: who runs each flow (a lease on the server's clock, a fencing
    # epoch, the desired state any controller sets) and the events they relay to each other
    # (NOTIFY carries no data: readers select the rows after the last seq they saw)
    """
    CREATE TABLE flow_leases (
        name TEXT PRIMARY KEY, wanted BOOLEAN NOT NULL DEFAULT TRUE, owner TEXT NOT NULL
        DEFAULT '', epoch BIGINT NOT NULL DEFAULT 0, lease_until DOUBLE PRECISION NOT NULL
        DEFAULT 0, reload BIGINT NOT NULL DEFAULT 0);
    CREATE TABLE events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, origin TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL, topic TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX events_at ON events(at);
    """,
    # agents' keys accepted or rejected on any controller, honoured by all
    """
    CREATE TABLE agent_keys (
        name TEXT PRIMARY KEY, key TEXT NOT NULL, state TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL);
    """,
    # calls across controllers (reops.hub.remote_calls): who holds each agent, and the
    # calls in flight to a peer's agent (a row lives until its result is collected)
    """
    CREATE TABLE agent_holders (
        name TEXT PRIMARY KEY, controller TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
    CREATE TABLE remote_calls (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, origin TEXT NOT NULL,
        target TEXT NOT NULL, agent TEXT NOT NULL, request TEXT NOT NULL,
        deadline DOUBLE PRECISION NOT NULL, state TEXT NOT NULL DEFAULT 'queued',
        result TEXT);
    CREATE INDEX remote_calls_target ON remote_calls(target) WHERE state = 'queued';
    CREATE INDEX remote_calls_origin ON remote_calls(origin) WHERE state = 'done';
    ALTER TABLE remote_calls SET (autovacuum_vacuum_scale_factor = 0.01,
                                  autovacuum_vacuum_threshold = 1000);
    """,
    # lines a streamed remote call printed, until its origin reads them (bounded per call
    # by the holder; deleted once read, and with their call)
    """
    CREATE TABLE remote_lines (
        call BIGINT NOT NULL, seq BIGINT NOT NULL, stream TEXT NOT NULL, text TEXT NOT NULL,
        PRIMARY KEY (call, seq));
    ALTER TABLE remote_lines SET (autovacuum_vacuum_scale_factor = 0.01,
                                  autovacuum_vacuum_threshold = 1000);
    """,
)

#: a queued job is claimable when no older job of its system is unfinished: a system's
#: jobs run one at a time and in order across controllers (a start waits for its create).
#: Another controller's claim in flight locks that older row, which still reads queued here.
FIFO_PER_SYSTEM = ("(j.system_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs o WHERE"
                   " o.system_id = j.system_id AND o.seq < j.seq AND o.state IN"
                   " ('queued', 'running')))")

#: the NOTIFY channel that wakes claimers when jobs are queued (the payload stays empty)
JOBS_CHANNEL = "reops_jobs"
#: the NOTIFY channel that tells controllers events were posted (the payload stays empty)
EVENTS_CHANNEL = "reops_events"
#: the NOTIFY channel for calls between controllers and their results (empty payload)
CALLS_CHANNEL = "reops_calls"
#: seconds posted events are kept (a controller that was away longer misses older ones)
EVENTS_KEEP_S = 600.0
#: the advisory lock `migrate` holds, so controllers migrating at once apply steps once
MIGRATE_LOCK = 0x7265_6F70  # "reop"
#: seconds to wait for PostgreSQL to accept a connection
CONNECT_TIMEOUT = 10.0

_enc = msgspec.json.Encoder()


def redact(url: str) -> str:
    """The URL without its password, for messages and `reops store migrate`."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "")
    port = f":{parts['port']}" if parts.get("port") else ""
    where = host if host and not host.startswith("/") else ""
    sock = f"?host={host}" if host.startswith("/") else ""
    return f"postgresql://{user}{where}{port}/{parts.get('dbname', '')}{sock}"


class Pg:
    """One connection to PostgreSQL, shared by the threads of a process (one at a time),
    reconnected when it was dropped; every call is one transaction."""

    def __init__(self, url: str, component: str, migrations: tuple[str, ...],
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self.where = redact(url)
        self._component = component
        self._migrations = migrations
        self._timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0  # connections re-made after a drop (shown by tests and status)

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self._timeout)),
                # a server that vanished (no FIN, no RST) is noticed instead of waited on
                keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
        except psycopg.Error as e:
            why = " ".join(str(e).split()) or type(e).__name__
            raise StoreError(
                f"store {self.where}: cannot connect to PostgreSQL ({why}); check that it"
                " runs and [store] url in config.toml (or REOPS_STORE_URL)") from None
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self.reconnects += 1

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], *, what: str,
            idempotent: bool = True) -> T:
        """`fn(conn)` in one transaction; once more on a fresh connection when the old one
        was dropped before it began (or, for an idempotent `fn`, at any point)."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._connect()
                began = False
                try:
                    with conn.transaction():
                        began = True
                        return fn(conn)
                except psycopg.OperationalError as e:
                    if not conn.broken and not conn.closed:
                        raise
                    self._drop()
                    if attempt == 1 and (idempotent or not began):
                        continue
                    why = " ".join(str(e).split())
                    raise StoreError(
                        f"store {self.where}: the connection to PostgreSQL was lost while"
                        f" {what} ({why}); it may not have been written; the next call"
                        " reconnects") from None
                except errors.IntegrityError:
                    raise  # the caller says what it means (e.g. a domain name taken)
                except psycopg.Error as e:  # e.g. the role lacks a grant: one line, not a trace
                    why = e.diag.message_primary or " ".join(str(e).split()) or type(e).__name__
                    raise StoreError(f"store {self.where}: {what} failed: {why}") from None
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def migrate(self) -> list[int]:
        """Apply this component's migrations not applied yet; returns their numbers."""
        def step(db: psycopg.Connection[Any]) -> list[int]:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL,"
                       " version INTEGER NOT NULL, applied_at DOUBLE PRECISION NOT NULL,"
                       " PRIMARY KEY (component, version))")
            done = {v for (v,) in db.execute(
                "SELECT version FROM schema_migrations WHERE component = %s",
                (self._component,))}
            applied = []
            for version, script in enumerate(self._migrations, start=1):
                if version in done:
                    continue
                for stmt in filter(str.strip, script.split(";")):
                    db.execute(stmt.encode())  # bytes: no %-placeholders in DDL
                db.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                           (self._component, version, time.time()))
                applied.append(version)
            return applied
        return self.run(step, what="migrating the schema")

    @property
    def schema_version(self) -> int:
        row = self.run(lambda db: db.execute(
            "SELECT max(version) FROM schema_migrations WHERE component = %s",
            (self._component,)).fetchone(), what="reading the schema version")
        return int(row[0] or 0) if row else 0

    def rows(self, sql: str, args: Sequence[object], cls: type[T]) -> list[T]:
        found = self.run(lambda db: db.execute(sql, tuple(args)).fetchall(), what="reading")
        return [msgspec.json.decode(r[0], type=cls) for r in found]


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
            " SET data = excluded.data", (t.name, _text(t))), what=f"saving type {t.name}")

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
                     _text(s)))
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
            now = _now(db)
            row = db.execute("SELECT data FROM controllers WHERE name = %s FOR UPDATE",
                             (c.name,)).fetchone()
            was = msgspec.json.decode(row[0], type=Controller) if row else None
            since = was.since if was is not None and was.pid == c.pid else now
            new = msgspec.structs.replace(c, since=since, age_s=0.0)
            db.execute("INSERT INTO controllers VALUES (%s, %s, %s) ON CONFLICT (name)"
                       " DO UPDATE SET seen_at = excluded.seen_at, data = excluded.data",
                       (c.name, now, _text(new)))
        self._pg.run(beat, what=f"recording controller {c.name}'s heartbeat")

    def controllers(self) -> list[Controller]:
        """Every controller that ever beat, by name, with its `age_s`."""
        rows = self._pg.run(lambda db: db.execute(
            f"SELECT data, greatest(0, {_NOW} - seen_at) FROM controllers ORDER BY name"
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
            f"{_NOW} ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED", (int(limit),)).fetchall(),
            controller, lease_s, start=False), what="taking over expired claims")

    def _take(self, db: psycopg.Connection[Any], rows: list[tuple[str, int]],
              controller: str, lease_s: float, start: bool) -> list[Claim]:
        now = _now(db)
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
                [(c.job.state, _text(c.job), controller, c.epoch, c.lease_until, c.job.id)
                 for c in claims])
        return claims

    def renew(self, claims: Iterable[Claim], lease_s: float) -> list[Claim]:
        """Extend the claims that still hold; the ones missing from the answer are lost."""
        claims = list(claims)

        def renew(db: psycopg.Connection[Any]) -> list[Claim]:
            now = _now(db)
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
                f" WHERE id = %s AND owner = %s AND epoch = %s AND lease_until > {_NOW}",
                (job.state, _text(job), job.id, claim.controller, claim.epoch))
            if not cur.rowcount:
                return False
            _put_jobs(db, then)
            return True
        # not replayed: a COMMIT lost on the way back would be judged fenced the second time
        return self._pg.run(finish, what=f"finishing job {job.short_id}", idempotent=False)


class PgFlowStore:
    """`FlowStore` on PostgreSQL: the flows a hub runs and their audit."""

    def __init__(self, url: str, keep: int = AUDIT_KEEP,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self.keep = keep
        self._timeout = connect_timeout
        self._pg = Pg(url, "flows", FLOW_MIGRATIONS, connect_timeout)
        self.where = self._pg.where
        self.applied = self.migrate()  # what opening it migrated

    def migrate(self) -> list[int]:
        return self._pg.migrate()

    @property
    def schema_version(self) -> int:
        return self._pg.schema_version

    def close(self) -> None:
        self._pg.close()

    def save(self, rec: FlowRecord) -> None:
        self._pg.run(lambda db: _put_flow(db, rec), what=f"saving flow {rec.name}")

    def get(self, name: str) -> FlowRecord | None:
        found = self._pg.rows("SELECT data FROM flows WHERE name = %s", (name,), FlowRecord)
        return found[0] if found else None

    def all(self) -> list[FlowRecord]:
        return self._pg.rows("SELECT data FROM flows ORDER BY name", (), FlowRecord)

    def remove(self, name: str) -> None:
        self._pg.run(lambda db: db.execute("DELETE FROM flows WHERE name = %s", (name,)),
                     what=f"removing flow {name}")

    def record(self, rows: Sequence[AuditRow], flows: Iterable[FlowRecord] = ()) -> None:
        """Append audit rows and save the flows' counters: all of it, or none."""
        rows, recs = list(rows), list(flows)

        def write(db: psycopg.Connection[Any]) -> None:
            with db.cursor() as cur:
                cur.executemany("INSERT INTO audit (flow, data) VALUES (%s, %s)",
                                [(r.flow, _text(msgspec.structs.replace(r, seq=0)))
                                 for r in rows])
            for rec in recs:
                _put_flow(db, rec)
            for name in {r.flow for r in rows}:  # the cap: below the keep-th newest row
                db.execute("DELETE FROM audit WHERE flow = %s AND seq <= (SELECT seq FROM audit"
                           " WHERE flow = %s ORDER BY seq DESC LIMIT 1 OFFSET %s)",
                           (name, name, self.keep))
        self._pg.run(write, what=f"writing {len(rows)} audit row(s)", idempotent=False)

    def audit(self, name: str, after: int = 0, limit: int | None = None) -> list[AuditRow]:
        """The flow's audit rows with seq > `after`, oldest first; the newest `limit` only
        when given."""
        sql = "SELECT seq, data FROM audit WHERE flow = %s AND seq > %s ORDER BY seq DESC"
        args: list[Any] = [name, after]
        if limit is not None:
            sql += " LIMIT %s"
            args.append(int(limit))
        found = self._pg.run(lambda db: db.execute(sql, args).fetchall(), what="reading")
        out = []
        for seq, data in reversed(found):
            row = msgspec.json.decode(data, type=AuditRow)
            row.seq = seq
            out.append(row)
        return out


    # ---- several controllers (FlowCluster): leases, desired state, relayed events
    def take(self, name: str, controller: str, lease_s: float, start: bool = False
             ) -> tuple[FlowLease, str] | None:
        """Take the flow's lease when it is free (never held, ran out, released) or already
        ours; with `start`, also want it (`flows start`). Returns the lease and who held it
        before ("" when nobody, or we did); None: wanted nowhere, or another controller
        holds it (see `leases`)."""
        def take(db: psycopg.Connection[Any]) -> tuple[FlowLease, str] | None:
            now = _now(db)
            db.execute("INSERT INTO flow_leases (name, wanted) VALUES (%s, %s)"
                       " ON CONFLICT (name) DO NOTHING", (name, start))
            row = db.execute("SELECT wanted, owner, epoch, lease_until, reload FROM flow_leases"
                             " WHERE name = %s FOR UPDATE", (name,)).fetchone()
            assert row is not None
            wanted, owner, epoch, until, reload = row
            if owner and owner != controller and until > now:
                return None  # held, alive
            if not wanted and not start:
                return None
            db.execute("UPDATE flow_leases SET wanted = TRUE, owner = %s, epoch = %s,"
                       " lease_until = %s WHERE name = %s",
                       (controller, epoch + 1, now + lease_s, name))
            lease = FlowLease(name=name, wanted=True, owner=controller, epoch=epoch + 1,
                              remaining_s=lease_s, reload=reload)
            return lease, owner if owner != controller else ""
        return self._pg.run(take, what=f"taking flow {name}'s lease", idempotent=False)

    def renew_flows(self, controller: str, epochs: dict[str, int], lease_s: float
                    ) -> dict[str, FlowLease]:
        """Extend the leases still ours (same epoch, not run out, still wanted); those
        missing from the answer are lost: their runner stops them (fencing)."""
        names = list(epochs)
        if not names:
            return {}

        def renew(db: psycopg.Connection[Any]) -> dict[str, FlowLease]:
            now = _now(db)
            rows = db.execute(
                "UPDATE flow_leases SET lease_until = %s WHERE name = ANY(%s) AND owner = %s"
                " AND wanted AND lease_until > %s RETURNING name, epoch, reload",
                (now + lease_s, names, controller, now)).fetchall()
            return {n: FlowLease(name=n, owner=controller, epoch=e, remaining_s=lease_s,
                                 reload=r) for n, e, r in rows if epochs.get(n) == e}
        return self._pg.run(renew, what="renewing flow leases")

    def release(self, name: str, controller: str, epoch: int) -> None:
        """End our lease now (the hub stops): a peer may take the flow at once. The owner
        stays named, so the taker says whom it took it over from."""
        self._pg.run(lambda db: db.execute(
            "UPDATE flow_leases SET lease_until = 0 WHERE name = %s AND owner = %s AND"
            " epoch = %s", (name, controller, epoch)), what=f"releasing flow {name}")

    def want(self, name: str, wanted: bool) -> FlowLease | None:
        """Set the desired state (`flows stop`: False); the runner, wherever it is, reacts."""
        def want(db: psycopg.Connection[Any]) -> FlowLease | None:
            db.execute("UPDATE flow_leases SET wanted = %s WHERE name = %s", (wanted, name))
            return _leases(db, name)[0] if _leases(db, name) else None
        return self._pg.run(want, what=f"setting flow {name}'s desired state")

    def ask_reload(self, name: str) -> FlowLease | None:
        """Ask the flow's runner, wherever it is, to reload it."""
        def ask(db: psycopg.Connection[Any]) -> FlowLease | None:
            db.execute("UPDATE flow_leases SET reload = reload + 1 WHERE name = %s", (name,))
            found = _leases(db, name)
            return found[0] if found else None
        return self._pg.run(ask, what=f"asking for flow {name}'s reload")

    def leases(self) -> list[FlowLease]:
        """Every flow's lease and desired state, by name."""
        return self._pg.run(lambda db: _leases(db), what="reading flow leases")

    def post_events(self, origin: str, events: Sequence[tuple[str, str]]) -> None:
        """Events raised on `origin` (topic, JSON data) for the other controllers to relay;
        NOTIFY on COMMIT wakes them (no data in it: they read the rows)."""
        events = list(events)
        if not events:
            return

        def post(db: psycopg.Connection[Any]) -> None:
            now = _now(db)
            with db.cursor() as cur:
                cur.executemany("INSERT INTO events (origin, at, topic, data) VALUES"
                                " (%s, %s, %s, %s)", [(origin, now, t, d) for t, d in events])
            db.execute("DELETE FROM events WHERE at < %s", (now - EVENTS_KEEP_S,))
            db.execute("SELECT pg_notify(%s, '')", (EVENTS_CHANNEL,))
        self._pg.run(post, what=f"posting {len(events)} event(s)", idempotent=False)

    def events_after(self, seq: int, origin: str, limit: int = 1000
                     ) -> list[tuple[int, str, str, str]]:
        """(seq, origin, topic, data) of events after `seq` not raised by `origin`."""
        return self._pg.run(lambda db: [tuple(r) for r in db.execute(
            "SELECT seq, origin, topic, data FROM events WHERE seq > %s AND origin <> %s"
            " ORDER BY seq LIMIT %s", (seq, origin, limit)).fetchall()], what="reading events")

    def last_event(self) -> int:
        """The newest event's seq (0: none): a controller starting relays what comes after."""
        row = self._pg.run(lambda db: db.execute("SELECT max(seq) FROM events").fetchone(),
                           what="reading events")
        return int(row[0] or 0) if row else 0

    def put_key(self, name: str, key: str, state: str) -> None:
        """An agent's key as a controller decided it (accepted, rejected), for all."""
        self._pg.run(lambda db: db.execute(
            f"INSERT INTO agent_keys VALUES (%s, %s, %s, {_NOW}) ON CONFLICT (name) DO UPDATE"
            " SET key = excluded.key, state = excluded.state, at = excluded.at",
            (name, key, state)), what=f"sharing key {name}")

    def drop_key(self, name: str) -> None:
        self._pg.run(lambda db: db.execute("DELETE FROM agent_keys WHERE name = %s", (name,)),
                     what=f"forgetting key {name}")

    def shared_keys(self) -> list[tuple[str, str, str]]:
        """(name, key, state) of every key a controller accepted or rejected."""
        return self._pg.run(lambda db: [(n, k, st) for n, k, st in db.execute(
            "SELECT name, key, state FROM agent_keys ORDER BY name").fetchall()],
            what="reading shared keys")

    def listen_calls(self, name: str = "") -> Wakeup:
        """Woken (LISTEN/NOTIFY) when a call or a result between controllers is written."""
        return _PgWakeup(self.url, self.where, self._timeout, CALLS_CHANNEL, name)

    def listen_events(self, name: str = "") -> Wakeup:
        """Woken (LISTEN/NOTIFY) when a controller posts events; a dropped connection is
        re-made and answers True (look now)."""
        return _PgWakeup(self.url, self.where, self._timeout, EVENTS_CHANNEL, name)


def _leases(db: psycopg.Connection[Any], name: str | None = None) -> list[FlowLease]:
    where = "WHERE name = %s" if name is not None else ""
    rows = db.execute(f"SELECT name, wanted, owner, epoch, lease_until - {_NOW}, reload"
                      f" FROM flow_leases {where} ORDER BY name",
                      (name,) if name is not None else ()).fetchall()
    return [FlowLease(name=n, wanted=w, owner=o, epoch=e, remaining_s=float(r), reload=rl)
            for n, w, o, e, r, rl in rows]


#: the server's clock in seconds: leases are judged by one clock, not each controller's
_NOW = "extract(epoch FROM clock_timestamp())::float8"


def _now(db: psycopg.Connection[Any]) -> float:
    row = db.execute(f"SELECT {_NOW}").fetchone()
    return float(row[0]) if row else 0.0


def _text(value: object) -> str:
    return _enc.encode(value).decode()


def _put_jobs(db: psycopg.Connection[Any], jobs: Sequence[Job]) -> None:
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO jobs (id, op, system_id, state, data) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state, data = excluded.data",
            [(j.id, j.op, j.system_id, j.state, _text(j)) for j in jobs])
    if any(j.state == "queued" for j in jobs):  # delivered on COMMIT, once per transaction
        db.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))


class _PgWakeup:
    """Wakeup on PostgreSQL: LISTEN on a connection of its own (see base.Wakeup)."""

    def __init__(self, url: str, where: str, connect_timeout: float,
                 channel: str = JOBS_CHANNEL, name: str = "") -> None:
        self._url, self._where, self._timeout = url, where, connect_timeout
        self._channel, self._name = channel, name  # name: application_name (pg_stat_activity)
        self._conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0
        self._listen()

    def _listen(self) -> None:
        try:
            self._conn = psycopg.connect(
                self._url, autocommit=True, connect_timeout=max(1, round(self._timeout)),
                keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                application_name=self._name or None)
            self._conn.execute(f"LISTEN {self._channel}")
        except psycopg.Error as e:
            self._conn = None
            why = " ".join(str(e).split()) or type(e).__name__
            what = "queued jobs" if self._channel == JOBS_CHANNEL else self._channel
            raise StoreError(f"store {self._where}: cannot listen for {what} ({why});"
                             " check that PostgreSQL runs") from None

    def wait(self, timeout: float) -> bool:
        """True when jobs were queued (or the connection was re-made: look now)."""
        if self._conn is None or self._conn.closed:
            self._listen()
            self.reconnects += 1
            return True
        conn = self._conn
        try:
            got = list(conn.notifies(timeout=timeout, stop_after=1))
            # drain what else arrived: one wake-up for a burst
            got += list(conn.notifies(timeout=0))
        except psycopg.OperationalError:
            conn.close()
            if self._conn is not conn:  # `close` ran meanwhile: shutting down, no new LISTEN
                return False
            self._listen()  # missed notifications are lost: the caller looks now
            self.reconnects += 1
            return True
        return bool(got)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _put_flow(db: psycopg.Connection[Any], rec: FlowRecord) -> None:
    db.execute("INSERT INTO flows VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
               " SET data = excluded.data", (rec.name, _text(rec)))
