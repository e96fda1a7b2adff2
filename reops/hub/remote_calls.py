"""Calls across controllers: a call made on one hub reaches an agent connected to another.

Only with several hubs on one PostgreSQL store (reops.hub.cluster). Each hub records which
agents it holds (`agent_holders`: name → controller, written on register and drop); a
holder row counts only while its controller beats (the membership clock), so a dead
controller's rows are ignored, and a restarted one clears its own at start.

A call on hub A for an agent not connected to A but held by a live peer B is written to
`remote_calls` (origin, target, agent, the encoded request, deadline on the store's clock)
with an empty NOTIFY; B claims it (its LISTEN wake-up, polling each POLL_S as fallback),
runs it on its agent like any local call and writes the result row; A wakes, answers its
client exactly as a local call would, and deletes the row (rows live only while a call is
in flight: the table stays small).

Faults: B stops beating while the call is in flight → A answers `lost` (it may have run;
never re-run); a call B had not taken yet → `unreachable`; past its deadline → `timeout`.
A client that leaves marks its row `cancel` (or deletes it, not taken yet): B stops the
call on its agent, as a local call's Cancel would.

Streamed calls (`stream=True`): B writes each line its agent prints to `remote_lines`
(call, seq) with an empty NOTIFY, A reads and deletes them (DELETE … RETURNING: each
line once, in seq order, all of a call's lines before its result). Bounded: at most
MAX_LINES of a call wait in the store (or in B's memory); past that B drops lines and
says `… N lines dropped` where they were. Lines go with their call's row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from reops_agent.protocol import CodeRef

from reops.hub.calls import OnDone, OnLine, failure
from reops.hub.cluster import run_all
from reops.store.base import StoreError, Wakeup
from reops.store.pg_conn import CALLS_CHANNEL, Pg
from reops.store.pg_schema import FLOW_MIGRATIONS

if TYPE_CHECKING:
    from reops.hub.fleet import Fleet

log = logging.getLogger("reops.hub.remote_calls")

#: seconds between two looks at the calls table when no NOTIFY comes (the fallback)
POLL_S = 1.0
#: seconds an unanswered row outlives its deadline before anyone deletes it (an origin
#: that died never collects its result)
KEEP_S = 600.0
_NOW = "extract(epoch FROM clock_timestamp())::float8"
#: lines of one streamed call waiting for its origin (in the store, or here): past it,
#: newer lines are dropped and counted (a host printing without end must not fill the store)
MAX_LINES = 1000


class Request(msgspec.Struct, kw_only=True):
    """What a remote call runs: the same fields a local call sends its agent."""

    fn: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout: float
    code: CodeRef | None = None
    stream: bool = False  # the lines as they come (remote_lines), not only in the result


@dataclass(slots=True)
class Sent:
    """A handle on a call sent to a peer: its row (once written), whether it was cancelled."""

    row: int = 0
    cancelled: bool = False


@dataclass(slots=True)
class Lines:
    """Streamed lines to write: pending per call row, in order; `late` lines dropped
    after them (this hub held MAX_LINES unwritten); `ended`: calls whose result is
    written in the same transaction."""

    pending: dict[int, list[tuple[str, str]]]
    late: dict[int, int]
    ended: set[int]


@dataclass(slots=True)
class Waiting:
    """A call this hub sent to a peer, until its result row (or a fault) ends it."""

    agent: str
    target: str
    on_done: OnDone
    on_line: OnLine | None = None
    timer: asyncio.TimerHandle | None = None
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)


class RemoteCalls:
    """This hub's side of calls across controllers: what it holds, sends, and runs."""

    def __init__(self, fleet: Fleet, url: str, name: str, alive_s: float,
                 connect_timeout: float, listen: Callable[[], Wakeup]) -> None:
        self.fleet, self.name, self.alive_s = fleet, name, alive_s
        self.grace = fleet.settings.call_grace_s
        self._pg = Pg(url, "flows", FLOW_MIGRATIONS, connect_timeout)  # its own connection
        self._listen = listen
        self._waiting: dict[int, Waiting] = {}
        self._dirty: set[str] = set()  # agents whose holder row is to be written
        self._results: list[tuple[int, str]] = []  # (row id, result JSON) to write
        self._gone: list[int] = []  # rows of calls given up here, to delete
        self._cancels: list[int] = []  # rows of calls whose client cancelled, to mark
        self._running: dict[int, int] = {}  # row → the fleet call id, of peers' calls here
        self._lines: dict[int, list[tuple[str, str]]] = {}  # row → lines to write, in order
        self._skipped: dict[int, int] = {}  # row → lines dropped, not said yet
        self._seq: dict[int, int] = {}  # row → seq of its last line written
        self._carry: dict[int, int] = {}  # row → lines dropped before those now pending
        self._wake = asyncio.Event()
        self._look = asyncio.Event()
        self._listener = ThreadPoolExecutor(1, thread_name_prefix="reops-calls-listen")
        self.sent = self.ran = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ── lifetime ──

    async def serve(self, listen: Callable[[Callable[[str, dict[str, Any]], None]],
                                           Callable[[], None]]) -> None:
        """Record held agents, run peers' calls, collect results, until cancelled."""
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.to_thread(self._pg.run, self._start, what="starting remote calls")
                break
            except StoreError as e:
                log.warning("remote calls: %s; trying again in %gs", e, POLL_S)
                await asyncio.sleep(POLL_S)
        try:
            await run_all([self._writer(), self._watch()], listen(self._event))
        finally:
            for cid in list(self._waiting):
                self._end(cid, failure("lost", "the hub shut down during the call (the "
                                       "command may have run)"))
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._pg.run, self._leave, what="leaving")
            self._listener.shutdown(wait=False)
            self._pg.close()

    def _start(self, db: psycopg.Connection[Any]) -> None:
        """A fresh start: this name's rows from before are stale (calls it ran then: lost)."""
        db.execute("DELETE FROM agent_holders WHERE controller = %s", (self.name,))
        db.execute("DELETE FROM remote_lines WHERE call IN (SELECT id FROM remote_calls"
                   " WHERE origin = %s)", (self.name,))
        db.execute("DELETE FROM remote_calls WHERE origin = %s", (self.name,))
        lost = msgspec.json.encode(failure(
            "lost", f"controller {self.name} restarted during the call (the command may "
            "have run; check the host before running it again)")).decode()
        db.execute("UPDATE remote_calls SET state = 'done', result = %s WHERE target = %s"
                   " AND state = 'running'", (lost, self.name))
        db.execute(f"DELETE FROM remote_calls WHERE deadline < {_NOW} - %s", (KEEP_S,))
        db.execute("DELETE FROM remote_lines l WHERE NOT EXISTS (SELECT 1 FROM remote_calls c"
                   " WHERE c.id = l.call)")  # lines of calls gone (e.g. an origin that died)
        now = db.execute(f"SELECT {_NOW}").fetchone()
        rows = [(rec.name, self.name, float(now[0]) if now else 0.0)
                for rec in list(self.fleet.registry) if rec.state == "connected"]
        with db.cursor() as cur:
            cur.executemany("INSERT INTO agent_holders VALUES (%s, %s, %s) ON CONFLICT (name)"
                            " DO UPDATE SET controller = excluded.controller, at = excluded.at",
                            rows)
        db.execute("SELECT pg_notify(%s, '')", (CALLS_CHANNEL,))

    def _leave(self, db: psycopg.Connection[Any]) -> None:
        db.execute("DELETE FROM agent_holders WHERE controller = %s", (self.name,))

    # ── holders ──

    def _event(self, topic: str, data: dict[str, Any]) -> None:
        """An agent registered, was lost or dropped here: its holder row is rewritten."""
        if topic == "agents" and isinstance(data.get("agent"), str) and "controller" not in data:
            self._dirty.add(data["agent"])
            self._wake.set()

    def _write_holders(self, db: psycopg.Connection[Any], names: list[str]) -> None:
        held = [n for n in names if self.fleet.registry.connected(n) is not None]
        gone = [n for n in names if n not in held]
        if held:
            with db.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO agent_holders VALUES (%s, %s, {_NOW}) ON CONFLICT (name)"
                    " DO UPDATE SET controller = excluded.controller, at = excluded.at",
                    [(n, self.name) for n in held])
        if gone:
            db.execute("DELETE FROM agent_holders WHERE controller = %s AND name = ANY(%s)",
                       (self.name, gone))

    async def holders(self, names: list[str]) -> dict[str, str]:
        """Agent → the live peer holding it, for those of `names` a live peer holds."""
        if not names:
            return {}
        try:
            rows = await asyncio.to_thread(self._pg.run, lambda db: db.execute(
                "SELECT h.name, h.controller FROM agent_holders h JOIN controllers c"
                " ON c.name = h.controller WHERE h.name = ANY(%s) AND h.controller <> %s"
                f" AND c.seen_at > {_NOW} - %s", (names, self.name, self.alive_s)).fetchall(),
                what="looking up agents' controllers")
        except StoreError as e:
            log.warning("remote calls: %s", e)
            return {}
        return {str(n): str(c) for n, c in rows}

    # ── calls made here, run on a peer ──

    def call(self, agent: str, target: str, fn: str, args: list[Any], kwargs: dict[str, Any],
             *, timeout: float | None, code: CodeRef | None, on_done: OnDone,
             on_line: OnLine | None = None) -> Sent:
        """Send the call for `agent` to `target`; `on_done` gets its one result, `on_line`
        (given: a streamed call) each line as the agent prints it."""
        if timeout is None or timeout <= 0:
            timeout = self.fleet.settings.call_timeout_s
        request = Request(fn=fn, args=args, kwargs=kwargs, timeout=timeout, code=code,
                          stream=on_line is not None)
        sent = Sent()
        task = asyncio.create_task(self._send(agent, target, request, on_done, sent, on_line))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return sent

    def cancel(self, sent: Sent) -> None:
        """The client went away: ask the peer to stop the call on its agent."""
        sent.cancelled = True
        if sent.row and sent.row in self._waiting:
            self._cancels.append(sent.row)
            self._wake.set()

    async def _send(self, agent: str, target: str, request: Request, on_done: OnDone,
                    sent: Sent, on_line: OnLine | None) -> None:
        wait = request.timeout + self.grace
        body = msgspec.json.encode(request).decode()

        def insert(db: psycopg.Connection[Any]) -> int:
            row = db.execute(
                "INSERT INTO remote_calls (origin, target, agent, request, deadline)"
                f" VALUES (%s, %s, %s, %s, {_NOW} + %s) RETURNING id",
                (self.name, target, agent, body, wait)).fetchone()
            db.execute("SELECT pg_notify(%s, '')", (CALLS_CHANNEL,))
            return int(row[0]) if row else 0
        entry = Waiting(agent=agent, target=target, on_done=on_done, on_line=on_line)
        try:
            cid = await asyncio.to_thread(self._pg.run, insert, what=f"sending a call for "
                                          f"agent {agent} to controller {target}",
                                          idempotent=False)
        except StoreError as e:
            on_done(agent, failure("unreachable", f"agent {agent} (on controller {target}): "
                                   f"{e}"))
            return
        self.sent += 1
        entry.timer = asyncio.get_running_loop().call_later(
            wait + 2 * POLL_S, self._expire, cid)  # after the peer's own timeout result
        self._waiting[cid] = entry
        sent.row = cid
        if sent.cancelled:  # cancelled while its row was being written
            self.cancel(sent)

    def _expire(self, cid: int) -> None:
        entry = self._waiting.get(cid)
        if entry is not None:
            self._gone.append(cid)
            self._wake.set()
            self._end(cid, failure("timeout", f"no answer from agent {entry.agent} (on "
                                   f"controller {entry.target}) within "
                                   f"{time.monotonic() - entry.t0:.0f} s",
                                   entry.started_at, time.monotonic() - entry.t0))

    def _end(self, cid: int, result: dict[str, Any]) -> None:
        entry = self._waiting.pop(cid, None)
        if entry is None:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        entry.on_done(entry.agent, result)

    # ── the loop: claim peers' calls, collect results, watch targets ──

    async def _watch(self) -> None:
        wakeup: Wakeup | None = None
        while True:
            try:
                if wakeup is None:
                    wakeup = await asyncio.to_thread(self._listen)
                await asyncio.to_thread(self._pg.run, self._round, what="reading calls")
                await asyncio.get_running_loop().run_in_executor(
                    self._listener, wakeup.wait, POLL_S)
            except StoreError as e:
                log.warning("remote calls: %s", e)
                await asyncio.sleep(POLL_S)
            except Exception:  # a bug here must not stop the hub: said, tried again
                log.exception("remote calls: a round failed")
                await asyncio.sleep(POLL_S)

    def _round(self, db: psycopg.Connection[Any]) -> None:
        """One look (on a worker thread): claim, collect, fault-check; hand to the loop."""
        claimed = db.execute(
            f"UPDATE remote_calls SET state = 'running' WHERE target = %s AND state = 'queued'"
            f" RETURNING id, agent, request, deadline - {_NOW}", (self.name,)).fetchall()
        stop = db.execute("UPDATE remote_calls SET state = 'running' WHERE target = %s AND"
                          " state = 'cancel' RETURNING id", (self.name,)).fetchall()
        done = db.execute("DELETE FROM remote_calls WHERE origin = %s AND state = 'done'"
                          " RETURNING id, result", (self.name,)).fetchall()
        waiting = list(self._waiting.items())
        # after the results: a call's last lines were written with its result, so they
        # are read in this same round, and handed on before it
        streamed = [cid for cid, w in waiting if w.on_line is not None]
        lines = db.execute("DELETE FROM remote_lines WHERE call = ANY(%s)"
                           " RETURNING call, seq, stream, text",
                           (streamed,)).fetchall() if streamed else []
        dead: list[tuple[int, str, str | None]] = []
        targets = {w.target for _, w in waiting}
        if targets:
            alive = {n for (n,) in db.execute(
                f"SELECT name FROM controllers WHERE name = ANY(%s) AND seen_at > {_NOW} - %s",
                (list(targets), self.alive_s)).fetchall()}
            ids = [cid for cid, w in waiting if w.target not in alive]
            if ids:
                dead = [(int(i), str(st), r) for i, st, r in db.execute(
                    "DELETE FROM remote_calls WHERE id = ANY(%s) RETURNING id, state, result",
                    (ids,)).fetchall()]
                db.execute("DELETE FROM remote_lines WHERE call = ANY(%s)", (ids,))
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._handle, claimed, done, dead, stop, lines)

    def _handle(self, claimed: list[Any], done: list[Any],
                dead: list[tuple[int, str, str | None]], stop: list[Any],
                lines: list[Any]) -> None:
        for cid, _, stream, text in sorted(lines, key=lambda r: (int(r[0]), int(r[1]))):
            entry = self._waiting.get(int(cid))
            if entry is not None and entry.on_line is not None:
                entry.on_line(entry.agent, str(stream), str(text))
        for (cid,) in stop:  # the origin's client cancelled: stop it on the agent
            local = self._running.get(int(cid))
            if local is not None:
                self.fleet.cancel(local)
        for cid, result in done:
            self._end(int(cid), _decode(result))
        for cid, state, result in dead:
            entry = self._waiting.get(cid)
            if entry is None:
                continue
            if state == "done" and result:
                self._end(cid, _decode(result))
            elif state in ("running", "cancel"):
                self._end(cid, failure(
                    "lost", f"agent {entry.agent}: its controller {entry.target} stopped "
                    "during the call (the command may have run; check the host before "
                    "running it again)", entry.started_at, time.monotonic() - entry.t0))
            else:
                self._end(cid, failure(
                    "unreachable", f"agent {entry.agent}: its controller {entry.target} "
                    "stopped before taking the call", entry.started_at,
                    time.monotonic() - entry.t0))
        for cid, agent, body, remaining in claimed:
            self._run(int(cid), str(agent), str(body), float(remaining))

    def _run(self, cid: int, agent: str, body: str, remaining: float) -> None:
        """A peer's call for an agent held here: run it as a local call, write its result."""
        def on_done(_: str, result: dict[str, Any]) -> None:
            self._running.pop(cid, None)
            self._results.append((cid, msgspec.json.encode(result).decode()))
            self._wake.set()

        def on_line(_: str, stream: str, text: str) -> None:
            pending = self._lines.setdefault(cid, [])
            if len(pending) < MAX_LINES:
                pending.append((stream, text))
            else:  # the store is slower than the host: said where they were, once written
                self._skipped[cid] = self._skipped.get(cid, 0) + 1
            self._wake.set()
        try:
            req = msgspec.json.decode(body, type=Request)
        except msgspec.DecodeError as e:
            on_done(agent, failure("error", f"agent {agent}: a malformed call from another "
                                   f"controller ({e})"))
            return
        timeout = min(req.timeout, remaining - self.grace)
        if timeout <= 0:
            on_done(agent, failure("timeout", f"agent {agent}: the call's deadline passed "
                                   "before this controller took it"))
            return
        self.ran += 1
        local = self.fleet.call(agent, req.fn, req.args, req.kwargs, timeout=timeout,
                                stream=req.stream, code=req.code, on_done=on_done,
                                on_line=on_line if req.stream else None)
        if local is not None and self.fleet.calls.get(local) is not None:
            self._running[cid] = local

    # ── writes: holder rows, results, rows given up ──

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            names, self._dirty = sorted(self._dirty), set()
            results, self._results = self._results, []
            gone, self._gone = self._gone, []
            cancels, self._cancels = self._cancels, []
            lines, self._lines = self._lines, {}
            late, self._skipped = self._skipped, {}
            if not (names or results or gone or cancels or lines or late):
                continue
            ended = {cid for cid, _ in results}
            try:
                seqs, carry = await asyncio.to_thread(
                    self._pg.run, partial(self._write, names, results, gone, cancels,
                                          Lines(lines, late, ended)),
                    what="writing calls' rows")
            except StoreError as e:
                log.warning("remote calls: %s; trying again", e)
                self._dirty.update(names)
                self._results[:0] = results
                self._gone.extend(gone)
                self._cancels.extend(cancels)
                for cid, pending in lines.items():  # before any line that came since
                    self._lines[cid] = [*pending, *self._lines.get(cid, [])]
                for cid, n in late.items():  # (counted: said after them all the same)
                    self._skipped[cid] = self._skipped.get(cid, 0) + n
                await asyncio.sleep(POLL_S)
                self._wake.set()
                continue
            self._seq.update(seqs)
            self._carry.update(carry)
            for cid in ended:
                self._seq.pop(cid, None)
                self._carry.pop(cid, None)

    def _write(self, names: list[str], results: list[tuple[int, str]], gone: list[int],
               cancels: list[int], lines: Lines, db: psycopg.Connection[Any],
               ) -> tuple[dict[int, int], dict[int, int]]:
        seqs: dict[int, int] = {}
        carry: dict[int, int] = {}
        if names:
            self._write_holders(db, names)
        if lines.pending or lines.late:  # before the results: read with them, in one round
            seqs, carry = self._write_lines(db, lines)
        if results:
            with db.cursor() as cur:
                cur.executemany("UPDATE remote_calls SET state = 'done', result = %s"
                                " WHERE id = %s", [(r, i) for i, r in results])
            db.execute("SELECT pg_notify(%s, '')", (CALLS_CHANNEL,))
        if gone:
            db.execute("DELETE FROM remote_calls WHERE id = ANY(%s)", (gone,))
            db.execute("DELETE FROM remote_lines WHERE call = ANY(%s)", (gone,))
        if cancels:  # one its peer had not taken: never runs; one it runs: stopped there
            db.execute("DELETE FROM remote_calls WHERE id = ANY(%s) AND state = 'queued'",
                       (cancels,))
            db.execute("UPDATE remote_calls SET state = 'cancel' WHERE id = ANY(%s) AND"
                       " state = 'running'", (cancels,))
            db.execute("SELECT pg_notify(%s, '')", (CALLS_CHANNEL,))
        return seqs, carry

    def _write_lines(self, db: psycopg.Connection[Any], lines: Lines,
                     ) -> tuple[dict[int, int], dict[int, int]]:
        """Write streamed lines in order, numbered per call, at most MAX_LINES of a call
        unread in the store; lines past that are dropped and `… N lines dropped` written
        where they were (at once if there is room, else before the next line that fits,
        else with the call's result). Returns each call's last seq and the drops not
        said yet; lines of a call whose row is gone (its origin gave up) are not written."""
        ids = list(dict.fromkeys([*lines.pending, *lines.late]))
        live = {int(i) for (i,) in db.execute(
            "SELECT id FROM remote_calls WHERE id = ANY(%s)", (ids,)).fetchall()}
        unread = {int(c): int(n) for c, n in db.execute(
            "SELECT call, count(*) FROM remote_lines WHERE call = ANY(%s) GROUP BY call",
            (ids,)).fetchall()}
        rows: list[tuple[int, int, str, str]] = []
        seqs: dict[int, int] = {}
        carry: dict[int, int] = {}
        for cid in ids:
            if cid not in live:
                continue
            seq, room, dropped = self._seq.get(cid, 0), MAX_LINES - unread.get(cid, 0), \
                self._carry.get(cid, 0)
            for stream, text in lines.pending.get(cid, ()):
                if room > (1 if dropped else 0):
                    if dropped:
                        seq, room = seq + 1, room - 1
                        rows.append((cid, seq, "err", _dropped(dropped)))
                        dropped = 0
                    seq, room = seq + 1, room - 1
                    rows.append((cid, seq, stream, text))
                else:
                    dropped += 1
            dropped += lines.late.get(cid, 0)
            if dropped and (room > 0 or cid in lines.ended):
                seq += 1
                rows.append((cid, seq, "err", _dropped(dropped)))
                dropped = 0
            seqs[cid], carry[cid] = seq, dropped
        if rows:
            with db.cursor() as cur:
                cur.executemany("INSERT INTO remote_lines VALUES (%s, %s, %s, %s)", rows)
            if not lines.ended:
                db.execute("SELECT pg_notify(%s, '')", (CALLS_CHANNEL,))
        return seqs, carry


def _dropped(n: int) -> str:
    return f"… {n} line{'s' if n != 1 else ''} dropped (the store held {MAX_LINES} unread)\n"


def _decode(text: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        return failure("error", "a malformed result from another controller")
    return value
