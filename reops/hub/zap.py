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

from reops.hub.keystore import KeyStore

log = logging.getLogger("reops.hub.zap")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
#: requests answered per loop turn before others get the loop
BATCH = 256
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
    """Answers libzmq's ZAP requests on the hub's context, inside the hub's event loop."""

    def __init__(self, ctx: zmq.asyncio.Context, keys: KeyStore) -> None:
        self.keys = keys
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self._raw: zmq.Socket[bytes] = zmq.Socket.shadow(self.sock.underlying)
        self._kick: asyncio.Handle | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        fd: int = self._raw.getsockopt(zmq.FD)  # type: ignore[assignment]
        loop.add_reader(fd, self._drain, loop)
        self._drain(loop)  # requests queued before the reader was added
        try:
            await loop.create_future()  # until cancelled: the reader answers
        finally:
            loop.remove_reader(fd)
            if self._kick is not None:
                self._kick.cancel()

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Answer the queued requests (REP: one reply each, in order), BATCH per turn.

        It ends when ZMQ_EVENTS says nothing is readable, which clears ZMQ_FD.
        """
        self._kick = None
        for _ in range(BATCH):
            try:
                request = self._raw.recv_multipart(_NOBLOCK)
            except zmq.Again:
                # (libzmq may have skipped its pending commands: ZMQ_EVENTS runs them)
                if not self._raw.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                    return
                continue
            try:
                reply = decide(request, self.keys)
            except Exception:  # a bug here must not stop authentication for everyone
                log.exception("ZAP handler failed; refusing the connection")
                rid = request[1] if len(request) > 1 else b""
                reply = [ZAP_VERSION, rid, b"500", b"internal error", b"", b""]
            self._raw.send_multipart(reply)  # (a REP reply never waits)
        self._kick = loop.call_soon(self._drain, loop)  # more queued: next turn

    def close(self) -> None:
        self.sock.close(0)
