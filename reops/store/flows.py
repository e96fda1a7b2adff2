"""Flows that live in the controller: which ones run (so a restarted hub runs them again)
and the audit of every firing, in SQLite.

The interface is small on purpose (`FlowStore`): save/get/running/remove a `FlowRecord`,
`record` audit rows in one transaction with the flow's counters, `audit` them back. Issue
13 puts a PostgreSQL engine behind the same methods (reops.store.pg_flows). The SQLite
engine keeps its own file (`flows.db` beside `machines.db`) and its own migration
sequence, so the flow runner never waits on the job queue's fsyncs and the two schemas
evolve apart. WAL with `synchronous=NORMAL`: a committed row survives `kill -9` of the hub
(the WAL is in the OS page cache); only a power cut may lose the last audit rows, a trade
made because a busy flow writes many of them. The audit is capped per flow (`keep`,
oldest rows go first): disk stays bounded for a flow that fires forever.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from reops.store.sqlite import SqliteDb

FlowState = Literal["starting", "running", "error", "stopped"]

#: schema versions of flows.db, applied in order, each once; append, never edit
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE flows (name TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, flow TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX audit_flow ON audit(flow, seq);
    """,
)

#: audit rows kept per flow by default (the oldest are deleted beyond it)
AUDIT_KEEP = 100_000


class FlowRecord(msgspec.Struct, kw_only=True):
    """A flow the hub runs: what to import and call, and how it is doing."""

    name: str
    file: str  # absolute path of the flow file
    func: str  # the flow's function (or @flow name)
    args: list[str] = msgspec.field(default_factory=list)  # its options, as typed
    watch: bool = False  # reload when the file changes
    wanted: bool = True  # run it (again after a hub restart) until `flows stop`
    state: FlowState = "starting"
    error: str = ""  # the last error (file:line), kept while the old version runs on
    version: str = ""  # sha256 prefix of the file that runs
    since: float = 0.0  # when this version started running
    started_at: float = 0.0  # first `flows start`
    restarts: int = 0  # times a hub (re)start brought it back
    reloads: int = 0
    fired: int = 0
    last: str = ""  # the last firing's outcome, e.g. "2 ok, 1 failed"
    in_flight: int = 0  # actions running right now (not stored meaningfully)
    dropped: int = 0  # audit rows lost because the writer fell MAX_PENDING behind
    max_rate: str = ""  # its triggers' storm limit ("": the hub's [flows] max_rate)
    squelched: int = 0  # storms: times a trigger went over max_rate
    squelch_dropped: int = 0  # trigger events dropped by those storms (once they ended)
    publish_dropped: int = 0  # bus messages this flow's publish() dropped (shown by ls)
    reloaded: str = ""  # what the last reload kept and swapped ("kept …; swapped …")
    controller: str = ""  # several controllers (PostgreSQL): the one that runs it
    taken_from: str = ""  # … and the one it was taken over from, when it died or left


class AuditRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of a flow's audit: a host's outcome in one firing, or a flow event."""

    seq: int = 0
    flow: str
    at: float
    firing: int = 0  # groups the rows of one firing (0: a flow event: start, reload, error)
    trigger: str = ""  # what fired it (the trigger event, or the step when there is none)
    version: str = ""
    host: str = ""
    status: str = ""  # ok | failed | … for a host; started | reloaded | error … for the flow
    code: int = 0
    started_at: float = 0.0  # the host's step: when it started, how long it took
    duration_s: float = 0.0
    detail: str = ""  # the op, and the error's last line when it failed
    controller: str = ""  # several controllers: the one that wrote it


class FlowStore(Protocol):
    """What the flow runner needs from a store: `SqliteFlowStore` here, `PgFlowStore` in
    reops.store.pg_flows (both pass tests/test_store_contract.py)."""

    where: str
    applied: list[int]

    def save(self, rec: FlowRecord) -> None: ...
    def get(self, name: str) -> FlowRecord | None: ...
    def all(self) -> list[FlowRecord]: ...
    def remove(self, name: str) -> None: ...
    def record(self, rows: Sequence[AuditRow], flows: Iterable[FlowRecord] = ()) -> None: ...
    def audit(self, name: str, after: int = 0, limit: int | None = None) -> list[AuditRow]: ...
    def close(self) -> None: ...
    def migrate(self) -> list[int]: ...
    @property
    def schema_version(self) -> int: ...


class FlowLease(msgspec.Struct, frozen=True, kw_only=True):
    """Who runs a flow cluster-wide (several controllers on PostgreSQL): the desired state
    (`wanted`, a reload asked for) and the lease its runner holds on the store's clock.

    A lease, not an advisory lock: it is judged by the store's clock and survives the
    runner's connection being re-made (an advisory lock dies with its session and would
    hand the flow to a peer while its runner still runs it), it carries a fencing `epoch`,
    and every controller can read who holds it (`flows ls`, `hub status`)."""

    name: str
    wanted: bool = True
    owner: str = ""  # the controller holding (or, after its lease ran out, last holding) it
    epoch: int = 0  # bumped by every take: a runner that lost its lease cannot renew it
    remaining_s: float = 0.0  # seconds its lease still runs, on the store's clock (<= 0: free)
    reload: int = 0  # reloads asked for (any controller); the runner reloads when it grows


class FlowCluster(Protocol):
    """The flows' store shared by several controllers (`PgFlowStore`): leases and the
    events every controller relays onto its own bus."""

    def take(self, name: str, controller: str, lease_s: float, start: bool = False
             ) -> tuple[FlowLease, str] | None: ...
    def renew_flows(self, controller: str, epochs: dict[str, int], lease_s: float
                    ) -> dict[str, FlowLease]: ...
    def release(self, name: str, controller: str, epoch: int) -> None: ...
    def want(self, name: str, wanted: bool) -> FlowLease | None: ...
    def ask_reload(self, name: str) -> FlowLease | None: ...
    def leases(self) -> list[FlowLease]: ...
    def post_events(self, origin: str, events: Sequence[tuple[str, str]]) -> None: ...
    def events_after(self, seq: int, origin: str, limit: int = 1000
                     ) -> list[tuple[int, str, str, str]]: ...
    def last_event(self) -> int: ...
    def put_key(self, name: str, key: str, state: str) -> None: ...
    def drop_key(self, name: str) -> None: ...
    def shared_keys(self) -> list[tuple[str, str, str]]: ...


_enc = msgspec.json.Encoder()


class SqliteFlowStore:
    """`FlowStore` on SQLite; safe to share between threads of one process."""

    def __init__(self, path: Path | str, keep: int = AUDIT_KEEP) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.keep = keep
        self._sql = SqliteDb(self.path, MIGRATIONS, synchronous="NORMAL")
        self._db = self._sql.db
        self._lock = self._sql.lock
        self._tx = self._sql.tx
        self.applied = self.migrate()  # what opening it migrated

    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet; returns their numbers (empty: up to date)."""
        return self._sql.migrate()

    @property
    def schema_version(self) -> int:
        return self._sql.schema_version

    def close(self) -> None:
        self._sql.close()

    def save(self, rec: FlowRecord) -> None:
        with self._tx() as db:
            _put(db, rec)

    def get(self, name: str) -> FlowRecord | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM flows WHERE name = ?", (name,)).fetchone()
        return msgspec.json.decode(row[0], type=FlowRecord) if row else None

    def all(self) -> list[FlowRecord]:
        with self._lock:
            rows = self._db.execute("SELECT data FROM flows ORDER BY name").fetchall()
        return [msgspec.json.decode(r[0], type=FlowRecord) for r in rows]

    def remove(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM flows WHERE name = ?", (name,))

    def record(self, rows: Sequence[AuditRow], flows: Iterable[FlowRecord] = ()) -> None:
        """Append audit rows and save the flows' counters: all of it, or none."""
        with self._tx() as db:
            names: set[str] = set()
            for r in rows:
                names.add(r.flow)
                db.execute("INSERT INTO audit (flow, data) VALUES (?, ?)",
                           (r.flow, _enc.encode(msgspec.structs.replace(r, seq=0))))
            for rec in flows:
                _put(db, rec)
            for name in names:  # the cap: delete below the keep-th newest row
                db.execute("DELETE FROM audit WHERE flow = ? AND seq <= (SELECT seq FROM audit"
                           " WHERE flow = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                           (name, name, self.keep))

    def audit(self, name: str, after: int = 0, limit: int | None = None) -> list[AuditRow]:
        """The flow's audit rows with seq > `after`, oldest first; the newest `limit` only
        when given."""
        sql = "SELECT seq, data FROM audit WHERE flow = ? AND seq > ? ORDER BY seq DESC"
        args: list[Any] = [name, after]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for seq, data in reversed(rows):
            row = msgspec.json.decode(data, type=AuditRow)
            row.seq = seq
            out.append(row)
        return out


def _put(db: sqlite3.Connection, rec: FlowRecord) -> None:
    db.execute("INSERT INTO flows VALUES (?, ?) ON CONFLICT(name) DO UPDATE"
               " SET data = excluded.data", (rec.name, _enc.encode(rec)))
