"""What an agent function gives back, and how a result fits the hub's message limit.

The hub refuses frames larger than its limit (a few MiB), so a call's result is budgeted
here: captured output travels as ordered Output parts before a small Done, and data too
large for one frame becomes a clear error instead of a frame the hub would drop.
"""

from __future__ import annotations

from typing import Any

import msgspec

from reops_agent.protocol import MAX_SEND, PART_BYTES, CallStatus, Done, Msg, Output, Tick

#: characters per part: at most 4 UTF-8 bytes each, so a part stays within PART_BYTES
_PART_CHARS = PART_BYTES // 4
_encoder = msgspec.msgpack.Encoder()


class FnResult(msgspec.Struct, frozen=True, kw_only=True):
    """A function's outcome: status and exit code as a shell command would have them.

    (A msgspec Struct, not a dataclass: `dataclasses` imports `inspect`, ~1 MB.)"""

    status: CallStatus = "ok"
    code: int = 0
    out: str = ""
    err: str = ""
    data: Any = None


def value(data: Any, out: str = "") -> FnResult:
    """A successful result carrying `data` (and optional text)."""
    return FnResult(status="ok", code=0, out=out, data=data)


def _too_big(done: Done) -> Done | None:
    """`done` with its data replaced by an error when the frame would exceed MAX_SEND."""
    size = len(_encoder.encode(done))
    if size <= MAX_SEND:
        return None
    return Done(id=done.id, status="error", code=1, out="", started_at=done.started_at,
                duration_s=done.duration_s,
                err=f"{done.err}result of {size} bytes exceeds the agent's message limit of "
                    f"{MAX_SEND} bytes: return less data (or write a file and download it)")


def messages(done: Done) -> list[Msg]:
    """The frames that carry `done` to the hub: Output parts (if large), then the Done."""
    if len(done.out) + len(done.err) <= _PART_CHARS:
        return [_too_big(done) or done]
    parts: list[Msg] = []
    for stream, text in (("out", done.out), ("err", done.err)):
        for i in range(0, len(text), _PART_CHARS):
            parts.append(Output(id=done.id, stream=stream,  # type: ignore[arg-type]
                                text=text[i : i + _PART_CHARS], part=True))
    bare = Done(id=done.id, status=done.status, code=done.code, started_at=done.started_at,
                duration_s=done.duration_s, data=done.data)
    checked = _too_big(bare)
    return [checked] if checked is not None else [*parts, bare]


def fit_tick(tick: Tick) -> Tick:
    """A schedule result cut to one frame (ticks travel alone: no parts)."""
    if len(_encoder.encode(tick)) <= MAX_SEND:
        return tick
    r = tick.result
    keep = _PART_CHARS

    def cut(text: str) -> str:
        return text if len(text) <= keep else text[:keep] + f"\n[... {len(text) - keep} " \
            "characters cut ...]\n"

    small = Done(id=r.id, status=r.status, code=r.code, out=cut(r.out), err=cut(r.err),
                 started_at=r.started_at, duration_s=r.duration_s, data=r.data)
    small = _too_big(small) or small
    return Tick(schedule=tick.schedule, seq=tick.seq, dropped=tick.dropped, result=small)
