"""Clients of the hub's control socket: async (REPL, flows, executors) and blocking (CLI).

A request gets any number of items, then one done (its value) or error (HubError). When
the hub is not running, HubNotRunning says so in one line and how to start it; when it
goes away mid-request, pending requests fail at once with HubGone instead of hanging, and
the next request connects afresh.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from reops.control.blocking import (  # (the blocking client; re-exported: one set of errors)
    CONNECT_TIMEOUT,
    HubError,
    HubGone,
    HubNotRunning,
    default_path,
    ping_sync,
    request_sync,
)
from reops.control.replies import fail_waiters_when_gone, route_replies
from reops.control.wire import (
    AnyPiece,
    AnyReply,
    Cancel,
    Done,
    Error,
    Item,
    Update,
    WireError,
    encoder,
    make_request,
)

log = logging.getLogger("reops.control.client")

__all__ = ["CONNECT_TIMEOUT", "HubClient", "HubError", "HubGone", "HubNotRunning", "default_path",
           "ping_sync", "request_sync"]

# ── async ─────────────────────────────────────────────────────────────────────────────


class HubClient:
    """A long-lived connection to the hub's control socket, bound to one event loop."""

    def __init__(self, path: Path | None = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.path = path or default_path()
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[AnyReply | BaseException]] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[None] | None = None
        self._gone = False  # the connection dropped: reconnect before the next request

    async def connect(self) -> None:
        """Connect and ping; HubNotRunning if no hub answers in time."""
        if self._gone and self._ready is not None and self._ready.done():
            await self._close_sockets()
            self._ready, self._gone = None, False
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                self._open()
                await asyncio.wait_for(self._request_once("ping", {}), self.connect_timeout)
            except (TimeoutError, HubGone) as e:
                ready, self._ready = self._ready, None
                ready.set_exception(HubNotRunning(self.path))
                ready.exception()  # retrieved: waiters get their own copy below
                await self._close_sockets()
                raise HubNotRunning(self.path) from e
            except BaseException:  # cancelled while connecting: the next request starts over
                ready, self._ready = self._ready, None
                if ready is not None and not ready.done():
                    ready.set_exception(HubGone("connecting was interrupted"))
                    ready.exception()
                await self._close_sockets()
                raise
            self._ready.set_result(None)
        await asyncio.shield(self._ready)

    def _open(self) -> None:
        if not self.path.exists():
            raise HubGone(str(self.path))
        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(f"ipc://{self.path}")
        self._sock = sock
        self._tasks = [asyncio.create_task(route_replies(sock, self._queues)),
                       asyncio.create_task(fail_waiters_when_gone(monitor, self._queues,
                                                                  self._lost))]

    def _lost(self) -> HubGone:
        self._gone = True  # reconnect before the next request
        return HubGone("the hub went away during the request")

    async def pieces(self, method: str, **params: Any) -> AsyncGenerator[AnyPiece, None]:
        """The typed items (LineItem, ResultItem, TickItem, Event) of a streaming request
        (call, schedule, subscribe); ends at its done, HubError at its error.

        A subscription's first item is the Event "subscribed": events after it reach you.
        """
        async for reply in self.replies(method, **params):
            if isinstance(reply, Update):
                yield reply.item

    async def replies(self, method: str, **params: Any) -> AsyncGenerator[Item | Update, None]:
        """The item replies of a request: `Item` (a service's plain value) or `Update` (a
        typed item); HubError when its params do not fit or the request fails."""
        await self.connect()
        async for reply in self._stream(method, params):
            yield reply

    async def _stream(self, method: str, params: dict[str, Any]
                      ) -> AsyncGenerator[Item | Update, None]:
        assert self._sock is not None
        rid = next(self._ids)
        try:
            frame = encoder.encode(make_request(rid, method, params))
        except WireError as e:
            raise HubError(str(e)) from None
        queue: asyncio.Queue[AnyReply | BaseException] = asyncio.Queue()
        self._queues[rid] = queue
        finished = False
        try:
            await self._sock.send(frame)
            while True:
                reply = await queue.get()
                if isinstance(reply, BaseException):
                    finished = True
                    raise reply
                if isinstance(reply, (Item, Update)):
                    yield reply
                    continue
                finished = True
                if isinstance(reply, Error):
                    raise HubError(reply.message)
                return
        finally:
            self._queues.pop(rid, None)
            if not finished and self._sock is not None and not self._sock.closed:
                self._sock.send(encoder.encode(Cancel(id=0, target=rid)))

    async def _request_once(self, method: str, params: dict[str, Any]) -> Any:
        value: Any = None
        rid = next(self._ids)
        queue: asyncio.Queue[AnyReply | BaseException] = asyncio.Queue()
        self._queues[rid] = queue
        assert self._sock is not None
        try:
            try:
                frame = encoder.encode(make_request(rid, method, params))
            except WireError as e:
                raise HubError(str(e)) from None
            await self._sock.send(frame)
            while True:
                reply = await queue.get()
                if isinstance(reply, BaseException):
                    raise reply
                if isinstance(reply, Error):
                    raise HubError(reply.message)
                if isinstance(reply, Done):
                    value = reply.value
                    return value
        finally:
            self._queues.pop(rid, None)

    async def request(self, method: str, **params: Any) -> Any:
        """The final value of a request (its items, if any, are dropped)."""
        await self.connect()
        return await self._request_once(method, params)

    async def _close_sockets(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for queue in self._queues.values():  # nobody waits forever on a closed connection
            queue.put_nowait(HubGone("the connection to the hub was closed"))
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def close(self) -> None:
        """Close the connection; safe to call twice (a later request reconnects)."""
        await self._close_sockets()
        self._ready = None
