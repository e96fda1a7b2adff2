"""The hub's local control socket: an ipc ROUTER only the hub's user can reach.

The socket file is 0600 (bound under umask 0177, so never briefly wider), so only the user
running the hub (and root) can connect; agents never can (they only reach the CurveZMQ
endpoint). A directory the hub creates for it is 0700; a directory that already exists is
left as it is (it may be shared, e.g. /tmp or /run/user/N: chmod-ing it would break others).
Handlers are registered by name; each request runs as its own task, may stream items via
its Session, and ends with one done or error reply. Frames are the typed messages of
`reops.control.wire`; one that is not gets an error reply (the hub carries on).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from reops_agent.protocol import MAX_MESSAGE

from reops.control.wire import (
    TYPED,
    AnyPiece,
    AnyReply,
    AnyRequest,
    Cancel,
    Done,
    Error,
    Event,
    Invoke,
    Item,
    Subscribe,
    Update,
    WireError,
    decode_request,
    encoder,
    make_request,
    request_id,
)

log = logging.getLogger("reops.hub.control")


class Session:
    """One control request in progress: stream items back, learn when it is cancelled."""

    def __init__(self, server: ControlServer, client: bytes, request: AnyRequest) -> None:
        self.server = server
        self.client = client
        self.request = request  # typed: Call, Schedule, Subscribe, or Invoke (the others)
        self.cancelled = asyncio.Event()
        self.on_cancel: list[Callable[[], None]] = []

    @property
    def method(self) -> str:
        req = self.request
        return req.method if isinstance(req, Invoke) else str(type(req).__struct_config__.tag)

    @property
    def params(self) -> dict[str, Any]:
        """An Invoke's parameters (a typed request's fields, for handlers that want a map)."""
        req = self.request
        if isinstance(req, Invoke):
            return req.params
        return {f: getattr(req, f) for f in req.__struct_fields__ if f != "id"}

    def emit(self, value: Any) -> None:
        """Send one plain item to the client (dropped, and the session cancelled, if it
        left)."""
        if not self.cancelled.is_set():
            self.server.reply(self, Item(id=self.request.id, value=value))

    def send(self, piece: AnyPiece) -> None:
        """Send one typed item (a line, a result, a tick, an event) to the client."""
        if not self.cancelled.is_set():
            self.server.reply(self, Update(id=self.request.id, item=piece))

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            for fn in self.on_cancel:
                fn()


Handler = Callable[[Session], Awaitable[Any]]


class BadRequest(ValueError):
    """A request the hub cannot act on; its message goes back to the client as is."""


def private_dir(folder: Path) -> None:
    """Create `folder` (and parents) 0700 if missing; never chmod one that already exists."""
    missing = []
    for d in (folder, *folder.parents):
        if d.exists():
            break
        missing.append(d)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for d in missing:  # mkdir's mode is filtered by the umask: make ours exactly 0700
        os.chmod(d, 0o700)


class ControlServer:
    """Dispatches control requests to registered handlers; publishes events."""

    def __init__(self, ctx: zmq.asyncio.Context, path: Path) -> None:
        self.path = path
        private_dir(path.parent)
        path.unlink(missing_ok=True)
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        s.setsockopt(zmq.SNDHWM, 100_000)
        old = os.umask(0o177)
        try:
            s.bind(f"ipc://{path}")
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock = s
        self.handlers: dict[str, Handler] = {}
        self.sessions: dict[tuple[bytes, int], Session] = {}
        self.subscribers: dict[Session, tuple[str, ...]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.register("subscribe", self._subscribe)

    def register(self, name: str, handler: Handler) -> None:
        """Serve control method `name` with `handler(session) -> value`."""
        if name in self.handlers or name == "cancel":
            raise ValueError(f"control method {name!r} is already registered")
        self.handlers[name] = handler

    def publish(self, topic: str, data: Any) -> None:
        """Send an event to every subscriber of `topic` (or of a prefix of it, or of all)."""
        for session, topics in list(self.subscribers.items()):
            if not topics or any(topic.startswith(t) for t in topics):
                session.send(Event(topic=topic, data=data))

    async def _subscribe(self, session: Session) -> None:
        assert isinstance(session.request, Subscribe)
        self.subscribers[session] = tuple(session.request.topics)
        session.send(Event(topic="subscribed", data={}))  # events from here on reach you
        try:
            await session.cancelled.wait()
        finally:
            self.subscribers.pop(session, None)

    def reply(self, session: Session, reply: AnyReply) -> None:
        self._send(session.client, reply)

    def _send(self, client: bytes, reply: AnyReply) -> None:
        sent: Any = self.sock.send_multipart([client, encoder.encode(reply)],
                                             flags=zmq.NOBLOCK)
        if sent.done() and sent.exception() is not None:
            log.info("control client gone; ending its requests")
            for s in [s for s in self.sessions.values() if s.client == client]:
                s.cancel()
        elif not sent.done():
            sent.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def serve(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            if len(frames) != 2:
                log.warning("dropped a control message of %d frames", len(frames))
                continue
            client, payload = frames
            try:
                request = decode_request(payload)
                if isinstance(request, Invoke) and request.method in TYPED:  # its own Struct
                    request = make_request(request.id, request.method, request.params)
            except WireError as e:
                log.warning("refused a bad control message: %s", e)
                self._send(client, Error(id=request_id(payload), message=str(e)))
                continue
            if isinstance(request, Cancel):
                target = self.sessions.get((client, request.target))
                if target is not None:
                    target.cancel()
                continue
            task = asyncio.create_task(self._run(client, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, client: bytes, request: AnyRequest) -> None:
        session = Session(self, client, request)
        method = session.method
        handler = self.handlers.get(method)
        key = (client, request.id)
        self.sessions[key] = session
        try:
            if handler is None:
                raise BadRequest(f"unknown control method {method!r}")
            value = await handler(session)
            self.reply(session, Done(id=request.id, value=value))
        except (BadRequest, KeyError, ValueError, TypeError) as e:
            text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            self.reply(session, Error(id=request.id, message=str(text)))
        except Exception as e:
            log.exception("control method %s failed", method)
            self.reply(session, Error(id=request.id, message=f"hub error in {method}: {e}"))
        finally:
            self.sessions.pop(key, None)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.sock.close(0)
        self.path.unlink(missing_ok=True)
