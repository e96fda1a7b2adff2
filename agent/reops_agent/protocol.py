"""The wire protocol between reops-agent and the hub: msgpack-encoded msgspec Structs.

One ZeroMQ frame carries one message. Every message is a tagged Struct (field `t`) with the
protocol version (field `v`); the hub and the agent refuse other versions. Frames larger
than MAX_MESSAGE are refused before decoding (and libzmq drops peers that send them).

Agent → hub: Hello, Beat, Output, Done, Missing, Tick.
Hub → agent: Welcome, Pending, Refused, Beat, Unknown, Call, Cancel, Schedule, Unschedule.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1

#: largest frame the agent accepts from its hub (the hub's own limit is smaller, configurable)
MAX_MESSAGE = 64 * 1024 * 1024
#: largest frame an agent sends: results are split or cut to fit (the hub refuses more)
MAX_SEND = 3 * 1024 * 1024
#: captured output travels in Output parts of at most this many UTF-8 bytes each
PART_BYTES = 512 * 1024
#: file transfers move in chunks of this size (one call each), whatever the file's size
CHUNK_BYTES = 1024 * 1024
#: longest streamed line; longer lines are cut (the full text is still in Done.out)
MAX_LINE = 64 * 1024
#: captured bytes kept per stream by default: the first half and the last half (the same
#: default and the same text as the SSH transport); what lies between is cut, with a marker
MAX_OUTPUT = 2 * 1024 * 1024
#: the most a caller may ask the agent to keep per stream (max_output)
MAX_OUTPUT_LIMIT = 16 * 1024 * 1024
#: agent names: also file names in the hub's key store
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Stream = Literal["out", "err"]
CallStatus = Literal["ok", "failed", "timeout", "error"]


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


class Msg(msgspec.Struct, tag_field="t", kw_only=True, omit_defaults=True):
    """Base of every message: carries the protocol version."""

    v: int = PROTOCOL_VERSION


def cut_marker(cut: int, stream: Stream) -> str:
    """The line standing in for the bytes left out (the SSH transport's very text)."""
    name = "stdout" if stream == "out" else "stderr"
    return f"\n… [reops: cut {cut} bytes of {name}; raise max_output or set output_spill] …\n"


def _utf8_head_end(data: bytes) -> int:
    """Where `data` ends on a whole UTF-8 character (drops a split one at the end)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b < 0x80:
            return n
        if b >= 0xC0:  # a lead byte: is its character complete?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n if back >= need else n - back
    return n


def _utf8_tail_start(data: bytes) -> int:
    """Where `data` starts on a whole UTF-8 character (skips up to 3 continuation bytes)."""
    i = 0
    while i < min(3, len(data)) and 0x80 <= data[i] < 0xC0:
        i += 1
    return i


def decode_output(head: bytes, tail: bytes, total: int, stream: Stream) -> str:
    """Captured bytes as text, exactly as the SSH transport makes it: UTF-8 with U+FFFD for
    invalid bytes; when bytes were cut, head and tail end on whole characters and a marker
    says how many bytes are missing."""
    if total <= len(head) + len(tail):
        return (head + tail).decode("utf-8", errors="replace")
    head = head[: _utf8_head_end(head)]
    tail = tail[_utf8_tail_start(tail):]
    return (head.decode("utf-8", errors="replace")
            + cut_marker(total - len(head) - len(tail), stream)
            + tail.decode("utf-8", errors="replace"))


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
    """One line of a running call's output, sent in order before its Done.

    With `part`, it is instead a piece of the call's captured output: the hub joins the
    parts of each stream in order and puts them before Done.out / Done.err (so a large
    result never needs one large frame).
    """

    id: int
    stream: Stream = "out"
    text: str = ""
    part: bool = False


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
    import hashlib  # (here: hashlib loads OpenSSL, ~3 MB an idle agent does not need)

    return hashlib.sha256(source.encode()).hexdigest()


def fingerprint(public_key: str) -> str:
    """A short, human-comparable fingerprint of a z85 public key (like salt-key's)."""
    import hashlib

    digest = hashlib.sha256(public_key.encode()).hexdigest()[:32]
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def valid_name(name: str) -> bool:
    """Whether `name` can name an agent (and a key file)."""
    return bool(NAME_PATTERN.match(name))
