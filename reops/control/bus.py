"""The bus wire, shared by publishers, the hub's proxy and subscribers (no hub imports).

A bus message is two ZeroMQ frames: `[topic, body]`. The topic is ASCII words joined by
dots, its first word the kind of message:

    result.<op>.<status>.<host>     one Result (host may itself hold dots: it is the rest)
    line.<host>.<stream>            one output Line, when a pipeline streams them
    event.<source>.<kind>           a trigger's or the hub's event (agents, keys, jobs …)
    flow.<name>.<what>              a flow's own news (started, fired, failed, squelched …)

The body is a msgpack map (documented in docs/flows.md, "The bus"): `type` (result,
line, event, flow), `v` (the schema version, VERSION), `src` (the publishing process),
`seq` (per publisher and topic, from 1: a subscriber that sees seq jump by more than one
missed messages), `dropped` (messages this publisher dropped so far), `at` (unix time),
then the type's own fields. Readers ignore fields they do not know, so adding one is not
a new version.
"""

from __future__ import annotations

import fnmatch
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Literal, cast

import msgspec

from reops.core.model import Line, Result, Status, Transport

VERSION = 1
#: the first word of every topic
KINDS = ("result", "line", "event", "flow")
#: largest topic accepted (bytes)
MAX_TOPIC = 512
#: output kept per Result on the bus (the tail: where errors are)
MAX_TEXT = 64 * 1024
_WORD = re.compile(r"[^A-Za-z0-9_:@+\-]")
_TOPIC = re.compile(rb"^(result|line|event|flow)(\.[\x21-\x7e]+)+$")


class BusError(ValueError):
    """A frame that is not a bus message (wrong topic, not the schema)."""


class Body(msgspec.Struct, kw_only=True, tag_field="type", omit_defaults=False):
    """Fields every bus message has."""

    v: int = VERSION
    src: str = ""
    seq: int = 0
    dropped: int = 0
    at: float = 0.0


class ResultBody(Body, tag="result", kw_only=True):
    """A Result (core/model.py): one host, one step."""

    host: str
    op: str
    status: str
    code: int
    out: str = ""
    err: str = ""
    started_at: float = 0.0
    duration_s: float = 0.0
    transport: str = "ssh"
    changed: bool | None = None
    step: int = 0
    data: Any = None

    def to_result(self) -> Result:
        """The core Result again (earlier steps are not on the bus)."""
        return Result(host=self.host, op=self.op, status=cast(Status, self.status),
                      code=self.code, out=self.out, err=self.err, started_at=self.started_at,
                      duration_s=self.duration_s, transport=cast(Transport, self.transport),
                      changed=self.changed, data=self.data)


class LineBody(Body, tag="line", kw_only=True):
    """One line of a host's output."""

    host: str
    stream: Literal["out", "err"]
    text: str


class EventBody(Body, tag="event", kw_only=True):
    """An event: `source` and `kind` are its topic's words, `data` what it carries."""

    source: str
    kind: str
    data: Any = None


class FlowBody(Body, tag="flow", kw_only=True):
    """News of a flow: `flow` and `what` are its topic's words."""

    flow: str
    what: str
    data: Any = None


AnyBody = ResultBody | LineBody | EventBody | FlowBody


class Message(msgspec.Struct, frozen=True):
    """A received bus message: its topic, its decoded body, messages missed before it."""

    topic: str
    body: AnyBody
    missed: int = 0


class Header(msgspec.Struct):
    """The fields the hub reads to vet a body without decoding all of it."""

    type: str
    v: int
    src: str = ""
    seq: int = 0
    dropped: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyBody)
_header = msgspec.msgpack.Decoder(Header)


def word(text: str) -> str:
    """`text` as one topic word: dots and other separators become '_'."""
    return _WORD.sub("_", text) or "_"


def host_words(host: str) -> str:
    """A host name in a topic: its dots stay (it is the topic's last part)."""
    return ".".join(word(w) for w in host.split(".")) or "_"


def _tail(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return "…[cut]\n" + text[-MAX_TEXT:]


def result_body(r: Result) -> ResultBody:
    return ResultBody(host=r.host, op=r.op, status=r.status, code=r.code, out=_tail(r.out),
                      err=_tail(r.err), started_at=r.started_at, duration_s=r.duration_s,
                      transport=r.transport, changed=r.changed, step=r.step,
                      data=plain(r.data))


def plain(data: Any) -> Any:
    """Parsed data as msgpack can carry it (Structs become maps; the rest, text)."""
    try:
        return msgspec.to_builtins(data)
    except (TypeError, msgspec.EncodeError):
        return repr(data)


def to_body(item: Any) -> AnyBody:
    """A pipeline item as a bus body: Result, Line, a Body already, or any event."""
    if isinstance(item, Result):
        return result_body(item)
    if isinstance(item, Line):
        return LineBody(host=item.host, stream=item.stream, text=item.text)
    if isinstance(item, (ResultBody, LineBody, EventBody, FlowBody)):
        return item
    source = getattr(item, "source", None) or getattr(item, "topic", None)
    kind = getattr(item, "kind", None) or getattr(item, "event", None)
    if kind is None and isinstance(getattr(item, "data", None), dict):
        kind = item.data.get("event")
    return EventBody(source=str(source or type(item).__name__.lower()),
                     kind=str(kind or "event"), data=plain(item))


def topic_of(body: AnyBody) -> str:
    """The topic a body is published under (see the module docstring)."""
    match body:
        case ResultBody():
            return f"result.{word(body.op)}.{word(body.status)}.{host_words(body.host)}"
        case LineBody():
            return f"line.{host_words(body.host)}.{body.stream}"
        case EventBody():
            return f"event.{word(body.source)}.{word(body.kind)}"
        case FlowBody():
            return f"flow.{word(body.flow)}.{word(body.what)}"
    raise TypeError(f"not a bus body: {body!r}")


def encode(body: AnyBody) -> bytes:
    return _encoder.encode(body)


def decode(topic: bytes, body: bytes, missed: int = 0) -> Message:
    """A received message; BusError if it is not one."""
    if not valid_topic(topic):
        raise BusError(f"not a bus topic: {topic[:80]!r}")
    try:
        return Message(topic.decode(), _decoder.decode(body), missed)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BusError(f"{topic[:80].decode(errors='replace')}: body is not the bus schema "
                       f"({e})") from None


def header(body: bytes) -> Header:
    """The common fields of a body (what the hub checks); BusError if it has none."""
    try:
        return _header.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BusError(f"body is not the bus schema ({e})") from None


def valid_topic(topic: bytes) -> bool:
    return len(topic) <= MAX_TOPIC and _TOPIC.match(topic) is not None


def source_id() -> str:
    """This process as a publisher: host:pid:start (unique across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time() * 1000) % 10**9}"


# ── topic patterns ─────────────────────────────────────────────────────────────────────


def prefix(pattern: str) -> str:
    """The ZeroMQ subscription for a pattern: its text before the first glob character."""
    cut = len(pattern)
    for ch in "*?[":
        i = pattern.find(ch)
        if i >= 0:
            cut = min(cut, i)
    return pattern[:cut]


def matches(pattern: str, topic: str) -> bool:
    """Whether `topic` matches `pattern`: word by word globs; a shorter pattern matches
    every topic that starts with its words ('result.*.failed' matches
    'result.exec.failed.web1')."""
    want, have = pattern.split("."), topic.split(".")
    if len(want) > len(have):
        return False
    return all(fnmatch.fnmatchcase(h, w) for w, h in zip(want, have, strict=False))


def check_pattern(pattern: str) -> str:
    """`pattern` if it can match a topic; ValueError with the reason otherwise."""
    if not pattern or pattern != pattern.strip() or ".." in pattern or pattern.endswith("."):
        raise ValueError(f"bad topic pattern {pattern!r}: words joined by dots, e.g. "
                         "'result.*.failed' or 'event.hypervisor.*'")
    first = pattern.split(".")[0]
    if not any(fnmatch.fnmatchcase(k, first) for k in KINDS):
        raise ValueError(f"bad topic pattern {pattern!r}: topics start with "
                         f"{', '.join(KINDS)}")
    return pattern


# ── identities ─────────────────────────────────────────────────────────────────────────


def read_keypair(directory: Path, stem: str) -> tuple[bytes, bytes] | None:
    """The z85 (public, secret) pair `stem.key*` in `directory`, if readable."""
    try:
        secret = (directory / f"{stem}.key_secret").read_bytes().strip()
        public = (directory / f"{stem}.key").read_bytes().strip()
    except OSError:
        return None
    return public, secret
