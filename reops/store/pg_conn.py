"""The connection to PostgreSQL: one per process, retried, and LISTEN wake-ups.

Why apart: how the engine talks to the server (one shared connection, one transaction per
call, reconnecting, LISTEN/NOTIFY) is the same for the machines' store (reops.store.postgres),
the flows' store (reops.store.pg_flows) and the calls across controllers
(reops.hub.remote_calls); what they ask is theirs.

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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg import conninfo, errors

from reops.store import pg_schema
from reops.store.base import StoreError

T = TypeVar("T")

#: the NOTIFY channel that wakes claimers when jobs are queued (the payload stays empty)
JOBS_CHANNEL = "reops_jobs"
#: the NOTIFY channel that tells controllers events were posted (the payload stays empty)
EVENTS_CHANNEL = "reops_events"
#: the NOTIFY channel for calls between controllers and their results (empty payload)
CALLS_CHANNEL = "reops_calls"
#: seconds to wait for PostgreSQL to accept a connection
CONNECT_TIMEOUT = 10.0
#: the server's clock in seconds: leases are judged by one clock, not each controller's
SERVER_NOW = "extract(epoch FROM clock_timestamp())::float8"

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
        return self.run(lambda db: pg_schema.apply(db, self._component, self._migrations),
                        what="migrating the schema")

    @property
    def schema_version(self) -> int:
        return self.run(lambda db: pg_schema.version(db, self._component),
                        what="reading the schema version")

    def rows(self, sql: str, args: Sequence[object], cls: type[T]) -> list[T]:
        found = self.run(lambda db: db.execute(sql, tuple(args)).fetchall(), what="reading")
        return [msgspec.json.decode(r[0], type=cls) for r in found]


def server_now(db: psycopg.Connection[Any]) -> float:
    """The server's clock (see SERVER_NOW)."""
    row = db.execute(f"SELECT {SERVER_NOW}").fetchone()
    return float(row[0]) if row else 0.0


def as_text(value: object) -> str:
    """A row's msgspec JSON, as the TEXT column keeps it (byte-exact, as in SQLite)."""
    return _enc.encode(value).decode()


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
