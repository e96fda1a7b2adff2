"""The `flows.*` control methods of a hub: what `reops flows start|ls|stop|reload|log` asks.

Why apart: these read a request, check it (one clear line for bad input) and answer from
the runner (reops.hub.flows) and its store; the runner itself starts, audits and drains
flows whoever asks. With several controllers, what a peer runs is asked through the store
(reops.hub.flow_cluster).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from reops.core.threads import in_own_thread
from reops.flows import resolve
from reops.hub.flow_cluster import mark_owners, reload_elsewhere, stop_elsewhere
from reops.store.flows import FlowRecord, FlowStore
from reops.streams.operators.squelch import squelch

if TYPE_CHECKING:
    from reops.hub.flows import FlowRunner, Session


async def start(runner: FlowRunner, s: Session) -> dict[str, Any]:
    """`flows start`: check the request, name the flow, start it here (on several
    controllers: once this one holds its lease)."""
    p = s.params
    file, func = str(p.get("file") or ""), str(p.get("func") or "")
    args = p.get("args") or []
    if not file or not Path(file).is_absolute():
        raise ValueError("file must be an absolute path")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("args must be a list of strings")
    await runner._ready.wait()
    store = await runner._open()
    named = str(p.get("name") or "")
    if named and not re.fullmatch(r"[A-Za-z0-9_][\w.-]{0,99}", named):
        raise ValueError(f"bad flow name {named!r}: letters, digits, _ . - (up to 100)")
    max_rate = str(p.get("max_rate") or "")
    if max_rate not in ("", "off"):
        squelch(max_rate)  # a bad rate: ValueError, one line
    probe = FlowRecord(name=str(p.get("name") or ""), file=file, func=func, args=args,
                       watch=bool(p.get("watch")), max_rate=max_rate)
    if not probe.name:  # the flow's own name: known once the file is read
        spec = f"{file}:{func}" if func else file
        flow = await in_own_thread(lambda: resolve(spec), name="reops-flow-import")
        probe.name, probe.func = flow.name, flow.func.__name__
    if probe.name in runner.flows:
        raise ValueError(f"flow {probe.name!r} is already running; stop it first, or "
                         "start this one under another name (--as)")
    probe.started_at = time.time()
    if runner.cluster is None:
        return await start_here(runner, store, probe)
    async with runner.cluster.taking:  # never beside a takeover of the same flow here
        if probe.name in runner.flows:
            raise ValueError(f"flow {probe.name!r} is already running; stop it first, "
                             "or start this one under another name (--as)")
        await runner.cluster.start(probe.name)  # want it, hold its lease (or say who runs)
        return await start_here(runner, store, probe)


async def start_here(runner: FlowRunner, store: FlowStore, probe: FlowRecord
                     ) -> dict[str, Any]:
    """Launch `probe` in this hub; a first start that fails is not stored (ValueError)."""
    earlier = await asyncio.to_thread(store.get, probe.name)
    if earlier is not None:  # started before and stopped: its audit goes on
        probe.fired = earlier.fired
    run = await runner._launch(probe, "started")
    if run is None:  # not stored: nothing runs, the caller sees why
        if runner.cluster is not None:
            await runner.cluster.dropped(probe.name, wanted=False)
        raise ValueError(probe.error)
    return runner._info(probe)


async def ls(runner: FlowRunner, s: Session) -> list[dict[str, Any]]:
    """`flows ls`: the stored flows, with what runs here on top."""
    store = await runner._store()
    stored = {r.name: r for r in (await asyncio.to_thread(store.all) if store else [])}
    stored.update({name: run.rec for name, run in runner.flows.items()})
    stored.update(runner._dirty)
    infos = [runner._info(stored[n]) for n in sorted(stored)]
    if runner.cluster is not None:  # who runs it: the lease says, not the record
        await mark_owners(runner.cluster, infos)
    return infos


async def stop(runner: FlowRunner, s: Session) -> dict[str, Any]:
    """`flows stop`: stop and forget it here (a peer's flow: asked through the store)."""
    name = str(s.params.get("name") or "")
    if runner.cluster is not None and name not in runner.flows:
        return await stop_elsewhere(runner, name)
    run = runner.flows.pop(name, None)
    rec = run.rec if run is not None else await runner._stored(name)
    if rec is None:
        raise KeyError(f"no flow {name!r} (see `reops flows ls`)")
    if runner.cluster is not None:
        await runner.cluster.dropped(name, wanted=False)
    if run is not None:
        if run.watch is not None:
            run.watch.cancel()
        run.dispose()
    runner.sources.pop(name, None)
    rec.state, rec.wanted = "stopped", False
    runner._audit(rec, "stopped", "reops flows stop")
    return runner._info(rec)


async def reload_asked(runner: FlowRunner, s: Session) -> dict[str, Any]:
    """`flows reload`: here when it runs here, else asked of the controller that runs it."""
    await runner._store()
    name = str(s.params.get("name") or "")
    if runner.cluster is None or name in runner.flows:
        return await runner.reload(name)
    return await reload_elsewhere(runner, name)  # another controller runs it: ask it


async def log_rows(runner: FlowRunner, s: Session) -> None:
    """Emit the flow's audit rows (the newest `limit`); with `follow`, then every new
    row as it is written, until the client cancels."""
    p = s.params
    name = str(p.get("name") or "")
    store = await runner._store()
    if store is None or (name not in runner.flows and await runner._stored(name) is None):
        raise KeyError(f"no flow {name!r} (see `reops flows ls`)")
    limit = p.get("limit")
    flushed = runner._flushed  # taken before each read: no row slips between
    rows = await asyncio.to_thread(store.audit, name, 0,
                                   int(limit) if limit is not None else None)
    last = 0
    while True:
        for row in rows:
            s.emit(msgspec.to_builtins(row))
            last = row.seq
        if not p.get("follow"):
            return
        waits = [asyncio.create_task(flushed.wait()),
                 asyncio.create_task(s.cancelled.wait())]
        try:  # several controllers: another one may write its rows (look each second)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED,
                               timeout=1.0 if runner.cluster is not None else None)
        finally:
            for t in waits:
                t.cancel()
        if s.cancelled.is_set():
            return
        flushed = runner._flushed
        rows = await asyncio.to_thread(store.audit, name, last)
