"""The flow runner inside `reops hub`: long-running flows that outlive the CLI.

`reops flows start FILE[:FUNC] --opt v` sends (file, function, options) here; the hub imports
the file, calls the flow and keeps what it returns (a Stream or an Observable) subscribed.
Why here: the hub already owns what must outlive a command (agents, hypervisors, the job
queue); a flow that reacts to them belongs beside them, one runner per hub.

- Stored: every started flow is a `FlowRecord` (reops.store.flows); a hub that starts again
  (even after `kill -9`) runs the wanted ones again with the same options (`restarts` + 1).
- Audited: every item the flow emits is recorded — per host: the firing it belongs to,
  the trigger, the flow version (file hash), status and code. A failing step is a failed
  Result in the audit; it never ends the flow. An exception in the flow's own code (when it
  is called, or later in its operators) marks it `error` with file:line; the hub stays up.
- Bounded: every action a flow starts (an executor run) takes one of its `concurrency`
  slots (`Gate`); the flow's subscription carries its gate in a context variable, which
  asyncio hands to every task and callback the flow's chain schedules.
- Drained: SIGTERM closes the gates (no new action starts), waits for the actions in flight
  (at most `drain_s`), records their Results, then disposes the flows.
- Reloaded: `reops flows reload NAME` (or `--watch`) imports the file again and calls the
  flow; if that fails the old version keeps running and the error (file:line) is shown.
  Else the new version is built against the flow's live sources (reops.hub.flow_sources):
  a trigger of the same identity (constructor and all arguments) is not restarted, and
  the longest unchanged prefix of `on(trigger) | op | …` (stages compared by identity:
  kind, arguments, user code) IS the running one — its windows and counters go on. The
  first changed stage and all after it are new; the source right before them switches to
  the new version at one point (each event goes to exactly one version), and the old
  version finishes its steps in flight (at most `drain_s`) before it is disposed. The
  reload says what it kept and swapped (`flows reload`, `flows ls`, the audit). A flow
  built on raw Observables keeps only its triggers; one with no reops trigger has nothing
  to hand over: its old version is disposed at once (docs/flows.md).
- Storm-protected: every shared trigger source passes `squelch(max_rate)`; a storm is
  announced once (`squelched` on topic `flow`: `event.flow.squelched` on the bus; counted
  in `flows ls`).

Its parts elsewhere: the slots (reops.hub.flow_gates), one running version and its firings
(reops.hub.flow_running), the duties among several controllers (reops.hub.flow_cluster), the
`flows.*` control methods (reops.hub.flow_control).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import click
import msgspec

from reops.core.model import Line, Outcome, Result
from reops.core.runtime import get_runtime
from reops.core.settings import load_table
from reops.core.threads import in_own_thread
from reops.flows import Flow, FlowError, resolve
from reops.hub.cluster import Cluster
from reops.hub.flow_cluster import serve_cluster
from reops.hub.flow_control import log_rows, ls, reload_asked, start, stop
from reops.hub.flow_gates import Gate, _gate, install_gates
from reops.hub.flow_running import Firings, Running, _built, kept_swapped, version_of, where
from reops.hub.flow_sources import Build, FlowSources
from reops.sinks.bus import Tally, tally
from reops.sinks.history import record_result
from reops.store.engines import embedded_dir, is_postgres, load_store_settings
from reops.store.flows import AuditRow, FlowRecord, FlowStore, SqliteFlowStore
from reops.streams.operators._keyed import Notice
from reops.streams.operators.squelch import RATE, Resumed, Squelched
from reops.streams.stream import staging
from reops.streams.triggers._trigger import sharing

log = logging.getLogger("reops.hub.flows")

#: audit rows waiting to be written; beyond it rows are dropped and counted (a flow firing
#: faster than the disk must not grow the hub's memory)
MAX_PENDING = 20_000


class FlowSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`[flows]` in config.toml, or REOPS_FLOWS_<NAME>."""

    concurrency: int = 16  # actions (host steps) a flow runs at once
    drain_s: float = 30.0  # how long SIGTERM waits for actions in flight
    start_timeout_s: float = 60.0  # importing and calling a flow
    audit_keep: int = 100_000  # audit rows kept per flow
    db: str = ""  # the store file; default <home>/flows.db
    max_rate: str = RATE  # each trigger's storm limit ("100/10s"; "off": none)


def load_flow_settings() -> FlowSettings:
    """`[flows]` of config.toml, then REOPS_FLOWS_* variables."""
    return load_table(FlowSettings, "flows", "REOPS_FLOWS_")


class Session(Protocol):
    """What a control handler gets (reops.hub.control.Session)."""

    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def cancelled(self) -> asyncio.Event: ...
    def emit(self, value: Any) -> None: ...


class Controller(Protocol):
    """What the runner needs from the hub's Controller."""

    def register(self, name: str, handler: Callable[[Any], Awaitable[Any]]) -> None: ...
    def run_task(self, factory: Callable[[], Any]) -> None: ...
    def publish(self, topic: str, data: dict[str, Any]) -> None: ...


# ── the runner ─────────────────────────────────────────────────────────────────────


class FlowRunner:
    """Starts, lists, reloads, stops and audits the flows of one hub."""

    def __init__(self, settings: FlowSettings | None = None,
                 publish: Callable[[str, dict[str, Any]], None] | None = None,
                 hub: Any = None) -> None:
        self.settings = settings or load_flow_settings()
        self.publish = publish or (lambda topic, data: None)
        self.hub = hub  # the Controller (several controllers: listen/publish for events)
        self.store: FlowStore | None = None
        #: several controllers on PostgreSQL: leases, membership, events (reops.hub.cluster)
        self.cluster: Cluster | None = None
        self.flows: dict[str, Running] = {}
        self._ready = asyncio.Event()
        self._pending: list[AuditRow] = []
        self._dirty: dict[str, FlowRecord] = {}
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()  # replaced by a new one at each flush (followers)
        self._flushes = [0, 0]  # flushes begun, ended: `written` waits for one begun later
        self._closing = False  # the hub is stopping: the writer ends after its flush
        self.dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gated = False
        self._opening = asyncio.Lock()
        self.sources: dict[str, FlowSources] = {}  # per flow name, kept across versions
        self._retiring: dict[asyncio.Task[None], Running] = {}  # replaced, finishing steps
        self._gens: dict[str, int] = {}
        self.tallies: dict[str, Tally] = {}  # per flow: what its publish() dropped
        db = self.settings.db
        self.path = Path(db).expanduser() if db else None  # default: <home>/flows.db, later

    # control methods
    def methods(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        return {"flows.start": functools.partial(start, self),
                "flows.ls": functools.partial(ls, self),
                "flows.stop": functools.partial(stop, self),
                "flows.reload": functools.partial(reload_asked, self),
                "flows.log": functools.partial(log_rows, self)}

    async def serve(self) -> None:
        """Open the store, bring back the wanted flows, write the audit; drain when
        cancelled (the hub stopping)."""
        self._loop = asyncio.get_running_loop()
        shared = load_store_settings()
        if self.path is None and is_postgres(shared.url) and self.hub is not None:
            return await serve_cluster(self, shared)
        if self.path is None:
            self.path = embedded_dir() / "flows.db"  # checked at hub start (run_hub)
        writer = asyncio.create_task(self._writer())
        try:
            # a hub that never ran a flow has no store: it creates none until one starts
            store = await self._open() if self.path.exists() else None
            self._ready.set()
            for rec in await asyncio.to_thread(store.all) if store is not None else []:
                if rec.wanted:
                    rec.restarts += 1
                    await self._launch(rec, "restarted")
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await self._drain()
            raise
        finally:
            # never cancel the writer under a write: a flush that took rows (the last
            # drained Results) would be abandoned, and the store closed before its thread
            # wrote them. It ends after the flush it is in; then what is left is written.
            self._closing = True
            self._wake.set()
            await asyncio.shield(writer)
            await self._flush()
            if self.store is not None:
                self.store.close()

    def _load(self) -> dict[str, float]:
        """This controller's load, for its peers (`reops hub status`)."""
        fleet = getattr(self.hub, "fleet", None)
        agents = len(fleet.registry) if fleet is not None else 0
        return {"flows": float(len(self.flows)), "agents": float(agents)}

    async def stop_here(self, name: str, status: str, detail: str, fenced: bool) -> None:
        """Stop the flow in this hub because the store says so: stopped on a controller
        (the desired state), or its lease is lost (fenced: another controller may run it
        now, so this one writes only its audit row, never the flow's record)."""
        run = self.flows.pop(name, None)
        if run is None:  # held here but not running (its start failed): record the stop
            rec = await self._stored(name) if not fenced else None
            if rec is not None and rec.state != "stopped":
                rec.state, rec.wanted = "stopped", False
                self._audit(rec, status, detail)
            return
        if run.watch is not None:
            run.watch.cancel()
        run.dispose()
        self.sources.pop(name, None)
        rec = run.rec
        if not fenced:
            rec.state, rec.wanted = "stopped", False
            self._audit(rec, status, detail)
            return
        log.warning("flow %s: %s", name, detail)
        run.live = False  # what it still emits is not this controller's to record
        self._dirty.pop(name, None)
        self._pending.append(AuditRow(flow=name, at=time.time(), version=run.version,
                                      status=status, detail=detail,
                                      controller=self.cluster.name if self.cluster else ""))
        self._wake.set()
        self.publish("flows", {"event": status, "flow": name, "version": run.version,
                               "detail": detail})

    async def _drain(self) -> None:
        runs = list(self.flows.values())
        if not runs:
            return
        rt = get_runtime()
        drains = [asyncio.wrap_future(rt.submit(r.gate.drain())) for r in runs]
        if drains:
            busy = sum(r.gate.in_flight for r in runs)
            log.info("draining %d action(s) of %d flow(s), at most %gs", busy, len(runs),
                     self.settings.drain_s)
            _, late = await asyncio.wait(drains, timeout=self.settings.drain_s)
            for f in late:
                f.cancel()
            if late:
                log.warning("%d flow(s) still had actions in flight after %gs; cancelled",
                            len(late), self.settings.drain_s)
        await self._delivered()
        for r in runs:
            if r.watch is not None:
                r.watch.cancel()
            r.dispose()
        for task, old in list(self._retiring.items()):
            task.cancel()
            old.dispose()

    # ── starting ──

    def _build(self, rec: FlowRecord, gate: Gate, run: Running | None) -> tuple[Any, str]:
        """In a worker thread: import the file, call the flow with its options, subscribe.

        Returns (subscription, version); raises FlowError (file:line) when any of it fails.
        """
        _gate.set(gate)  # everything the subscription schedules inherits the flow's gate
        tally.set(self.tallies.setdefault(rec.name, Tally()))  # its publish() drops
        if run is not None:  # its triggers and stages read the flow's live sources
            run.build = build = Build(run.gen)  # (after _gate: its context has the gate)
            sources = self._sources(rec)
            sharing.set(sources.builder(build))
            staging.set(sources.stage_builder(build))
        try:
            made, version, flow = self._made(rec)
        finally:  # only building looks sources up, not what the subscription schedules
            sharing.set(None)
            staging.set(None)
        try:
            obs = _built(made)
        except TypeError as e:
            raise FlowError(f"{flow.where}: flow {flow.name!r}: {e}") from None
        if run is None:
            return None, version
        run.version = version  # its rows say which version ran, whatever runs later
        if run.build is not None:
            run.kept, run.swapped = run.build.report(made)
        try:
            sub = obs.subscribe(lambda x: self._hop(run, self._on_item, run, x),
                                lambda e: self._hop(run, self._on_error, run, e),
                                lambda: self._hop(run, self._on_completed, run))
        except Exception as e:
            raise FlowError(where(e, rec.file)) from None
        if run.retired:  # it took longer than start_timeout_s: the caller gave up on it
            sub.dispose()
        return sub, version

    @staticmethod
    def _made(rec: FlowRecord) -> tuple[Any, str, Flow]:
        """Import the file and call the flow: (what it returned, version, the Flow)."""
        path = Path(rec.file)
        try:
            version = version_of(path)
        except OSError as e:
            raise FlowError(f"{path}: {e.strerror or e}") from None
        flow = resolve(f"{path}:{rec.func}" if rec.func else str(path))
        try:
            ctx = flow.command().make_context(flow.name, list(rec.args))
        except click.exceptions.Exit:
            raise FlowError(f"{flow.name}: --help is not an option of a running flow") from None
        except click.ClickException as e:
            raise FlowError(f"{flow.where}: flow {flow.name!r}: {e.format_message()}") from None
        try:
            return flow.call(**ctx.params), version, flow
        except Exception as e:
            raise FlowError(where(e, str(path))) from None

    def _sources(self, rec: FlowRecord) -> FlowSources:
        """The flow's live trigger sources (made with its storm limit on first use)."""
        src = self.sources.get(rec.name)
        if src is None:
            name = rec.name

            def notice(n: Notice) -> None:  # on the runtime thread
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._on_notice, name, n)

            src = self.sources[name] = FlowSources(rec.max_rate or self.settings.max_rate,
                                                   notice)
        return src

    def _on_notice(self, name: str, n: Notice) -> None:
        """A trigger of the flow went over its rate (announced once), or fell back."""
        run = self.flows.get(name)
        if run is None:
            return
        rec = run.rec
        if isinstance(n, Squelched):
            rec.squelched += 1
            self._audit(rec, "squelched", f"a trigger went over {n.rate}: its events are "
                        "dropped until the rate falls back", topic="flow")
        elif isinstance(n, Resumed):
            rec.squelch_dropped += n.dropped
            self._audit(rec, "resumed", f"back under {n.rate}; {n.dropped} trigger "
                        "event(s) dropped", topic="flow")

    def _hop(self, run: Running, fn: Callable[..., None], *args: Any) -> None:
        """From the runtime thread (or wherever the flow emits) to the hub's loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the hub's loop closed: nowhere to record
            self._loop.call_soon_threadsafe(self._deliver, run, fn, args)

    @staticmethod
    def _deliver(run: Running, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        if run.live:
            fn(*args)
        elif len(run.held) < MAX_PENDING:
            run.held.append((fn, args))

    async def _subscribe(self, rec: FlowRecord, firings: Firings | None = None
                         ) -> tuple[Running, str]:
        """Build and subscribe a new version of `rec`; FlowError when it does not start."""
        if not self._gated:  # before this process's first step: see install_gates
            await asyncio.to_thread(install_gates)
            self._gated = True
        run = Running(rec, Gate(self.settings.concurrency), firings)
        self._gens[rec.name] = run.gen = self._gens.get(rec.name, 0) + 1
        try:
            sub, version = await asyncio.wait_for(
                in_own_thread(lambda: self._build(rec, run.gate, run), name="reops-flow-build"),
                self.settings.start_timeout_s)
        except TimeoutError:
            run.retired = True
            raise FlowError(f"{rec.file}: flow {rec.func or rec.name!r} did not return within "
                            f"{self.settings.start_timeout_s:g}s (does it block? a flow run "
                            "by the hub returns a Stream or an Observable)") from None
        run.sub = sub
        return run, version

    async def _launch(self, rec: FlowRecord, how: str, note: str = "") -> Running | None:
        """Start `rec` (new or restarted); a failure marks it `error` and is recorded
        (a first start that fails is only reported: the caller sees why, nothing is kept)."""
        try:
            run, version = await self._subscribe(rec)
        except FlowError as e:
            rec.state, rec.error = "error", str(e)
            if rec.name not in self.flows:
                self.sources.pop(rec.name, None)
            if how != "started":
                self._audit(rec, "error", str(e))
            return None
        rec.version, rec.since = version, time.time()
        rec.state, rec.error = "running", ""
        if self.cluster is not None:
            rec.controller = self.cluster.name
            if how == "started":
                rec.taken_from = ""
        self.flows[rec.name] = run
        if rec.watch:
            run.watch = asyncio.create_task(self._watch(rec.name))
        what = f"{rec.file}:{rec.func} {' '.join(rec.args)}".strip()
        self._audit(rec, how, f"{note}: {what}" if note else what)
        run.go_live()
        return run

    def _audit(self, rec: FlowRecord, status: str, detail: str, topic: str = "flows"
               ) -> None:
        """Record a flow event, and announce it (topic `flows`: `reops events`, and the bus
        as `event.flows.<status>`; a storm's notices on `flow`: `event.flow.squelched`,
        the topic a `Squelched` published from a pipeline has too)."""
        self._queue(AuditRow(flow=rec.name, at=time.time(), version=rec.version,
                             status=status, detail=detail), rec)
        self.publish(topic, {"event": status, "flow": rec.name, "version": rec.version,
                               "detail": detail})

    def _queue(self, row: AuditRow, rec: FlowRecord) -> None:
        if self.cluster is not None:
            row.controller = self.cluster.name
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            rec.dropped += 1
        else:
            self._pending.append(row)
        self._dirty[rec.name] = rec
        self._wake.set()

    # ── what a flow emits (on the hub's loop) ──

    def _on_item(self, run: Running, item: Any) -> None:
        if isinstance(item, Line):
            return
        rec = run.rec
        now = time.time()
        if isinstance(item, Result):
            firing, trigger = run.firings.of(item)
            self._host_row(run, firing, trigger, item, now)
        elif isinstance(item, Outcome):
            firing = run.firings.new()
            for r in item.results:  # run()/await recorded its own Outcome in the history
                self._host_row(run, firing, "outcome", r, now, history=item.run is None)
        else:
            firing = run.firings.new()
            self._count(run, firing, "fired")
            self._queue(AuditRow(flow=rec.name, at=now, firing=firing, version=run.version,
                                 trigger=type(item).__name__, status="fired",
                                 detail=repr(item)[:200]), rec)
        rec.fired = run.firings.fired

    def _host_row(self, run: Running, firing: int, trigger: str, r: Result, now: float,
                  history: bool = True) -> None:
        rec = run.rec
        detail = r.op
        if not r.ok:
            last = (r.err or r.out).strip().splitlines()
            detail = f"{r.op}: {last[-1][:200]}" if last else r.op
        self._count(run, firing, r.status)
        if history:
            record_result(r, run.history, source="flow", flow=rec.name)  # `reops history`
        self._queue(AuditRow(flow=rec.name, at=now, firing=firing, trigger=trigger,
                             version=run.version, host=r.host, status=r.status, code=r.code,
                             started_at=r.started_at, duration_s=r.duration_s,
                             detail=detail), rec)

    def _count(self, run: Running, firing: int, status: str) -> None:
        f = run.firings
        if firing != f.current:
            f.current, f.counts = firing, collections.Counter()
        f.counts[status] += 1
        run.rec.last = ", ".join(f"{n} {s}" for s, n in sorted(f.counts.items()))

    def _on_error(self, run: Running, e: Exception) -> None:
        rec = run.rec
        if run.retired:
            return  # an old version, already replaced or stopped
        run.ended = where(e, rec.file)
        rec.state, rec.error = "error", run.ended
        log.warning("flow %s failed: %s", rec.name, rec.error)
        self._audit(rec, "error", rec.error)

    def _on_completed(self, run: Running) -> None:
        rec = run.rec
        if run.retired:
            return
        run.ended = "completed"
        rec.state, rec.wanted = "stopped", False
        self._audit(rec, "completed", "the flow's stream completed")

    # ── the audit writer ──

    async def _writer(self) -> None:
        """Write the audit as rows come; ends (not cancelled) once the hub stops."""
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        self._flushes[0] += 1
        rows, self._pending = self._pending, []
        recs, self._dirty = list(self._dirty.values()), {}
        if (rows or recs) and self.store is not None:
            try:  # shielded: a cancelled caller must not abandon rows it took
                await asyncio.shield(asyncio.to_thread(self.store.record, rows, recs))
            except Exception:
                log.exception("could not write the flows' audit (%d rows)", len(rows))
        self._flushes[1] += 1
        flushed, self._flushed = self._flushed, asyncio.Event()
        flushed.set()

    async def written(self) -> None:
        """Return once what was recorded so far is in the store: a flush begun after now
        has ended (one under way may have taken its rows before ours). Bounded by
        drain_s: a writer that stopped must not hold its caller."""
        target = self._flushes[0] + 1
        self._wake.set()

        async def ended() -> None:
            while self._flushes[1] < target:
                await self._flushed.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended(), self.settings.drain_s)

    # ── the store, records and reloads (what the control methods use) ──

    async def _open(self) -> FlowStore:
        """The store, opened (and created) on first use."""
        async with self._opening:
            if self.store is None:
                assert self.path is not None
                self.store = await asyncio.to_thread(SqliteFlowStore, self.path,
                                                     self.settings.audit_keep)
            return self.store

    async def _store(self) -> FlowStore | None:
        """The store once the stored flows are back; None while no flow ever ran here."""
        await self._ready.wait()
        return self.store

    async def _stored(self, name: str) -> FlowRecord | None:
        store = await self._store()
        return await asyncio.to_thread(store.get, name) if store is not None else None

    def _running(self, name: str) -> Running:
        run = self.flows.get(name)
        if run is None:
            raise KeyError(f"no running flow {name!r} (see `reops flows ls`)")
        return run

    def _info(self, rec: FlowRecord) -> dict[str, Any]:
        run = self.flows.get(rec.name)
        if run is not None and run.rec is not rec:
            rec = run.rec
        rec.in_flight = run.gate.in_flight if run is not None else 0
        rec.max_rate = rec.max_rate or self.settings.max_rate
        own = self.tallies.get(rec.name)
        if own is not None:  # this flow's own publish() drops (`reops hub status`: all)
            rec.publish_dropped = own.dropped
        info: dict[str, Any] = msgspec.to_builtins(rec)
        return info

    async def reload(self, name: str) -> dict[str, Any]:
        """Import the flow again; on success swap it in, else keep the old version."""
        if name not in self.flows:  # wanted, but its last start failed: try again
            rec = await self._stored(name)
            if rec is None or not rec.wanted:
                raise KeyError(f"no running flow {name!r} (see `reops flows ls`)")
            run = await self._launch(rec, "reloaded")
            return {"name": name, "reloaded": run is not None, "error": rec.error,
                    "version": rec.version}
        old = self._running(name)
        rec = old.rec
        began = time.perf_counter()
        try:
            new, version = await self._subscribe(rec, old.firings)
        except FlowError as e:
            rec.error = str(e)
            self._audit(rec, "reload-failed", rec.error)
            return {"name": name, "reloaded": False, "error": rec.error,
                    "version": rec.version}
        assert new.build is not None
        self._sources(rec).switch(new.build)  # from here each event goes to `new`
        if old.build is not None and old.build.used:  # it read live sources: it gets no
            # more events; let it finish
            old.retired = True
            task = asyncio.create_task(self._finish(old))
            self._retiring[task] = old
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
        else:  # raw Observables of its own: nothing to hand over, stop them now
            old.dispose()
        new.watch, old.watch = old.watch, None
        self.flows[name] = new
        previous = rec.version
        rec.version, rec.since = version, time.time()
        rec.state, rec.error = "running", ""
        rec.reloads += 1
        rec.reloaded = kept_swapped(new.kept, new.swapped)
        seconds = time.perf_counter() - began
        self._audit(rec, "reloaded", f"{previous} -> {version} in {seconds * 1000:.0f} ms: "
                    f"{rec.reloaded}")
        new.go_live()
        return {"name": name, "reloaded": True, "error": "", "version": version,
                "previous": previous, "seconds": seconds, "kept": new.kept,
                "swapped": new.swapped}

    async def _finish(self, old: Running) -> None:
        """A replaced version: its steps in flight finish (at most drain_s), then go."""
        rt = get_runtime()
        try:
            await asyncio.wait_for(asyncio.wrap_future(rt.submit(old.gate.settle())),
                                   self.settings.drain_s)
        except TimeoutError:
            log.warning("flow %s: version %s still had steps in flight after %gs; "
                        "cancelled", old.rec.name, old.version, self.settings.drain_s)
        finally:
            await self._delivered()  # its Results already emitted reach the audit
            old.dispose()

    async def _delivered(self) -> None:
        """Return once every item the flows emitted on the runtime loop so far has been
        delivered here (queued for the audit).

        A step's Result is emitted on the runtime loop in the loop step that freed its slot,
        so its hop here (`_hop`: call_soon_threadsafe) is queued before a drain resolves.
        A round trip through the runtime loop is answered through this loop's same FIFO
        queue: when it returns, every hop emitted before it has run. (Not `rt.barrier()`:
        it blocks this loop's thread, and does nothing when called on the runtime loop.)"""
        with contextlib.suppress(Exception):  # a stopped runtime has nothing left to hop
            await asyncio.wait_for(get_runtime().wrap(asyncio.sleep(0)), self.settings.drain_s)

    async def _watch(self, name: str) -> None:
        """Reload `name` whenever its file is written (watchfiles; the directory is watched
        so editors that replace the file are seen too)."""
        import watchfiles

        file = Path(self.flows[name].rec.file)

        def mine(_change: Any, path: str) -> bool:
            return Path(path) == file

        async for _ in watchfiles.awatch(file.parent, watch_filter=mine, debounce=200,
                                         recursive=False):
            if name not in self.flows:
                return
            info = await self.reload(name)
            log.info("flow %s %s", name, "reloaded" if info["reloaded"] else
                     f"kept its old version: {info['error']}")

def attach(controller: Controller) -> FlowRunner:
    """Run flows in this hub: the `flows.*` control methods and the runner's task."""
    runner = FlowRunner(publish=controller.publish, hub=controller)
    for name, handler in runner.methods().items():
        controller.register(name, handler)

    async def status(s: Session) -> dict[str, Any]:
        if runner.cluster is None:
            return {"engine": "sqlite", "name": "", "controllers": []}
        await runner._ready.wait()
        return await runner.cluster.status()

    controller.register("cluster.status", status)
    controller.run_task(runner.serve)
    return runner

