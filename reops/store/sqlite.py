"""The embedded store (the default engine): Types, Systems and Jobs in SQLite (stdlib, WAL,
versioned schema).

WAL lets the CLI read while the queue process writes; every change is one short
transaction, so a SIGKILL at any point leaves the last committed state, never half a row.
`synchronous=FULL`: a committed job state survives a power cut too, not only a crash (the
queue decides what to retry from it). The file is 0600 in a 0700 directory: it names every
machine and how to reach it.
Rows keep the msgspec JSON of the value plus the columns we select and order on.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import msgspec

from reops.store.base import Claim, Controller, Wakeup, id_prefix, only_one
from reops.store.model import Job, JobState, MachinesError, System, Type

T = TypeVar("T")

#: schema versions, applied in order, each once; never edit a released step, append one
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE types (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE systems (
        id TEXT PRIMARY KEY, hostname TEXT NOT NULL, type TEXT NOT NULL,
        hypervisor TEXT NOT NULL, domain TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX systems_hostname ON systems(hostname);
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, op TEXT NOT NULL,
        system_id TEXT, state TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX jobs_state ON jobs(state);
    """,
    "CREATE UNIQUE INDEX systems_domain ON systems(hypervisor, domain) WHERE domain != '';",
    # claims (QueueStore): who holds a running job, until when, and its fencing epoch
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    """,
    # controllers' heartbeats (Membership)
    "CREATE TABLE controllers (name TEXT PRIMARY KEY, seen_at REAL NOT NULL, data TEXT NOT NULL);",
    # a system's jobs run one at a time, in order, across claimers (see claim)
    "CREATE INDEX jobs_system_open ON jobs(system_id, seq) WHERE state IN ('queued', 'running');",
)

_enc = msgspec.json.Encoder()


class SqliteDb:
    """One SQLite file: private, WAL, a busy timeout, one lock for the threads of a process,
    and its numbered migrations (`schema_migrations`). Both SQLite stores are built on it."""

    def __init__(self, path: Path | str, migrations: tuple[str, ...],
                 synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._migrations = migrations
        _private(self.path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=10000")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: all of it is on disk after the block, or none of it."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet, in one transaction; returns their numbers."""
        applied: list[int] = []
        with self.tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
            for version, script in enumerate(self._migrations, start=1):
                if version in done:
                    continue
                for stmt in filter(str.strip, script.split(";")):
                    db.execute(stmt)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
                applied.append(version)
        return applied

    @property
    def schema_version(self) -> int:
        with self.lock:
            row = self.db.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)


class Store:
    """`MachineStore` on SQLite: Types, Systems and Jobs on disk; safe to share between
    threads of one process. Opening it migrates the schema."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._sql = SqliteDb(self.path, MIGRATIONS)
        self._db = self._sql.db
        self._lock = self._sql.lock
        self._queued = _Signal()  # Wakeup: jobs queued through this store
        self.applied = self.migrate()  # what opening it migrated (`reops store migrate`)

    def close(self) -> None:
        self._sql.close()

    def tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One atomic write: all of it is on disk after the block, or none of it."""
        return self._sql.tx()

    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet; returns their numbers (empty: up to date)."""
        return self._sql.migrate()

    def pragma(self, name: str) -> object:
        """A PRAGMA's value on this store's connection (e.g. synchronous: 2 is FULL)."""
        if not name.isidentifier():
            raise ValueError(f"bad pragma name {name!r}")
        with self._lock:
            return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    @property
    def schema_version(self) -> int:
        return self._sql.schema_version

    def _rows(self, sql: str, args: Iterable[object], cls: type[T]) -> list[T]:
        with self._lock:
            rows = self._db.execute(sql, tuple(args)).fetchall()
        return [msgspec.json.decode(r[0], type=cls) for r in rows]

    # ---- types
    def put_type(self, t: Type) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO types VALUES (?, ?)", (t.name, _enc.encode(t)))

    def get_type(self, name: str) -> Type:
        found = self._rows("SELECT data FROM types WHERE name = ?", (name,), Type)
        if not found:
            known = ", ".join(t.name for t in self.types()) or "none; add one with `types add`"
            raise MachinesError(f"unknown type {name!r} (known: {known})")
        return found[0]

    def types(self) -> list[Type]:
        return self._rows("SELECT data FROM types ORDER BY name", (), Type)

    def remove_type(self, name: str) -> None:
        self.get_type(name)
        with self.tx() as db:
            used = db.execute("SELECT count(*) FROM systems WHERE type = ?", (name,)).fetchone()
            if used[0]:
                raise MachinesError(f"type {name!r} is used by {used[0]} system(s)")
            db.execute("DELETE FROM types WHERE name = ?", (name,))

    # ---- systems
    def record(self, systems: Iterable[System], jobs: Iterable[Job] = ()) -> None:
        """Insert or replace systems and jobs together: all are recorded, or none."""
        jobs = list(jobs)
        try:
            with self.tx() as db:
                for s in systems:
                    db.execute(
                        "INSERT INTO systems VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE"
                        " SET hostname = excluded.hostname, type = excluded.type,"
                        " hypervisor = excluded.hypervisor, domain = excluded.domain,"
                        " data = excluded.data",
                        (s.id, s.hostname, s.type, s.placement.hypervisor,
                         s.placement.domain, _enc.encode(s)),
                    )
                for j in jobs:
                    _put_job(db, j)
        except sqlite3.IntegrityError as e:
            raise MachinesError(f"a system with that domain name already exists ({e})") from None
        self._queued.bump(jobs)

    def put_systems(self, systems: Iterable[System]) -> None:
        self.record(systems)

    def put_system(self, s: System) -> None:
        self.put_systems([s])

    def system(self, id_: str) -> System | None:
        found = self._rows("SELECT data FROM systems WHERE id = ?", (id_,), System)
        return found[0] if found else None

    def systems(self) -> list[System]:
        return self._rows("SELECT data FROM systems ORDER BY hostname, id", (), System)

    def system_by_domain(self, hypervisor: str, domain: str) -> System | None:
        found = self._rows(
            "SELECT data FROM systems WHERE hypervisor = ? AND domain = ?",
            (hypervisor, domain), System,
        )
        return found[0] if found else None

    def remove_system(self, id_: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM systems WHERE id = ?", (id_,))

    # ---- jobs
    def put_job(self, j: Job) -> None:
        self.put_jobs([j])

    def put_jobs(self, jobs: Iterable[Job]) -> None:
        """Write jobs together (e.g. an interrupted job and its retry): all, or none."""
        jobs = list(jobs)
        with self.tx() as db:
            for j in jobs:
                _put_job(db, j)
        self._queued.bump(jobs)

    def listen(self) -> Wakeup:
        """Woken when this process's store records a queued job (Wakeup)."""
        return _LocalWakeup(self._queued)

    def job(self, id_or_prefix: str) -> Job:
        """A job by full id or unique prefix; a clear error when none or several match."""
        return only_one(
            "job", id_or_prefix,
            self._rows("SELECT data FROM jobs WHERE id LIKE ? || '%' ORDER BY seq LIMIT 2",
                       (id_prefix(id_or_prefix),), Job),
        )

    def jobs(self, states: Iterable[JobState] = (), limit: int | None = None,
             controller: str | None = None) -> list[Job]:
        """Jobs oldest first, optionally only in `states`, optionally the newest `limit`,
        optionally only those `controller` ran."""
        wanted: tuple[str, ...] = tuple(states)
        where = [f"state IN ({','.join('?' * len(wanted))})"] if wanted else []
        if controller is not None:
            where.append("json_extract(data, '$.controller') = ?")
            wanted += (controller,)
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT data, seq FROM jobs {cond} ORDER BY seq DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self._rows(f"SELECT data FROM ({sql}) ORDER BY seq", wanted, Job)

    def system_by_prefix(self, prefix: str) -> System:
        return only_one(
            "system", prefix,
            self._rows("SELECT data FROM systems WHERE id LIKE ? || '%' LIMIT 2",
                       (id_prefix(prefix),), System),
        )

    # ---- controllers (Membership)
    def beat(self, c: Controller) -> None:
        """Record that `c` is alive now (a new pid under the same name starts a new since)."""
        with self.tx() as db:
            now = time.time()
            row = db.execute("SELECT data FROM controllers WHERE name = ?", (c.name,)).fetchone()
            was = msgspec.json.decode(row[0], type=Controller) if row else None
            since = was.since if was is not None and was.pid == c.pid else now
            new = msgspec.structs.replace(c, since=since, age_s=0.0)
            db.execute("INSERT INTO controllers VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE"
                       " SET seen_at = excluded.seen_at, data = excluded.data",
                       (c.name, now, _enc.encode(new)))

    def controllers(self) -> list[Controller]:
        """Every controller that ever beat, by name, with its `age_s`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT data, seen_at FROM controllers ORDER BY name").fetchall()
        now = time.time()
        return [msgspec.structs.replace(msgspec.json.decode(d, type=Controller),
                                        age_s=max(0.0, now - seen)) for d, seen in rows]

    def leave(self, name: str) -> None:
        """Forget a controller (it stopped cleanly)."""
        with self.tx() as db:
            db.execute("DELETE FROM controllers WHERE name = ?", (name,))

    # ---- claims (QueueStore): one writer at a time, so no row is claimed twice
    def claim(self, controller: str, limit: int, lease_s: float,
              ids: Collection[str] | None = None) -> list[Claim]:
        """Up to `limit` queued jobs, oldest first, now running under `controller`; only
        those among `ids` when given."""
        wanted = () if ids is None else tuple(ids)
        only = "" if ids is None else f" AND id IN ({','.join('?' * len(wanted))})"
        if ids is not None and not wanted:
            return []
        with self.tx() as db:  # as on PostgreSQL: a system's jobs one at a time, in order
            rows = db.execute(
                f"SELECT data, epoch FROM jobs j WHERE state = 'queued'{only} AND"
                " (j.system_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs o WHERE"
                " o.system_id = j.system_id AND o.seq < j.seq AND o.state IN"
                " ('queued', 'running'))) ORDER BY seq LIMIT ?",
                (*wanted, int(limit))).fetchall()
            return self._take(db, rows, controller, lease_s, start=True)

    def expired(self, controller: str, limit: int, lease_s: float) -> list[Claim]:
        """Take over running jobs whose lease ran out (their controller died or stalled)."""
        with self.tx() as db:
            rows = db.execute("SELECT data, epoch FROM jobs WHERE state = 'running' AND"
                              " lease_until <= ? ORDER BY seq LIMIT ?",
                              (time.time(), int(limit))).fetchall()
            return self._take(db, rows, controller, lease_s, start=False)

    def _take(self, db: sqlite3.Connection, rows: list[tuple[str, int]], controller: str,
              lease_s: float, start: bool) -> list[Claim]:
        now = time.time()
        out = []
        for data, epoch in rows:
            job = msgspec.json.decode(data, type=Job)
            if start:
                job = msgspec.structs.replace(job, state="running", started_at=now,
                                              controller=controller)
            claim = Claim(job=job, controller=controller, epoch=epoch + 1,
                          lease_until=now + lease_s)
            db.execute("UPDATE jobs SET state = ?, data = ?, owner = ?, epoch = ?,"
                       " lease_until = ? WHERE id = ?",
                       (job.state, _enc.encode(job), controller, claim.epoch,
                        claim.lease_until, job.id))
            out.append(claim)
        return out

    def renew(self, claims: Iterable[Claim], lease_s: float) -> list[Claim]:
        """Extend the claims that still hold; the ones missing from the answer are lost."""
        out = []
        with self.tx() as db:
            now = time.time()
            for c in claims:
                cur = db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ?"
                                 " AND epoch = ? AND lease_until > ?",
                                 (now + lease_s, c.job.id, c.controller, c.epoch, now))
                if cur.rowcount:
                    out.append(msgspec.structs.replace(c, lease_until=now + lease_s))
        return out

    def finish(self, claim: Claim, job: Job, then: Iterable[Job] = ()) -> bool:
        """Write the job's end and the jobs it queued if `claim` still holds; False: fenced
        (its lease ran out or another controller took it over), nothing written."""
        then = list(then)
        with self.tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, data = ?, owner = NULL, lease_until = NULL"
                " WHERE id = ? AND owner = ? AND epoch = ? AND lease_until > ?",
                (job.state, _enc.encode(job), job.id, claim.controller, claim.epoch,
                 time.time()))
            if not cur.rowcount:
                return False
            for j in then:
                _put_job(db, j)
        self._queued.bump(then)
        return True


def _private(path: Path) -> None:
    """Create the store's directory 0700 and its file (and WAL files) 0600, tightening a
    looser file. An existing directory is left as it is: it is reops' home, whose mode
    `reops.core.settings.home()` checks (and warns about) for everything in it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(extra, 0o600)


class _Signal:
    """Counts jobs queued through one store, after they are committed (SQLite's Wakeup)."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def bump(self, jobs: Iterable[Job]) -> None:
        if any(j.state == "queued" for j in jobs):
            with self.cond:
                self.count += 1
                self.cond.notify_all()


class _LocalWakeup:
    """Wakeup for SQLite: woken by jobs queued through the same store (see base.Wakeup)."""

    def __init__(self, signal: _Signal) -> None:
        self._signal = signal
        self._seen = signal.count

    def wait(self, timeout: float) -> bool:
        with self._signal.cond:
            woke = self._signal.cond.wait_for(lambda: self._signal.count != self._seen,
                                              timeout)
            self._seen = self._signal.count
        return woke

    def close(self) -> None:
        pass


def _put_job(db: sqlite3.Connection, j: Job) -> None:
    db.execute(
        "INSERT INTO jobs (id, op, system_id, state, data) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET state = excluded.state, data = excluded.data",
        (j.id, j.op, j.system_id, j.state, _enc.encode(j)),
    )
