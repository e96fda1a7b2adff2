"""Agents as a source of streams: call functions, schedules, registry events.

    from reops.streams.agents import agents, call, schedule
    web = agents().select("web*")                 # connected agents as Hosts
    run(call(web, "facts") | pretty())            # a built-in, one Result per host
    run(call(web, my_module.check, 3))            # shipped code (agents need --allow-code)
    schedule(web, "metrics", "cpu", every=10).subscribe(print)   # until disposed

The hub (`reops hub`) owns the agent connections; everything here talks to it over its
local control socket (the transport itself is `reops.transports.agent`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import msgspec
import reactivex
from reactivex import operators as rx_ops

from reops.control.client import HubClient
from reops.control.wire import AnyPiece, TickItem
from reops.core.model import Host, Hosts, Line, Result, Status
from reops.ops.base import CodeRef, Op
from reops.ops.shapes import typed
from reops.streams.source import as_hosts, source
from reops.streams.stream import Stream, from_async
from reops.transports.agent import agents, ship

# ── calls and schedules ─────────────────────────────────────────────────────────────


def _fn(fn: str | Callable[..., Any]) -> tuple[str, CodeRef | None]:
    if isinstance(fn, str):
        return fn, None
    return getattr(fn, "__name__", "shipped"), ship(fn)


def call(hosts: Hosts | Iterable[Host], fn: str | Callable[..., Any], *args: Any,
         timeout: float | None = None, **kwargs: Any) -> Stream:
    """Run `fn` (a built-in name, or a Python function to ship) on each host's agent."""
    name, code = _fn(fn)
    op = Op(name=f"call:{name}", kind="call" if code is None else "code", function=name,
            args=args, kwargs=kwargs, code=code, timeout=timeout)
    if isinstance(fn, str):  # a built-in: facts/metrics data in the same Structs as SSH's
        return source(hosts, op, via="agent") | rx_ops.map(lambda e: typed(name, e))
    return source(hosts, op, via="agent")


def schedule(hosts: Hosts | Iterable[Host], fn: str | Callable[..., Any], *args: Any,
             every: float, timeout: float | None = None, hub: Path | None = None,
             **kwargs: Any) -> Stream:
    """Results of `fn` run every `every` seconds on each host's agent, until disposed.

    An endless Stream (no history kept): pipe it into `| where(...) | then(...)`.
    """
    hs = as_hosts(hosts)
    name, ref = _fn(fn)
    code = msgspec.structs.asdict(ref) if ref is not None else None
    op_name = f"schedule:{name}"

    def rebuild(subset: Hosts) -> Stream:
        return schedule(subset, fn, *args, every=every, timeout=timeout, hub=hub, **kwargs)

    shape = fn if isinstance(fn, str) else ""  # built-ins only: shipped code keeps its data
    return Stream(_hub_stream(hub, "schedule", lambda it: typed(shape, _tick(op_name, it)),
                              hosts=hs.names, fn=name, args=list(args), kwargs=kwargs,
                              every=every, timeout=timeout,
                              **({"code": code} if code else {})),
                  hs, rebuild, replay=False)


def _hub_stream(hub: Path | None, method: str, convert: Callable[[AnyPiece], Any],
                **params: Any) -> reactivex.Observable[Any]:
    """A hub control stream's typed items as an Observable: one stream per subscription,
    on the runtime loop; disposing it cancels the stream."""
    async def pump(emit: Callable[[Any], None]) -> None:
        client = HubClient(hub)
        try:
            async for it in client.pieces(method, **params):
                emit(convert(it))
        finally:
            await client.close()

    return from_async(pump)


def _tick(op_name: str, it: AnyPiece) -> Result:
    if not isinstance(it, TickItem):
        raise TypeError(f"a schedule sent {type(it).__name__}, not a TickItem")
    err = it.err
    if it.dropped:
        err += f"{it.dropped} earlier results dropped while the hub was away"
    return Result(host=it.host, op=op_name, status=cast(Status, it.status), code=it.code,
                  out=it.out, err=err, started_at=it.started_at, duration_s=it.duration_s,
                  transport="agent", data=it.data)


def agent_events(hub: Path | None = None,
                 topics: Iterable[str] = ("agents", "keys")) -> Stream:
    """Registry events (`Event`: topic, data — registered, lost, back, pending…) until
    disposed; the first is the Event "subscribed".

    An endless Stream over no hosts (the events name them); its items are the hub's
    typed Events (`reops.control.wire.Event`), not Results: filter them with `where`.
    """
    events = cast("reactivex.Observable[Result | Line]",  # typed Events, not Results
                  _hub_stream(hub, "subscribe", lambda event: event, topics=list(topics)))
    return Stream(events, Hosts(), lambda hs: agent_events(hub, topics), replay=False)


__all__ = ["agent_events", "agents", "call", "schedule"]
