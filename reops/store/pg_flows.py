"""The flows' store on PostgreSQL: flows, audit, leases, events and shared agent keys.

Why apart: what several controllers share to run flows together (reops.hub.cluster,
reops.hub.flow_cluster) has its own schema sequence (`flows`) and its own queries; the
machines and the job queue (reops.store.postgres) share only the connection with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import psycopg

from reops.store.base import Wakeup
from reops.store.flows import AUDIT_KEEP, AuditRow, FlowLease, FlowRecord
from reops.store.pg_conn import (
    CALLS_CHANNEL,
    CONNECT_TIMEOUT,
    EVENTS_CHANNEL,
    SERVER_NOW,
    Pg,
    _PgWakeup,
    as_text,
    server_now,
)
from reops.store.pg_schema import FLOW_MIGRATIONS

#: seconds posted events are kept (a controller that was away longer misses older ones)
EVENTS_KEEP_S = 600.0


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
                                [(r.flow, as_text(msgspec.structs.replace(r, seq=0)))
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
            now = server_now(db)
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
            now = server_now(db)
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
            now = server_now(db)
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
            f"INSERT INTO agent_keys VALUES (%s, %s, %s, {SERVER_NOW}) ON CONFLICT (name) DO UPDATE"
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
    rows = db.execute(f"SELECT name, wanted, owner, epoch, lease_until - {SERVER_NOW}, reload"
                      f" FROM flow_leases {where} ORDER BY name",
                      (name,) if name is not None else ()).fetchall()
    return [FlowLease(name=n, wanted=w, owner=o, epoch=e, remaining_s=float(r), reload=rl)
            for n, w, o, e, r, rl in rows]


def _put_flow(db: psycopg.Connection[Any], rec: FlowRecord) -> None:
    db.execute("INSERT INTO flows VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
               " SET data = excluded.data", (rec.name, as_text(rec)))
