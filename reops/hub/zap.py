"""The ZAP authenticator: CurveZMQ handshakes of agents, checked against the key store.

A ZAP request carries the client's public key but not its name, so the decision here is
only: CURVE with a key not in rejected/ may connect; its User-Id metadata is the z85 key.
Whether that key may be *served* is decided at registration (Hello), where the name is
known: accepted keys are served, others are recorded as pending and get nothing else.

Every agent connection costs one ZAP round trip, so 10,000 agents coming back at once are
10,000 requests: they are answered from the loop's reader callback with plain NOBLOCK
reads and sends, as many as are queued per wake-up (bounded), not one Future pair each.
"""

from __future__ import annotations

import asyncio
import logging

import zmq
import zmq.asyncio
import zmq.utils.z85

from reops.hub import memory
from reops.hub.keystore import KeyStore

log = logging.getLogger("reops.hub.zap")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
#: requests answered per loop turn before others get the loop
BATCH = 256
#: handshakes answered before the ZAP socket is renewed (see Authenticator)
RENEW_AFTER = 256
#: quiet time (no handshake) that ends a burst, in seconds
QUIET_S = 2.0
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def decide(request: list[bytes], keys: KeyStore) -> list[bytes]:
    """The ZAP reply frames for one request (RFC 27)."""
    if len(request) < 6:
        req_id = request[1] if len(request) > 1 else b""
        return [ZAP_VERSION, req_id, b"400", b"malformed ZAP request", b"", b""]
    version, req_id, _domain, address, _identity, mechanism = request[:6]
    credentials = request[6:]
    if version != ZAP_VERSION:
        return [ZAP_VERSION, req_id, b"400", b"unsupported ZAP version", b"", b""]
    if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
        log.warning("refused a non-CURVE connection from %s", address.decode(errors="replace"))
        return [ZAP_VERSION, req_id, b"400", b"CURVE required", b"", b""]
    key = zmq.utils.z85.encode(credentials[0])
    if keys.is_rejected(key.decode()):
        log.info("refused a rejected key from %s", address.decode(errors="replace"))
        return [ZAP_VERSION, req_id, b"400", b"key rejected", b"", b""]
    return [ZAP_VERSION, req_id, b"200", b"OK", key, b""]


class Authenticator:
    """Answers libzmq's ZAP requests on the hub's context, inside the hub's event loop.

    libzmq keeps each connection's pipe to the ZAP socket for the connection's life (its
    session drops it only on an error or at its end), ~12 KB of resident memory per
    connection (bench/bench_zmq_memory.py). Once `renew_after` handshakes were answered and
    then `quiet_s` went by without one, the socket is replaced by a new one on the same
    endpoint: closing the old one releases those pipes, and glibc is asked to hand the
    freed pages back. The Fleet's ROUTER enforces the ZAP domain, so a handshake in the
    instant between the two sockets is refused (its agent reconnects), never let in.
    """

    def __init__(self, ctx: zmq.asyncio.Context, keys: KeyStore, *, quiet_s: float = QUIET_S,
                 renew_after: int = RENEW_AFTER) -> None:
        self.ctx = ctx
        self.keys = keys
        self.quiet_s = quiet_s
        self.renew_after = renew_after
        self.answered = 0  # ZAP requests answered (one per CURVE handshake)
        self.renewals = 0  # sockets replaced to release their pipes
        self.trims = 0  # times freed memory was handed back to the kernel after one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Handle | None = None
        self._quiet: asyncio.TimerHandle | None = None  # armed by handshakes, never at idle
        self._seen = 0  # `answered` when the quiet timer was armed
        self._renewed_at = 0  # `answered` at the last renewal
        self._trimming: asyncio.Task[None] | None = None
        self._open()

    def _open(self) -> None:
        self.sock = self.ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self._raw: zmq.Socket[bytes] = zmq.Socket.shadow(self.sock.underlying)
        self._fd: int = self._raw.getsockopt(zmq.FD)  # type: ignore[assignment]

    async def serve(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._drain)
        self._drain()  # requests queued before the reader was added
        try:
            await loop.create_future()  # until cancelled: the reader answers
        finally:
            loop.remove_reader(self._fd)
            for handle in (self._kick, self._quiet, self._trimming):
                if handle is not None:
                    handle.cancel()
            self._loop = None

    def _drain(self) -> None:
        """Answer the queued requests, BATCH per loop turn."""
        self._kick = None
        if self._answer(self._raw, BATCH) and self._loop is not None:
            self._kick = self._loop.call_soon(self._drain)  # more queued: next turn
        if self._quiet is None and self._loop is not None and self.answered != self._seen:
            self._seen = self.answered
            self._quiet = self._loop.call_later(self.quiet_s, self._quiet_due)

    def _answer(self, raw: zmq.Socket[bytes], limit: int) -> bool:
        """Answer up to `limit` queued requests on `raw` (REP: one reply each, in order);
        whether more may be queued. Ends when ZMQ_EVENTS says nothing is readable, which
        clears ZMQ_FD."""
        for _ in range(limit):
            try:
                request = raw.recv_multipart(_NOBLOCK)
            except zmq.Again:
                # (libzmq may have skipped its pending commands: ZMQ_EVENTS runs them)
                if not raw.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                    return False
                continue
            try:
                reply = decide(request, self.keys)
            except Exception:  # a bug here must not stop authentication for everyone
                log.exception("ZAP handler failed; refusing the connection")
                rid = request[1] if len(request) > 1 else b""
                reply = [ZAP_VERSION, rid, b"500", b"internal error", b"", b""]
            raw.send_multipart(reply)  # (a REP reply never waits)
            self.answered += 1
        return True

    def _quiet_due(self) -> None:
        """`quiet_s` after a handshake: another came meanwhile → wait on (armed again by the
        next drain); none, after a burst of `renew_after` → renew the socket, then (once
        the sessions dropped their pipes on libzmq's threads) hand freed memory back."""
        self._quiet = None
        if self.answered != self._seen:
            if self._loop is not None:
                self._seen = self.answered
                self._quiet = self._loop.call_later(self.quiet_s, self._quiet_due)
            return
        burst = self.answered - self._renewed_at
        if burst >= self.renew_after:
            self._renewed_at = self.answered
            self.renew()
            self._trimming = asyncio.ensure_future(self._trim(burst))

    async def _trim(self, burst: int) -> None:
        await asyncio.sleep(self.quiet_s)  # (libzmq's threads drop the pipes meanwhile)
        before = memory.rss_kb()
        await asyncio.to_thread(memory.trim)
        self.trims += 1
        after = memory.rss_kb()
        if before is not None and after is not None:
            log.info("handed %d KB of freed memory back after %d handshakes "
                     "(RSS now %d KB)", before - after, burst, after)

    def renew(self) -> None:
        """Serve ZAP on a new socket; close the old one, releasing every connection's pipe
        to it. Requests already queued on the old one are answered first; one sent in the
        same instant is lost and its handshake times out (the agent reconnects)."""
        old, old_raw, old_fd = self.sock, self._raw, self._fd
        old.unbind(ZAP_ENDPOINT)
        self._open()
        if self._loop is not None:
            self._loop.remove_reader(old_fd)
            self._loop.add_reader(self._fd, self._drain)
        while self._answer(old_raw, BATCH):
            pass
        old.close(0)
        self.renewals += 1
        if self._loop is not None and self._kick is None:
            self._kick = self._loop.call_soon(self._drain)  # (the new one's first requests)

    def close(self) -> None:
        self.sock.close(0)
