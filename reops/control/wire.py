"""The local control protocol between the hub and its clients (CLI, REPL, flows, services).

A client sends Requests; the hub answers each with any number of `item` replies (streamed
lines, results, events) and then exactly one `done` or `error`. Subscriptions and
schedules stay open until the client sends a `cancel` request naming them.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ReplyKind = Literal["item", "done", "error"]


class Request(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One call on the control socket: a method name and its parameters."""

    id: int
    method: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One answer to request `id`: an item, the final value, or an error message."""

    id: int
    kind: ReplyKind
    value: Any = None


encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
