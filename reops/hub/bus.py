"""The bus in the hub: publishers → XSUB ─(vetted, counted)→ XPUB → subscribers.

Both sockets are CurveZMQ servers with the hub's key, on a ZeroMQ context of their own:
libzmq serves one ZAP handler per context, and bus peers are a separate role from agents.
Who may connect (`BusAuth`): the hub's own identity (the CLI and flows on this machine
publish with it) and keys accepted in the key store under a `bus-` name. Any other CURVE
key is recorded as pending, `bus-<fingerprint>`, and refused, so a rogue subscriber
receives nothing; `reops keys accept bus-…` lets it in at its next reconnect.

The forwarding is a task on the hub's event loop, not `zmq.proxy` in a thread: every
message is vetted on the way (two frames, a bus topic, a body in the schema, a size
bound), so garbage sent to the XSUB is counted and never reaches a subscriber in another
language, and the counts `bus.stats` shows are kept without locks. It drains what is
queued in one go (plain NOBLOCK reads) so a burst costs one wake-up, not one per message.

A publisher that exits asks `bus.seen` first: the hub answers once it has read everything
that publisher sent (bounded). libzmq drops the unread tail of a connection whose peer goes
away while the hub holds it back at its high-water mark (the engine stops reading the
socket; a hang-up then closes it with data still queued): a short `reops … | publish()`
run could lose its last messages without anyone counting them. Closing only after the hub
has read them leaves nothing in flight.

Slow subscribers never block anyone: the XPUB drops a subscriber's messages beyond its
send high-water mark (XPUB_NODROP off). libzmq does not count those drops per subscriber,
so each body carries a per-topic `seq`: a subscriber that sees it jump missed messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
import zmq.utils.z85
from reops_agent.protocol import fingerprint
from zmq.utils.monitor import parse_monitor_message

from reops.control.bus import (
    EventBody,
    encode,
    header,
    plain,
    source_id,
    topic_of,
    valid_topic,
)
from reops.control.settings import HubSettings
from reops.hub.control import Session
from reops.hub.keystore import KeyStore
from reops.hub.zap import ZAP_ENDPOINT, ZAP_VERSION

if TYPE_CHECKING:
    from reops.hub.controller import Controller

log = logging.getLogger("reops.hub.bus")

#: name prefix of bus keys in the key store (their role: subscribe and publish, nothing else)
ROLE = "bus-"
#: messages moved per wake-up before yielding to the rest of the hub
BATCH = 512
#: publishers remembered for their drop counts
SOURCES_KEPT = 1024
#: longest a publisher's exit may wait in `bus.seen` for the hub to read what it sent
SEEN_WAIT_MAX_S = 60.0


def bus_name(key: str) -> str:
    """The key store name a bus key is pending under."""
    return ROLE + fingerprint(key).replace(":", "")[:16]


class BusAuth:
    """ZAP for the bus context: the hub's key and accepted `bus-` keys; others pending."""

    def __init__(self, ctx: zmq.asyncio.Context, keys: KeyStore, hub_key: str,
                 max_pending: int) -> None:
        self.keys, self.hub_key, self.max_pending = keys, hub_key, max_pending
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self.refused = 0
        self._accepted: tuple[int, frozenset[str]] = (-1, frozenset())
        self._told: set[str] = set()

    def accepted(self) -> frozenset[str]:
        """Keys accepted under a bus name (re-read when accepted/ changes)."""
        folder = self.keys.root / "accepted"
        try:
            stamp = folder.stat().st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        if stamp != self._accepted[0]:
            keys = frozenset(e.key for e in self.keys.entries("accepted")
                             if e.name.startswith(ROLE))
            self._accepted = (stamp, keys)
        return self._accepted[1]

    def decide(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"400",
                    b"malformed ZAP request", b"", b""]
        _version, req_id, _domain, address, _identity, mechanism = request[:6]
        creds = request[6:]
        if mechanism != b"CURVE" or len(creds) != 1 or len(creds[0]) != 32:
            return [ZAP_VERSION, req_id, b"400", b"CURVE required", b"", b""]
        key = zmq.utils.z85.encode(creds[0]).decode()
        if key == self.hub_key or key in self.accepted():
            return [ZAP_VERSION, req_id, b"200", b"OK", key.encode(), b""]
        self.refused += 1
        if not self.keys.is_rejected(key):
            name = bus_name(key)
            claim = self.keys.add_pending(name, key, self.max_pending)
            if claim == "new" or name not in self._told:
                if len(self._told) < 4096:
                    self._told.add(name)
                log.info("bus: refused key %s from %s (pending as %s: reops keys accept %s)",
                         fingerprint(key), address.decode(errors="replace"), name, name)
        return [ZAP_VERSION, req_id, b"400", b"key not accepted for the bus", b"", b""]

    async def serve(self) -> None:
        while True:
            request = await self.sock.recv_multipart()
            try:
                reply = self.decide(request)
            except Exception:  # a bug here must not stop the bus
                log.exception("bus ZAP handler failed; refusing the connection")
                reply = [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500",
                         b"internal error", b"", b""]
            await self.sock.send_multipart(reply)

    def close(self) -> None:
        self.sock.close(0)


class Bus:
    """The hub's XSUB/XPUB pair and the task forwarding between them."""

    def __init__(self, settings: HubSettings, keys: KeyStore) -> None:
        self.settings = settings
        public, secret = keys.hub_keypair()
        self.key = public.decode()
        self.ctx = zmq.asyncio.Context()
        try:
            self.auth = BusAuth(self.ctx, keys, self.key, settings.max_pending)
            # a larger message makes libzmq drop that publisher's connection
            self.xsub = self._server(zmq.XSUB, settings.bus_in_endpoint, public, secret, {
                zmq.RCVHWM: settings.bus_hwm, zmq.MAXMSGSIZE: settings.bus_max_message})
            self.xpub = self._server(zmq.XPUB, settings.bus_out_endpoint, public, secret, {
                zmq.SNDHWM: settings.bus_hwm,
                zmq.XPUB_NODROP: 0,  # a full subscriber loses messages, nobody waits for it
                zmq.XPUB_VERBOSER: 1})  # every (un)subscribe: counts per prefix
        except zmq.ZMQError:
            self.ctx.destroy(linger=0)
            raise
        self.endpoint_in = self.xsub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.endpoint_out = self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._in: zmq.Socket[bytes] = zmq.Socket.shadow(self.xsub.underlying)  # no futures
        self._in.send(b"\x01")  # the hub takes everything; the XPUB filters per subscriber
        self.peers = {"publishers": _Peers(self.xsub), "subscribers": _Peers(self.xpub)}
        self.received = self.forwarded = self.bad = 0
        self.subscriptions: dict[str, int] = {}
        self.sources: OrderedDict[str, int] = OrderedDict()  # src -> dropped it reported
        self.counts: dict[str, int] = {}  # src -> messages read from it (evicted with sources)
        self._seen_waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._src = source_id()
        self._seq: dict[str, int] = {}
        self._told_bad = 0.0

    def _server(self, kind: int, endpoint: str, public: bytes, secret: bytes,
                options: dict[int, int]) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            sock.setsockopt(option, value)
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.setsockopt_string(zmq.ZAP_DOMAIN, "reops-bus")
        sock.bind(endpoint)
        return sock

    # ── forwarding ─────────────────────────────────────────────────────────────────────

    async def serve(self) -> None:
        tasks = [asyncio.create_task(c) for c in (
            self.auth.serve(), self._forward(), self._subscriptions(),
            *(p.watch() for p in self.peers.values()))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close()

    async def _forward(self) -> None:
        while True:
            self._pass(await self.xsub.recv_multipart())
            for _ in range(BATCH):  # then what else is queued, without a wake-up each
                try:
                    frames = self._in.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    # a NOBLOCK recv may skip libzmq's throttled commands and report nothing
                    # while messages wait; ZMQ_EVENTS runs them and re-arms ZMQ_FD's edge
                    # (else the forwarder could sleep on queued messages until the next one)
                    if not int(self._in.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                        break
                    continue
                self._pass(frames)
            await asyncio.sleep(0)

    def _pass(self, frames: list[bytes]) -> None:
        self.received += 1
        if len(frames) != 2 or not valid_topic(frames[0]):
            self._bad(f"{len(frames)} frames" if len(frames) != 2 else "not a bus topic")
            return
        try:
            head = header(frames[1])
        except ValueError as e:
            self._bad(str(e))
            return
        if head.src:
            self._count(head.src, head.dropped)
        self._send(frames)

    def _count(self, src: str, dropped: int) -> None:
        self.sources[src] = dropped
        self.sources.move_to_end(src)
        n = self.counts[src] = self.counts.get(src, 0) + 1
        if len(self.sources) > SOURCES_KEPT:
            self.counts.pop(self.sources.popitem(last=False)[0], None)
        waiters = self._seen_waiters.get(src)
        if waiters:
            for target, fut in waiters:
                if n >= target and not fut.done():
                    fut.set_result(None)

    async def seen(self, src: str, sent: int, wait: float) -> int:
        """How many messages from `src` the hub has read, once that is `sent` (or after
        `wait` seconds): a publisher's exit waits for it, so nothing it sent is in flight
        when its connection closes."""
        if self.counts.get(src, 0) < sent and wait > 0:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (sent, fut)
            self._seen_waiters.setdefault(src, []).append(entry)
            try:
                async with asyncio.timeout(min(wait, SEEN_WAIT_MAX_S)):
                    await fut
            except TimeoutError:
                pass
            finally:
                left = self._seen_waiters.get(src, [])
                if entry in left:
                    left.remove(entry)
                if not left:
                    self._seen_waiters.pop(src, None)
        return self.counts.get(src, 0)

    def _send(self, frames: list[bytes]) -> None:
        # through the asyncio socket (not a shadow): it keeps the subscription reader awake
        sent: Any = self.xpub.send_multipart(frames, flags=zmq.NOBLOCK)
        if sent.done() and sent.exception() is not None:
            return  # (EAGAIN cannot happen with NODROP off; kept so nothing can block)
        self.forwarded += 1

    def _bad(self, why: str) -> None:
        self.bad += 1
        now = time.monotonic()
        if now - self._told_bad > 10:  # garbage floods must not flood the log
            self._told_bad = now
            log.warning("bus: dropped a bad message (%s); %d so far", why[:200], self.bad)

    async def _subscriptions(self) -> None:
        """Subscribe/unsubscribe frames from the XPUB: counted for `bus.stats`."""
        while True:
            frame = await self.xpub.recv()
            if not frame:
                continue
            topic = frame[1:].decode(errors="replace")
            if frame[0] == 1:
                self.subscriptions[topic] = self.subscriptions.get(topic, 0) + 1
            elif frame[0] == 0 and topic in self.subscriptions:
                left = self.subscriptions.pop(topic) - 1
                if left > 0:
                    self.subscriptions[topic] = left

    # ── the hub's own events ───────────────────────────────────────────────────────────

    def emit(self, topic: str, data: dict[str, Any]) -> None:
        """A hub event (agents, keys, jobs …) as `event.<topic>.<event>` on the bus."""
        kind = data.get("event") if isinstance(data, dict) else None
        body = EventBody(source=topic, kind=str(kind or "event"), data=plain(data),
                         src=self._src, at=time.time())
        name = topic_of(body)
        seq = self._seq.get(name, 0) + 1
        if len(self._seq) >= 65536 and name not in self._seq:
            self._seq.pop(next(iter(self._seq)))
        self._seq[name] = body.seq = seq
        self._send([name.encode(), encode(body)])

    def stats(self) -> dict[str, Any]:
        return {"in": self.endpoint_in, "out": self.endpoint_out, "key": self.key,
                "received": self.received, "forwarded": self.forwarded, "bad": self.bad,
                "refused": self.auth.refused,
                "publishers": len(self.peers["publishers"].fds),
                "subscribers": len(self.peers["subscribers"].fds),
                "subscriptions": dict(self.subscriptions),
                "publisher_drops": {s: d for s, d in self.sources.items() if d},
                "hwm": self.settings.bus_hwm}

    def close(self) -> None:
        for sock in (*(p.monitor for p in self.peers.values()), self.xsub, self.xpub):
            with contextlib.suppress(zmq.ZMQError):
                sock.close(0)
        self.auth.close()
        self.ctx.term()


class _Peers:
    """Connections of one bus socket that passed the CURVE handshake (by file descriptor)."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.fds: set[int] = set()

    async def watch(self) -> None:
        while True:
            event = parse_monitor_message(await self.monitor.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.fds.add(int(event["value"]))
            else:
                self.fds.discard(int(event["value"]))


def attach(controller: Controller) -> None:
    """Start the bus with the hub; `bus.stats` answers over the control socket.

    An endpoint already in use (another hub on this machine) leaves the hub without a bus,
    said once in its log, rather than without everything else."""
    try:
        bus = Bus(controller.settings, controller.keys)
    except zmq.ZMQError as e:
        why = (f"the bus is disabled: cannot bind {controller.settings.bus_in_endpoint} / "
               f"{controller.settings.bus_out_endpoint}: {e}")
        log.warning("%s", why)

        async def disabled(s: Session) -> dict[str, Any]:
            return {"error": why}

        controller.register("bus.stats", disabled)
        return

    async def stats(s: Session) -> dict[str, Any]:
        return bus.stats()

    async def seen(s: Session) -> dict[str, Any]:
        p = s.params
        try:
            src, sent, wait = str(p["src"]), int(p["sent"]), float(p.get("wait", 0.0))
        except (KeyError, TypeError, ValueError):
            return {"error": "bus.seen needs src (a publisher id) and sent (a count)"}
        return {"seen": await bus.seen(src, sent, wait)}

    controller.register("bus.stats", stats)
    controller.register("bus.seen", seen)
    controller.listen(bus.emit)
    controller.run_task(bus.serve)
    log.info("bus: publishers connect to %s, subscribers to %s", bus.endpoint_in,
             bus.endpoint_out)
