"""The PostgreSQL schema, by version, and how a version is applied.

Why apart: the schema is append-only history (a released step is never edited), read when
the database is set up or migrated (`reops store migrate`), while the engine's queries
(reops.store.postgres, reops.store.pg_flows) change with the features. Each component
(machines, flows) has its own sequence in `schema_migrations`, as flows.db has in SQLite;
controllers migrating at once take one advisory lock, so each step is applied once.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

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

#: the advisory lock `migrate` holds, so controllers migrating at once apply steps once
MIGRATE_LOCK = 0x7265_6F70  # "reop"


def apply(db: psycopg.Connection[Any], component: str, migrations: tuple[str, ...]
          ) -> list[int]:
    """In `db`'s transaction: apply `component`'s migrations not applied yet; returns their
    numbers (under MIGRATE_LOCK: another controller migrating waits, then applies none)."""
    db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL,"
               " version INTEGER NOT NULL, applied_at DOUBLE PRECISION NOT NULL,"
               " PRIMARY KEY (component, version))")
    done = {v for (v,) in db.execute(
        "SELECT version FROM schema_migrations WHERE component = %s",
        (component,))}
    applied = []
    for version, script in enumerate(migrations, start=1):
        if version in done:
            continue
        for stmt in filter(str.strip, script.split(";")):
            db.execute(stmt.encode())  # bytes: no %-placeholders in DDL
        db.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                   (component, version, time.time()))
        applied.append(version)
    return applied


def version(db: psycopg.Connection[Any], component: str) -> int:
    """The last step of `component` applied (0: none)."""
    row = db.execute("SELECT max(version) FROM schema_migrations WHERE component = %s",
                     (component,)).fetchone()
    return int(row[0] or 0) if row else 0
