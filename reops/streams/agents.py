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

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import reactivex
from reactivex import operators as rx_ops
from reactivex.abc import ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

from reops.control.client import HubClient
from reops.core.model import UNREACHED, Host, Hosts, Result
from reops.core.runtime import get_runtime
from reops.ops.base import CodeRef, Op
from reops.ops.shapes import typed
from reops.streams.source import source
from reops.streams.stream import Stream
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
             **kwargs: Any) -> reactivex.Observable[Result]:
    """Results of `fn` run every `every` seconds on each host's agent, until disposed."""
    name, ref = _fn(fn)
    code = msgspec.structs.asdict(ref) if ref is not None else None
    op_name = f"schedule:{name}"
    shape = fn if isinstance(fn, str) else ""  # built-ins only: shipped code keeps its data
    return _hub_stream(hub, "schedule", lambda it: typed(shape, _tick(op_name, it)),
                       hosts=[h.name for h in hosts], fn=name, args=list(args), kwargs=kwargs,
                       every=every, timeout=timeout, **({"code": code} if code else {}))


def _hub_stream(hub: Path | None, method: str, convert: Callable[[Any], Any],
                **params: Any) -> reactivex.Observable[Any]:
    """A hub control stream as an Observable: one stream per subscription, on the
    runtime loop; disposing it cancels the stream."""
    def subscribe(observer: ObserverBase[Any], _: SchedulerBase | None = None) -> Disposable:
        async def pump() -> None:
            client = HubClient(hub)
            try:
                async for it in client.stream(method, **params):
                    observer.on_next(convert(it))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                observer.on_error(e)
            else:
                observer.on_completed()
            finally:
                await client.close()

        fut = get_runtime().submit(pump())
        return Disposable(lambda: _cancel(fut))

    return reactivex.create(subscribe)


def _cancel(fut: Any) -> None:
    fut.cancel()


def _tick(op_name: str, it: dict[str, Any]) -> Result:
    err = it.get("err", "")
    if it.get("dropped"):
        err += f"{it['dropped']} earlier results dropped while the hub was away"
    return Result(host=it["host"], op=op_name, status=it.get("status", "error"),
                  code=int(it.get("code", UNREACHED)), out=it.get("out", ""), err=err,
                  started_at=float(it.get("started_at") or 0.0),
                  duration_s=float(it.get("duration_s") or 0.0), transport="agent",
                  data=it.get("data"))


def agent_events(hub: Path | None = None,
                 topics: Iterable[str] = ("agents", "keys")) -> reactivex.Observable[Any]:
    """Registry events ({topic, data}: registered, lost, back, pending…) until disposed."""
    return _hub_stream(hub, "subscribe", lambda event: event, topics=list(topics))


__all__ = ["agent_events", "agents", "call", "schedule"]
