"""The hub's control socket from blocking code (the CLI): one request, its replies, no
event loop — so a one-shot command (`reops exec --via agent`) never imports asyncio.

The exceptions are the control client's too (`reops.control.client` re-exports them):
HubNotRunning says in one line that no hub answers and how to start one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from reops.control.settings import load_hub_settings
from reops.control.wire import Error, Item, Update, WireError, decode_reply, encoder, make_request

#: how long to wait for a hub to answer its first ping before saying it is not running
CONNECT_TIMEOUT = 3.0


class HubNotRunning(ConnectionError):
    """No hub answers on the control socket."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no reops hub is running (control socket {path}); "
                         "start one with `reops hub`")


class HubGone(ConnectionError):
    """The hub went away while a request was in progress."""


class HubError(RuntimeError):
    """The hub answered a request with an error (its message is the text)."""


def default_path() -> Path:
    return load_hub_settings().control_path


def request_sync(path: Path | None, method: str, params: dict[str, Any] | None = None, *,
                 timeout: float = CONNECT_TIMEOUT,
                 on_item: Callable[[Any], None] | None = None, wait: bool = False) -> Any:
    """One request from blocking code; `timeout` bounds the wait for each reply.

    `on_item` gets each item: a service's plain value, or a typed item (LineItem, ...).

    With `wait`, a hub that is still starting (no socket yet) is waited for, up to `timeout`.
    """
    path = path or default_path()
    if not wait and not path.exists():
        raise HubNotRunning(path)
    try:
        frame = encoder.encode(make_request(1, method, params or {}))
    except WireError as e:
        raise HubError(str(e)) from None
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{path}")
        sock.send(frame)
        while True:
            if not sock.poll(int(timeout * 1000)):
                raise HubNotRunning(path)
            try:
                reply = decode_reply(sock.recv())
            except WireError as e:
                raise HubError(f"bad reply from the hub: {e}") from None
            if isinstance(reply, (Item, Update)):
                if on_item is not None:
                    on_item(reply.value if isinstance(reply, Item) else reply.item)
            elif isinstance(reply, Error):
                raise HubError(reply.message)
            else:
                return reply.value
    finally:
        sock.close(0)
        ctx.term()


def ping_sync(path: Path | None = None, timeout: float = CONNECT_TIMEOUT,
              wait: bool = False) -> dict[str, Any]:
    """The hub's ping answer (pid, key, bind, agent count) or HubNotRunning."""
    info: dict[str, Any] = request_sync(path, "ping", timeout=timeout, wait=wait)
    return info
