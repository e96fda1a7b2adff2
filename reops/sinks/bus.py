"""`publish()`: put a pipeline's Results, Lines and events on the hub's bus, pass them on.

    run(exec_(hosts, "uptime") | publish() | pretty())
    on(trigger) | then(op) | publish()          # in a flow: the same sink

One publisher per process (connected once, on the runtime loop), whatever the number of
pipelines. It never blocks a pipeline: a message that cannot go now is dropped and
counted (`publisher().dropped`, and in every later body's `dropped`, which the hub's
`bus.stats` shows; a flow in the hub also counts its own: `Tally`, in `flows ls`). Until
the hub has answered the connection, up to `bus_hwm` messages wait (a short CLI run would
otherwise lose its first Results to the CurveZMQ handshake); at exit, what waits is given
a bounded moment (`LINGER_S`) to leave, and the connection closes only once the hub says it
has read everything sent (`bus.seen`, bounded by the same moment): libzmq drops what a hub
has not read yet from a connection that goes away while the hub is behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import Iterable
from typing import Any

import reactivex
import zmq
import zmq.asyncio
from reactivex import Observable, abc
from zmq.utils.monitor import parse_monitor_message

from reops.control.bus import (
    KINDS,
    AnyBody,
    check_pattern,
    encode,
    matches,
    read_keypair,
    source_id,
    to_body,
    topic_of,
)
from reops.control.client import HubClient, HubError
from reops.control.settings import HubSettings, load_hub_settings
from reops.core.model import Event
from reops.core.runtime import get_runtime
from reops.streams.stream import Operator, Stream, derived

log = logging.getLogger("reops.bus")

#: seconds a process's exit waits for queued messages to reach the hub
LINGER_S = 2.0
#: topics whose sequence numbers are remembered (beyond that, the oldest restart at 1)
SEQ_KEPT = 65536


class Tally:
    """Messages one flow's `publish()` lost: the hub's runner gives each flow one (through
    `tally`), so `flows ls` shows a flow's own drops beside the process-wide count."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0


#: the Tally of the flow whose pipeline is publishing (set by the hub's flow runner)
tally: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("reops_publish_tally",
                                                                   default=None)


async def bus_endpoints(settings: HubSettings) -> tuple[str, str, str]:
    """(publishers' endpoint, subscribers' endpoint, hub key): asked of the running hub,
    else the settings and the key store."""
    client = HubClient(settings.control_path, connect_timeout=2.0)
    try:
        async with asyncio.timeout(5.0):
            info = await client.request("bus.stats")
        if isinstance(info, dict) and "in" in info:
            return str(info["in"]), str(info["out"]), str(info["key"])
    except (ConnectionError, HubError, TimeoutError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    pair = read_keypair(settings.keys_path, "hub")
    key = pair[0].decode() if pair else ""
    return settings.bus_in_endpoint, settings.bus_out_endpoint, key


class Publisher:
    """This process's connection to the hub's XSUB (an XPUB socket: it sees the hub's
    subscription, which says the connection is up)."""

    def __init__(self, settings: HubSettings | None = None) -> None:
        self.settings = settings or load_hub_settings()
        self.src = source_id()
        self.sent = 0
        self.dropped = 0
        self.ready = False
        self._waiting: collections.deque[tuple[bytes, AnyBody, Tally | None]] = (
            collections.deque())
        self._inbox: collections.deque[tuple[AnyBody, str, Tally | None]] = (
            collections.deque())
        self._wake = False
        self._seq: dict[str, int] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._started = False
        self._sockets: list[zmq.asyncio.Socket] = []
        self._draining: asyncio.Future[None] | None = None
        self._gone = False  # no bus to publish to: drop at once
        self.unconfirmed = 0  # sent, but not read by the hub when this process closed
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()

    def _drop(self, by: Tally | None, n: int = 1) -> None:
        self.dropped += n
        if by is not None:
            by.dropped += n

    def submit(self, body: AnyBody, topic: str, by: Tally | None = None) -> None:
        """Send from any thread. Items from other threads wait in an inbox (bounded), and
        a burst of them costs one wake-up of the runtime loop, not one per item. A drop
        is counted here and in `by` (the publishing flow's Tally)."""
        rt = get_runtime()
        if rt.in_loop:
            self.send(body, topic, by)
            return
        if len(self._inbox) >= 2 * self.settings.bus_hwm:
            self._drop(by)
            return
        self._inbox.append((body, topic, by))
        if not self._wake:
            self._wake = True
            rt.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._wake = False  # (before reading: a later append schedules another drain)
        while self._inbox:
            body, topic, by = self._inbox.popleft()
            self.send(body, topic, by)

    # ── on the runtime loop ──────────────────────────────────────────────────────────

    def send(self, body: AnyBody, topic: str | None = None, by: Tally | None = None) -> None:
        """Send (or, before the hub answered, queue) one body; never blocks."""
        topic = topic or topic_of(body)
        seq = self._seq.get(topic, 0) + 1
        if seq == 1 and len(self._seq) >= SEQ_KEPT:
            self._seq.pop(next(iter(self._seq)))
        self._seq[topic] = body.seq = seq
        body.src = self.src
        body.at = time.time()
        if not self._started:
            self._started = True
            self._tasks.append(get_runtime().spawn(self._connect()))
        if self._gone:
            self._drop(by)
            return
        if self.ready and not self._waiting:
            if not self._try(topic.encode(), body):
                self._drop(by)  # the hub is slow or away: lost, not waited for
            return
        if len(self._waiting) >= self.settings.bus_hwm:
            self._drop(by)
            return
        self._waiting.append((topic.encode(), body, by))
        self._idle.clear()

    def _try(self, topic: bytes, body: AnyBody) -> bool:
        sock = self._sock
        if sock is None:
            return False
        body.dropped = self.dropped
        # the asyncio socket, NOBLOCK: done at once, and it keeps the subscription reader
        # awake (a shadow socket's send could swallow the edge that wakes it)
        sent: Any = sock.send_multipart([topic, encode(body)], flags=zmq.NOBLOCK)
        if sent.done() and sent.exception() is not None:
            return False  # zmq.Again: the queue to the hub is full
        self.sent += 1
        return True

    def _flush(self) -> None:
        while self._waiting and self.ready:
            topic, body, _ = self._waiting[0]
            if not self._try(topic, body):  # full: the rest wait (bounded) for room
                if self._draining is None or self._draining.done():
                    self._draining = asyncio.ensure_future(self._room())
                return
            self._waiting.popleft()
        if not self._waiting:
            self._idle.set()

    async def _room(self) -> None:
        """Flush again once the queue to the hub has room."""
        if self._sock is not None:
            sock: Any = self._sock  # (pyzmq's stubs miss poll's flags)
            await sock.poll(flags=zmq.POLLOUT)
            self._flush()

    async def _connect(self) -> None:
        endpoint, _, server_key = await bus_endpoints(self.settings)
        pair = read_keypair(self.settings.keys_path, "hub")
        if pair is None or not server_key or "*" in endpoint:
            log.warning("publish(): no bus to publish to (hub key or endpoint unknown: %s)",
                        endpoint)
            self._gone = True
            self._drop_waiting()
            self._idle.set()
            return
        self._ctx = ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, int(LINGER_S * 1000))
        sock.setsockopt(zmq.SNDHWM, self.settings.bus_hwm)
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue says so (EAGAIN): we count it
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every (re)subscription: the hub is back
        sock.curve_serverkey = server_key.encode()
        sock.curve_publickey, sock.curve_secretkey = pair
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._sockets = [monitor, sock]
        sock.connect(endpoint)
        self._sock = sock
        watch = asyncio.create_task(self._watch(monitor))
        try:
            while True:  # the hub subscribes to everything once connected
                frame = await sock.recv()
                if frame[:1] == b"\x01":
                    self.ready = True
                    self._flush()
        finally:
            watch.cancel()

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.ready = False  # wait (bounded) for the hub to come back

    async def _confirm(self) -> None:
        """Wait (bounded by LINGER_S) until the hub has read every message sent, so none is
        in flight when the connection closes; say how many it had not, if any."""
        client = HubClient(self.settings.control_path, connect_timeout=LINGER_S)
        try:
            async with asyncio.timeout(LINGER_S + 1.0):
                reply = await client.request("bus.seen", src=self.src, sent=self.sent,
                                             wait=LINGER_S)
            seen = int(reply["seen"]) if isinstance(reply, dict) and "seen" in reply else -1
        except (ConnectionError, HubError, TimeoutError, OSError):
            seen = -1  # no answer (the hub went away): nothing more can be done
        finally:
            with contextlib.suppress(Exception):
                await client.close()
        if 0 <= seen < self.sent:
            self.unconfirmed = self.sent - seen
            log.warning("publish(): the hub had read %d of the %d messages sent when this "
                        "process closed its connection (%d may be lost)", seen, self.sent,
                        self.unconfirmed)

    def _drop_waiting(self) -> None:
        while self._waiting:
            self._drop(self._waiting.popleft()[2])

    async def close(self) -> None:
        """Give waiting messages a bounded moment, then close (runtime shutdown)."""
        if self._waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER_S):
                    await self._idle.wait()
            self._drop_waiting()
        if self.sent and self._sock is not None and not self._gone:
            await self._confirm()
        tasks = [*self._tasks, *([self._draining] if self._draining else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sock = None
        if self._ctx is not None:
            for sock in self._sockets:
                sock.close(int(LINGER_S * 1000))  # queued messages still leave, bounded
            await asyncio.to_thread(self._ctx.term)


def publisher() -> Publisher:
    """This process's Publisher (made on first use, closed at exit)."""
    return get_runtime().resource("bus-publisher", Publisher)


def publish(topics: Iterable[str] | None = None) -> Operator:
    """Publish each Result, Line or event on the hub's bus and pass it on unchanged.

    `topics`: patterns ('result.*.failed') limiting what goes out; default everything
    but output Lines (pass 'line.*' to publish those too)."""
    wanted = (tuple(check_pattern(t) for t in topics) if topics is not None
              else tuple(k for k in KINDS if k != "line"))

    def make(up: Stream) -> Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            pub = publisher()

            def on_next(e: Event) -> None:
                by = tally.get()
                try:
                    body = to_body(e)
                    topic = topic_of(body)
                    if any(matches(p, topic) for p in wanted):
                        pub.submit(body, topic, by)
                except Exception:  # the bus must never break the pipeline
                    pub._drop(by)
                    log.exception("publish(): could not publish a %s", type(e).__name__)
                observer.on_next(e)

            return up.observable.subscribe(on_next, observer.on_error, observer.on_completed)

        return reactivex.create(subscribe)

    return derived(make, "publish", shared=True)  # shared: each item goes out once
