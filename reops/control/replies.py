"""Replies on a DEALER socket to the hub, routed to the request that waits for them.

The control client (`reops.control.client`) and the SSH-through-the-hub transport
(`reops.transports.hubssh`) both multiplex requests on one socket: each request waits on a
queue keyed by its id, and a dropped connection must wake every waiter at once instead of
leaving them to hang. One implementation serves both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from reops.control.wire import WireError, decode_reply

if TYPE_CHECKING:
    import zmq.asyncio

log = logging.getLogger("reops.control.replies")

Queues = Mapping[int, "asyncio.Queue[Any]"]


async def route_replies(sock: zmq.asyncio.Socket, queues: Queues) -> None:
    """Forever: each reply to its request's queue; a reply nobody waits for is dropped."""
    while True:
        frame = await sock.recv()
        try:
            reply = decode_reply(frame)
        except WireError as e:
            log.warning("ignoring a bad reply from the hub: %s", e)
            continue
        queue = queues.get(reply.id)
        if queue is not None:
            queue.put_nowait(reply)


async def fail_waiters_when_gone(monitor: zmq.asyncio.Socket, queues: Queues,
                                 gone: Callable[[], BaseException]) -> None:
    """Forever: at each event of `monitor` (its mask says which events mean the hub is
    gone), `gone()` for every waiting request; `gone` also marks the connection as dropped
    (it is called once even when nobody waits). Closes `monitor` when cancelled."""
    try:
        while True:
            await monitor.recv_multipart()
            gone()
            for queue in queues.values():
                queue.put_nowait(gone())
    finally:
        monitor.close(0)
