"""`bus(*topics)`: what others publish on the hub's bus, as an endless Stream.

    bus("result.*.failed").subscribe(print)             # every failed Result, live
    on(bus("flow.setup.*")) | …                         # another flow's news as a trigger

Items are `Message(topic, body, missed)` (reops.control.bus): `body` is the decoded
schema (ResultBody, LineBody, EventBody, FlowBody; `body.to_result()` for a Result) and
`missed` how many messages of that topic this subscriber lost just before it (a jump in
the publisher's per-topic `seq`). Patterns are globs over dot-separated words; a shorter
pattern matches every topic starting with its words. ZeroMQ filters by each pattern's
literal prefix, the rest is matched here. Nothing is kept but the last `seq` per topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from reops.control.bus import (
    BusError,
    Message,
    check_pattern,
    decode,
    matches,
    prefix,
    read_keypair,
)
from reops.control.client import HubClient, HubError, HubNotRunning
from reops.control.settings import HubSettings, load_hub_settings
from reops.core.model import Hosts
from reops.streams.stream import Stream, from_async

log = logging.getLogger("reops.bus")

#: seconds between connection attempts with a key the hub refused
RETRY_S = 2.0
#: topics whose last seq is remembered for gap detection (the oldest are forgotten)
TOPICS_KEPT = 65536


class Gaps:
    """Per (publisher, topic) last seq: how many messages were missed before each one."""

    def __init__(self, kept: int = TOPICS_KEPT) -> None:
        self.last: dict[tuple[str, str], int] = {}
        self.kept = kept
        self.missed = 0

    def see(self, src: str, topic: str, seq: int) -> int:
        """Messages missed just before this one (0: none, or a restarted publisher)."""
        key = (src, topic)
        last = self.last.pop(key, None)
        if last is None and len(self.last) >= self.kept:
            self.last.pop(next(iter(self.last)))
        self.last[key] = seq
        gap = seq - last - 1 if last is not None and seq > last + 1 else 0
        self.missed += gap
        return gap


async def endpoint_and_key(settings: HubSettings) -> tuple[str, str]:
    """The subscribers' endpoint and the hub's key, asked of the running hub (BusError if
    none runs); the settings and the key store if it does not answer in time."""
    if not settings.control_path.exists():
        raise BusError(str(HubNotRunning(settings.control_path)))
    client = HubClient(settings.control_path, connect_timeout=2.0)
    try:
        async with asyncio.timeout(5.0):
            info = await client.request("bus.stats")
        if isinstance(info, dict) and "out" in info:
            return str(info["out"]), str(info["key"])
        if isinstance(info, dict) and "error" in info:
            raise BusError(str(info["error"]))
    except HubNotRunning as e:
        raise BusError(str(e)) from None
    except (ConnectionError, HubError, TimeoutError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    pair = read_keypair(settings.keys_path, "hub")
    return settings.bus_out_endpoint, pair[0].decode() if pair else ""


async def messages(topics: tuple[str, ...], emit: Callable[[Message], None], *,
                   settings: HubSettings | None = None, endpoint: str | None = None,
                   server_key: str | None = None, keys: tuple[bytes, bytes] | None = None,
                   on_refused: Callable[[], None] | None = None) -> None:
    """Subscribe and `emit` each matching message until cancelled (the loop of `bus`).

    `keys`: this subscriber's (public, secret) z85 pair; default the hub's own (readable by
    the hub's user). A key the hub has not accepted gets nothing; `on_refused` is told.
    """
    settings = settings or load_hub_settings()
    patterns = tuple(check_pattern(t) for t in topics) or ("*",)
    if endpoint is None or server_key is None:
        found_endpoint, found_key = await endpoint_and_key(settings)
        endpoint, server_key = endpoint or found_endpoint, server_key or found_key
    keys = keys or read_keypair(settings.keys_path, "hub")
    if keys is None or not server_key:
        raise BusError(f"no key to subscribe with: the hub's key store {settings.keys_path} "
                       "is not readable here (pass keys=)")
    if "*" in endpoint:
        raise BusError(f"the bus endpoint {endpoint} has no port: is the hub running?")
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, settings.bus_hwm)
    sock.curve_serverkey = server_key.encode()
    sock.curve_publickey, sock.curve_secretkey = keys
    for p in sorted({prefix(p) for p in patterns}):
        sock.setsockopt(zmq.SUBSCRIBE, p.encode())
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    sock.connect(endpoint)
    watch = asyncio.create_task(_refusals(monitor, sock, endpoint, on_refused))
    gaps = Gaps()
    try:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                msg = decode(frames[0], frames[1])
            except BusError as e:
                log.debug("bus: skipped %s", e)
                continue
            if not any(matches(p, msg.topic) for p in patterns):
                continue
            missed = gaps.see(msg.body.src, msg.topic, msg.body.seq)
            emit(Message(msg.topic, msg.body, missed) if missed else msg)
    finally:
        watch.cancel()
        ctx.destroy(0)


async def _refusals(monitor: zmq.asyncio.Socket, sock: zmq.asyncio.Socket, endpoint: str,
                    told: Callable[[], None] | None) -> None:
    """A refused key: say so, then try again every RETRY_S (libzmq gives up after an
    authentication failure), so that `reops keys accept` on the hub lets us in."""
    while True:
        event = parse_monitor_message(await monitor.recv_multipart())
        if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            continue
        if told is not None:
            told()
        else:
            log.warning("bus: the hub refused this subscriber's key; retrying")
        await asyncio.sleep(RETRY_S)  # waiting for an operator, not for an event we get
        with contextlib.suppress(zmq.ZMQError):
            sock.disconnect(endpoint)
        sock.connect(endpoint)


def bus(*topics: str, hub: Path | None = None, keys: tuple[bytes, bytes] | None = None,
        endpoint: str | None = None, server_key: str | None = None) -> Stream:
    """Messages on the hub's bus matching `topics` (all when none) until disposed.

    An endless Stream over no hosts (the messages name them); it keeps no history."""
    for t in topics:
        check_pattern(t)  # a bad pattern fails here, at the call, not in the loop
    settings = load_hub_settings()
    if hub is not None:
        settings = settings.with_(control=str(hub))

    async def pump(emit: Callable[[Message], None]) -> None:
        await messages(topics, emit, settings=settings, endpoint=endpoint,
                       server_key=server_key, keys=keys)

    source = cast(Any, from_async(pump))  # Messages, not Results: filter them with `where`
    return Stream(source, Hosts(), lambda hs: bus(*topics, hub=hub, keys=keys,
                                                  endpoint=endpoint, server_key=server_key),
                  replay=False)
