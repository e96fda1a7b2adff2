"""The local control protocol between the hub and its clients (CLI, REPL, flows, services).

Like the agent wire (`reops_agent.protocol`), every frame is one tagged msgspec Struct:

- a client sends a Request: `Call` (fan a function out to agents), `Schedule` (run one
  every N s), `Subscribe` (events), `Cancel` (end a streaming request), or `Invoke` (any
  other named method: ping, agents, keys.*, and the methods services register), or
  `SshRun` (one command on one host over the hub's warm SSH pool);
- the hub answers request `id` with any number of items — `Item` (a service's plain value)
  or `Update` (a typed `LineItem`, `ResultItem`, `TickItem` or `Event`) — then exactly one
  `Done` or `Error`. A frame that is not a Request gets an `Error` (id 0 when it has none).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from reops.core.model import Host
from reops.core.settings import Settings

# ── requests (client → hub) ────────────────────────────────────────────────────────


class Code(msgspec.Struct, frozen=True, kw_only=True):
    """Shipped Python for a call: one module's source and the function in it."""

    source: str
    function: str
    module: str = "shipped"


class Request(msgspec.Struct, tag_field="t", kw_only=True, omit_defaults=True):
    """Base of every request: the id its replies carry (unique per client connection)."""

    id: int


class Invoke(Request, tag="invoke"):
    """A named method with plain parameters (built-ins such as ping, and services')."""

    method: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class Call(Request, tag="call"):
    """Run `fn` (a built-in name, or `code`) once on each agent of `hosts`."""

    hosts: list[str]
    fn: str = ""
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: float | None = None
    stream: bool = False  # send output lines (LineItem) as they come
    code: Code | None = None


class Schedule(Request, tag="schedule"):
    """Run `fn` every `every` seconds on each agent of `hosts` until cancelled."""

    hosts: list[str]
    every: float
    fn: str = ""
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: float | None = None
    code: Code | None = None


class Subscribe(Request, tag="subscribe"):
    """Events whose topic starts with one of `topics` (all when empty) until cancelled."""

    topics: list[str] = msgspec.field(default_factory=list)


class Cancel(Request, tag="cancel"):
    """End the streaming request `target` of this client (no reply)."""

    target: int


class SshRun(Request, tag="ssh.run"):
    """Run one shell command on one host over the hub's warm SSH pool (`reops exec` while a
    hub runs). Everything that varies per CLI call travels here: the host as the CLI's
    inventory has it, its settings (user, key, known_hosts, policy, timeouts, output cap),
    and the final command (sudo/become already applied). The hub judges only `ok_codes`;
    the caller's Op parses the output, so parsers never cross the wire."""

    host: Host
    op: str
    command: str
    settings: Settings
    ok_codes: list[int] = msgspec.field(default_factory=lambda: [0])
    stdin: str | None = None
    timeout: float | None = None
    lines: bool = False  # send output lines (LineItem) as they come, in order per host
    agent: str | None = None  # the caller's SSH_AUTH_SOCK (the hub uses its own: see docs)


AnyRequest = Invoke | Call | Schedule | Subscribe | Cancel | SshRun

#: request kinds that have their own Struct; every other method name travels as Invoke
TYPED: dict[str, type[Call | Schedule | Subscribe]] = {
    "call": Call, "schedule": Schedule, "subscribe": Subscribe}

# ── items (what a streaming request yields) ────────────────────────────────────────


class Piece(msgspec.Struct, tag_field="k", kw_only=True):
    """Base of the typed items; `k` names the kind on the wire (`{"k": "line", ...}`)."""


class LineItem(Piece, tag="line"):
    """One output line of a streaming call."""

    host: str
    stream: Literal["out", "err"]
    text: str


class ResultItem(Piece, tag="result"):
    """One host's finished call (code -1 when it never completed on its agent)."""

    host: str
    status: str
    code: int
    out: str
    err: str
    started_at: float
    duration_s: float
    data: Any


class TickItem(Piece, tag="tick"):
    """One host's scheduled run; `dropped` results were lost while the hub was away."""

    host: str
    seq: int
    dropped: int
    status: str
    code: int
    out: str
    err: str
    started_at: float
    duration_s: float
    data: Any


class Event(Piece, tag="event"):
    """A published event (registry, keys, services' topics)."""

    topic: str
    data: Any


AnyPiece = LineItem | ResultItem | TickItem | Event

# ── replies (hub → client) ─────────────────────────────────────────────────────────


class Reply(msgspec.Struct, tag_field="t", kw_only=True, omit_defaults=True):
    """Base of every reply: the id of the request it answers."""

    id: int


class Item(Reply, tag="item"):
    """A plain item (services' streams)."""

    value: Any = None


class Update(Reply, tag="update"):
    """A typed item: a line, a result, a tick or an event."""

    item: AnyPiece


class Done(Reply, tag="done"):
    """The request's final value; nothing follows."""

    value: Any = None


class Error(Reply, tag="error"):
    """Why the request failed (or why a frame was refused); nothing follows."""

    message: str


AnyReply = Item | Update | Done | Error


class WireError(ValueError):
    """A frame that is not a valid message of the control protocol."""


encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(AnyRequest)
_reply_decoder = msgspec.msgpack.Decoder(AnyReply)


def _decode(decoder: msgspec.msgpack.Decoder[Any], frame: bytes) -> Any:
    try:
        return decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise WireError(f"malformed control message: {e}") from None
    except Exception as e:  # msgspec may raise others on adversarial input
        raise WireError(f"malformed control message: {type(e).__name__}: {e}") from None


def decode_request(frame: bytes) -> AnyRequest:
    """A Request from a client's frame; WireError (with the reason) when it is not one."""
    try:
        msg: AnyRequest = _decode(_request_decoder, frame)
    except WireError as e:
        raise WireError(f"{e} (a request is a map tagged t: invoke, call, schedule, "
                        "subscribe, cancel or ssh.run)") from None
    return msg


def decode_reply(frame: bytes) -> AnyReply:
    """A Reply from the hub's frame; WireError when it is not one."""
    msg: AnyReply = _decode(_reply_decoder, frame)
    return msg


def request_id(frame: bytes) -> int:
    """The id a malformed frame claims (so its Error reaches the waiting caller), else 0."""
    try:
        raw = msgspec.msgpack.decode(frame)
    except Exception:
        return 0
    rid = raw.get("id") if isinstance(raw, dict) else None
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else 0


def make_request(rid: int, method: str, params: dict[str, Any]) -> AnyRequest:
    """The typed request for `method(**params)`; WireError when the params do not fit."""
    kind = TYPED.get(method)
    if kind is None:
        return Invoke(id=rid, method=method, params=params)
    try:
        return msgspec.convert({**params, "id": rid}, kind, strict=False)
    except msgspec.ValidationError as e:
        raise WireError(f"bad {method} request: {e}") from None

