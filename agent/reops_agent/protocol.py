"""The wire protocol between reops-agent and the hub: msgpack-encoded msgspec Structs.

One ZeroMQ frame carries one message. Every message is a tagged Struct (field `t`) with the
protocol version (field `v`); the hub and the agent refuse other versions. Frames larger
than MAX_MESSAGE are refused before decoding (and libzmq drops peers that send them).

Agent → hub: Hello, Beat, Output, Done, Missing, Tick.
Hub → agent: Welcome, Pending, Refused, Beat, Unknown, Call, Cancel, Schedule, Unschedule.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1

#: largest frame either side accepts (file contents travel in one frame)
MAX_MESSAGE = 64 * 1024 * 1024
#: longest streamed line; longer lines are cut (the full text is still in Done.out)
MAX_LINE = 64 * 1024
#: most captured stdout/stderr kept per call; the rest is cut with a marker
MAX_OUTPUT = 16 * 1024 * 1024
#: agent names: also file names in the hub's key store
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Stream = Literal["out", "err"]
CallStatus = Literal["ok", "failed", "timeout", "error"]


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


class Msg(msgspec.Struct, tag_field="t", kw_only=True, omit_defaults=True):
    """Base of every message: carries the protocol version."""

    v: int = PROTOCOL_VERSION


# ── agent → hub ───────────────────────────────────────────────────────────────────────


class Hello(Msg, tag="hello", kw_only=True):
    """Registration: who the agent is; sent on connect and whenever the hub forgot it."""

    name: str
    hostname: str = ""
    os: str = ""
    python: str = ""
    version: str = ""
    pid: int = 0
    allow_code: bool = False
    functions: list[str] = msgspec.field(default_factory=list)
    started_at: float = 0.0


class Beat(Msg, tag="beat", kw_only=True):
    """Heartbeat, both ways; the agent's carries its load."""

    running: int = 0
    load: float = 0.0
    dropped: int = 0


class Output(Msg, tag="out", kw_only=True):
    """One line of a running call's output, sent in order before its Done."""

    id: int
    stream: Stream = "out"
    text: str = ""


class Done(Msg, tag="done", kw_only=True):
    """A call's result; exactly one per Call (or per schedule run inside a Tick)."""

    id: int
    status: CallStatus
    code: int
    out: str = ""
    err: str = ""
    started_at: float = 0.0
    duration_s: float = 0.0
    data: Any = None


class Missing(Msg, tag="missing", kw_only=True):
    """The agent lacks the shipped code a Call referenced by hash; the hub resends it."""

    id: int
    hash: str


class Tick(Msg, tag="tick", kw_only=True):
    """One run of a schedule; `dropped` counts runs lost while the hub was away."""

    schedule: int
    seq: int
    dropped: int = 0
    result: Done


# ── hub → agent ───────────────────────────────────────────────────────────────────────


class Welcome(Msg, tag="welcome", kw_only=True):
    """Registration accepted; the hub's heartbeat policy applies from now on."""

    heartbeat_s: float
    misses: int
    hub: str = ""


class Pending(Msg, tag="pending", kw_only=True):
    """The agent's key awaits acceptance (`reops keys accept NAME`); no service until then."""

    fingerprint: str = ""
    heartbeat_s: float = 0.0  # how often to ask again


class Refused(Msg, tag="refused", kw_only=True):
    """The hub will not serve this agent (rejected key, name taken by another key)."""

    reason: str = ""


class Unknown(Msg, tag="unknown", kw_only=True):
    """The hub does not know this connection (it restarted): register again."""


class CodeRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Shipped Python: a module's source (omitted once the agent has it) and a function."""

    hash: str
    function: str
    source: str | None = None
    module: str = "shipped"


class Call(Msg, tag="call", kw_only=True):
    """Run function `fn` (a built-in name, or `code` when shipped) with a timeout."""

    id: int
    fn: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: float | None = None
    stream: bool = False
    code: CodeRef | None = None


class Cancel(Msg, tag="cancel", kw_only=True):
    """Stop a running call (its Done still comes, with status error)."""

    id: int


class Schedule(Msg, tag="schedule", kw_only=True):
    """Run a function every `every` seconds and send each result as a Tick."""

    id: int
    fn: str
    every: float
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: float | None = None
    code: CodeRef | None = None


class Unschedule(Msg, tag="unschedule", kw_only=True):
    """Stop a schedule."""

    id: int


AgentMsg = Hello | Beat | Output | Done | Missing | Tick
HubMsg = Welcome | Pending | Refused | Beat | Unknown | Call | Cancel | Schedule | Unschedule

_encoder = msgspec.msgpack.Encoder()
_agent_decoder = msgspec.msgpack.Decoder(AgentMsg)
_hub_decoder = msgspec.msgpack.Decoder(HubMsg)


def encode(msg: Msg) -> bytes:
    """One frame for `msg`."""
    return _encoder.encode(msg)


def _decode(decoder: msgspec.msgpack.Decoder[Any], frame: bytes) -> Any:
    if len(frame) > MAX_MESSAGE:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_MESSAGE}")
    try:
        msg = decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError(f"bad frame: {e}") from None
    except Exception as e:  # msgspec may raise others on adversarial input
        raise ProtocolError(f"bad frame: {type(e).__name__}: {e}") from None
    if msg.v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {msg.v}, expected {PROTOCOL_VERSION}")
    return msg


def decode_agent(frame: bytes) -> AgentMsg:
    """A message the hub received from an agent; ProtocolError when it is not one."""
    msg: AgentMsg = _decode(_agent_decoder, frame)
    if isinstance(msg, Hello) and not NAME_PATTERN.match(msg.name):
        raise ProtocolError(f"invalid agent name {msg.name[:40]!r}")
    return msg


def decode_hub(frame: bytes) -> HubMsg:
    """A message the agent received from the hub; ProtocolError when it is not one."""
    msg: HubMsg = _decode(_hub_decoder, frame)
    return msg


def code_hash(source: str) -> str:
    """The cache key of shipped module source."""
    return hashlib.sha256(source.encode()).hexdigest()


def fingerprint(public_key: str) -> str:
    """A short, human-comparable fingerprint of a z85 public key (like salt-key's)."""
    digest = hashlib.sha256(public_key.encode()).hexdigest()[:32]
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def valid_name(name: str) -> bool:
    """Whether `name` can name an agent (and a key file)."""
    return bool(NAME_PATTERN.match(name))
