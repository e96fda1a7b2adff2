"""The controller: one process owning agents (Fleet) and the control socket, plus services.

Built-in control methods: ping, agents, keys, keys.accept/reject/delete, call, schedule,
subscribe (and cancel), ssh.run and ssh.pool (the warm SSH pool, `hub/sshpool.py`).
Other services add theirs in the same process, from an `attach(controller)` function named
in HubSettings.services (or the `reops.hub` entry point group):

    def attach(controller):
        controller.register("jobs.submit", handler)   # async handler(session) -> value
        controller.run_task(workers)                  # a coroutine for the hub's lifetime
        ...
        controller.publish("jobs", {"event": "done", "job": 7})   # to `subscribe` clients
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from reops_agent.protocol import CodeRef, code_hash

from reops import __version__
from reops.control.settings import HubSettings
from reops.control.wire import Call, Code, LineItem, ResultItem, Schedule, TickItem
from reops.hub.bus import attach as attach_bus
from reops.hub.control import BadRequest, ControlServer, Handler, Session
from reops.hub.fleet import Fleet
from reops.hub.flows import attach as attach_flows
from reops.hub.keystore import KeyEntry, KeyStore
from reops.hub.sshpool import attach as attach_ssh_pool
from reops.hub.zap import Authenticator

if TYPE_CHECKING:
    from reops.hub.remote_calls import RemoteCalls, Sent

log = logging.getLogger("reops.hub")

Listener = Callable[[str, dict[str, Any]], None]

#: libzmq I/O threads of the hub's context (agents' connections are spread over them)
IO_THREADS = max(1, min(4, os.cpu_count() or 1))


def _entry(e: KeyEntry) -> dict[str, Any]:
    return {"name": e.name, "state": e.state, "key": e.key, "fingerprint": e.fingerprint,
            "claims": e.claims}


def _code(code: Code | None) -> CodeRef | None:
    """The agent wire's reference for shipped code (its hash computed here, never trusted)."""
    if code is None:
        return None
    return CodeRef(hash=code_hash(code.source), function=code.function,
                   module=code.module or "shipped", source=code.source)


def _timeout(t: float | None) -> float | None:
    if t is not None and t <= 0:
        raise BadRequest("timeout must be positive")
    return t


class Controller:
    """The hub daemon's state, driven by `serve()` on one event loop."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.started_at = time.time()  # `reops hub status`: running since
        self.keys = KeyStore(settings.keys_path)
        self.keys.ensure()
        self.public_key = self.keys.hub_public_key()
        # libzmq's I/O threads accept connections, run CurveZMQ handshakes and move frames;
        # with one, a crowd of agents connecting at once overflows the listen queue while
        # that thread is busy with the others' handshakes
        self.ctx = zmq.asyncio.Context(io_threads=IO_THREADS)
        self._listeners: list[Listener] = []
        self._services: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.zap = Authenticator(self.ctx, self.keys)  # bound before any CURVE socket
        self.fleet = Fleet(self.ctx, settings, self.keys, self.publish)
        self.control = ControlServer(self.ctx, settings.control_path)
        #: calls to agents held by other controllers (set by the cluster on PostgreSQL)
        self.remote: RemoteCalls | None = None
        for name, handler in {
            "ping": self._ping, "agents": self._agents, "keys": self._keys,
            "keys.accept": self._accept, "keys.reject": self._reject,
            "keys.delete": self._delete, "call": self._call, "schedule": self._schedule,
        }.items():
            self.register(name, handler)
        attach_ssh_pool(self)  # ssh.run, ssh.pool: the warm SSH pool `reops exec` uses
        attach_flows(self)  # flows.*: long-running flows, stored, audited, drained on stop
        attach_bus(self)  # the XSUB/XPUB bus publish() and `reops tail` use; bus.stats

    def register(self, name: str, handler: Handler) -> None:
        """Serve control method `name` (e.g. "jobs.submit") with `async handler(session)`."""
        self.control.register(name, handler)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """An event for control subscribers (`reops events`) and in-process listeners."""
        self.control.publish(topic, data)
        for fn in list(self._listeners):
            try:
                fn(topic, data)
            except Exception:
                log.exception("event listener failed")

    def run_task(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `factory()` for the hub's lifetime (a service's workers); cancelled at stop."""
        self._services.append(factory)

    def listen(self, fn: Listener) -> Callable[[], None]:
        """Call `fn(topic, data)` on every event in this process; returns the remover."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then release sockets and fail what is in flight."""
        log.info("hub %s listening for agents on %s (key %s), control ipc://%s",
                 __version__, self.fleet.endpoint, self.public_key, self.control.path)
        tasks = [asyncio.create_task(c) for c in (
            self.zap.serve(), self.fleet.serve(), self.fleet.heartbeat(), self.control.serve(),
            *(f() for f in self._services))]
        try:
            done, _ = await asyncio.wait([*tasks, asyncio.create_task(stop.wait())],
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t in tasks and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.fleet.close()
            self.control.close()
            self.zap.close()
            self.ctx.term()

    # ── built-in control methods ─────────────────────────────────────────────────────

    async def _ping(self, s: Session) -> dict[str, Any]:
        return {"hub": __version__, "pid": os.getpid(), "bind": self.fleet.endpoint,
                "key": self.public_key, "agents": len(self.fleet.registry),
                "calls": len(self.fleet.calls), "bad_frames": self.fleet.bad_frames,
                "impostors": self.fleet.impostors, "role_refused": self.fleet.role_refused,
                "since": self.started_at, "control": str(self.settings.control_path),
                "heartbeat_s": self.settings.heartbeat_s, "misses": self.settings.misses}

    async def _agents(self, s: Session) -> list[dict[str, Any]]:
        return [rec.info() for rec in self.fleet.registry]

    async def _keys(self, s: Session) -> list[dict[str, Any]]:
        return [_entry(e) for e in self.keys.entries()]

    def _names(self, s: Session) -> list[str]:
        names = s.params.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest("names must be a list of agent names")
        return names

    async def _accept(self, s: Session) -> list[dict[str, Any]]:
        fp = s.params.get("fingerprint")
        if fp is not None and (not isinstance(fp, str) or len(self._names(s)) != 1):
            raise BadRequest("fingerprint goes with exactly one agent name")
        if s.params.get("all_pending"):
            done = self.keys.accept_all_pending()
        else:
            done = [self.keys.accept(n, fp) for n in self._names(s)]
        for e in done:
            self.fleet.nudge(e.name)
            self.publish("keys", {"event": "accepted", "agent": e.name})
        return [_entry(e) for e in done]

    async def _reject(self, s: Session) -> list[dict[str, Any]]:
        done = [self.keys.reject(n) for n in self._names(s)]
        for e in done:
            self.fleet.drop(e.name, "key rejected")
            self.publish("keys", {"event": "rejected", "agent": e.name})
        return [_entry(e) for e in done]

    async def _delete(self, s: Session) -> list[dict[str, Any]]:
        done = [self.keys.delete(n) for n in self._names(s)]
        for e in done:
            self.fleet.drop(e.name, "key deleted")
            self.publish("keys", {"event": "deleted", "agent": e.name})
        return [_entry(e) for e in done]

    async def _call(self, s: Session) -> dict[str, Any]:
        """Fan a call out to `hosts`; stream lines and one result per host, in any order."""
        p = s.request
        if not isinstance(p, Call):
            raise BadRequest("call takes a Call request")
        hosts = p.hosts
        remaining = len(hosts)
        finished = asyncio.Event()
        ids: list[int] = []

        def on_line(host: str, stream: str, text: str) -> None:
            s.send(LineItem(host=host, stream="err" if stream == "err" else "out", text=text))

        def on_done(host: str, result: dict[str, Any]) -> None:
            nonlocal remaining
            s.send(ResultItem(host=host, **result))
            remaining -= 1
            if remaining == 0:
                finished.set()

        fn, args, kwargs, timeout, code = self._fn(p)
        stream = p.stream
        remote = self.remote  # several controllers: agents held by a peer are reached there
        held = await remote.holders([h for h in dict.fromkeys(hosts)
                                     if self.fleet.registry.connected(h) is None]
                                    ) if remote is not None else {}
        sent: list[Sent] = []
        for host in hosts:
            if remote is not None and host in held:
                sent.append(remote.call(host, held[host], fn, args, kwargs, timeout=timeout,
                                        code=code, on_done=on_done,
                                        on_line=on_line if stream else None))
                continue
            cid = self.fleet.call(host, fn, args, kwargs, timeout=timeout, stream=stream,
                                  code=code, on_done=on_done,
                                  on_line=on_line if stream else None)
            if cid is not None:
                ids.append(cid)

        def cancel() -> None:
            for i in ids:
                self.fleet.cancel(i)
            for handle in sent:
                if remote is not None:
                    remote.cancel(handle)

        s.on_cancel.append(cancel)
        if remaining:
            await finished.wait()
        return {"hosts": len(hosts)}

    async def _schedule(self, s: Session) -> None:
        """Run a function every N s on `hosts`, streaming ticks until cancelled."""
        p = s.request
        if not isinstance(p, Schedule):
            raise BadRequest("schedule takes a Schedule request")
        every = p.every
        if every <= 0:
            raise BadRequest("every must be a positive number of seconds")
        fn, args, kwargs, timeout, code = self._fn(p)

        def on_tick(host: str, seq: int, dropped: int, result: dict[str, Any]) -> None:
            s.send(TickItem(host=host, seq=seq, dropped=dropped, **result))

        sid = self.fleet.schedule(p.hosts, fn, args, kwargs, every=every,
                                  timeout=timeout, code=code, on_tick=on_tick)
        try:
            await s.cancelled.wait()
        finally:
            self.fleet.unschedule(sid)

    @staticmethod
    def _fn(p: Call | Schedule) -> tuple[str, list[Any], dict[str, Any], float | None,
                                         CodeRef | None]:
        code = _code(p.code)
        fn = p.fn or (code.function if code else "")
        if not fn:
            raise BadRequest("fn (a built-in function name) or code is required")
        return fn, p.args, p.kwargs, _timeout(p.timeout), code
