"""The ZAP authenticator: CurveZMQ handshakes of agents, checked against the key store.

A ZAP request carries the client's public key but not its name, so the decision here is
only: CURVE with a key not in rejected/ may connect; its User-Id metadata is the z85 key.
Whether that key may be *served* is decided at registration (Hello), where the name is
known: accepted keys are served, others are recorded as pending and get nothing else.
"""

from __future__ import annotations

import logging

import zmq
import zmq.asyncio
import zmq.utils.z85

from reops.hub.keystore import KeyStore

log = logging.getLogger("reops.hub.zap")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"


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

    async def serve(self) -> None:
        while True:
            request = await self.sock.recv_multipart()
            try:
                reply = decide(request, self.keys)
            except Exception:  # a bug here must not stop authentication for everyone
                log.exception("ZAP handler failed; refusing the connection")
                rid = request[1] if len(request) > 1 else b""
                reply = [ZAP_VERSION, rid, b"500", b"internal error", b"", b""]
            await self.sock.send_multipart(reply)

    def close(self) -> None:
        self.sock.close(0)
