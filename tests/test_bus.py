"""The bus wire without a network: topics, the msgpack schema, patterns, gap detection."""

from __future__ import annotations

import msgspec
import pytest

from reops.control.bus import (
    VERSION,
    BusError,
    EventBody,
    FlowBody,
    ResultBody,
    check_pattern,
    decode,
    encode,
    matches,
    prefix,
    to_body,
    topic_of,
)
from reops.core.model import Line, Result
from reops.streams.bus import Gaps


def test_a_result_becomes_the_documented_topic_and_plain_msgpack() -> None:
    r = Result(host="web1.example.com", op="exec", status="failed", code=3, out="o\n",
               err="boom\n", started_at=1.5, duration_s=0.25, transport="ssh", changed=False)
    body = to_body(r)
    assert topic_of(body) == "result.exec.failed.web1.example.com"
    plain = msgspec.msgpack.decode(encode(body))  # what any msgpack reader gets
    assert plain["type"] == "result" and plain["v"] == VERSION
    assert {k: plain[k] for k in ("host", "op", "status", "code", "out", "err",
                                  "started_at", "duration_s", "transport", "changed",
                                  "step")} == {
        "host": "web1.example.com", "op": "exec", "status": "failed", "code": 3,
        "out": "o\n", "err": "boom\n", "started_at": 1.5, "duration_s": 0.25,
        "transport": "ssh", "changed": False, "step": 0}
    back = decode(b"result.exec.failed.web1.example.com", encode(body)).body
    assert isinstance(back, ResultBody) and back.to_result().err == "boom\n"


def test_op_names_with_separators_stay_one_word() -> None:
    body = to_body(Result(host="h", op="files.cp", status="ok", code=0))
    assert topic_of(body) == "result.files_cp.ok.h"
    line = to_body(Line("h", "err", "x"))
    assert topic_of(line) == "line.h.err"
    assert topic_of(FlowBody(flow="setup", what="fired")) == "flow.setup.fired"
    assert topic_of(EventBody(source="hypervisor", kind="started")) == \
        "event.hypervisor.started"


def test_big_output_keeps_its_tail() -> None:
    body = to_body(Result(host="h", op="exec", status="ok", code=0, out="a" * 10**6 + "END"))
    assert isinstance(body, ResultBody)
    assert len(body.out) < 70_000 and body.out.endswith("END")


@pytest.mark.parametrize(("pattern", "topic", "hit"), [
    ("result.*.failed", "result.exec.failed.web1", True),
    ("result.*.failed", "result.exec.ok.web1", False),
    ("event.hypervisor.*", "event.hypervisor.started", True),
    ("event.hypervisor.*", "event.agents.lost", False),
    ("result", "result.exec.ok.web1.example.com", True),
    ("result.exec.ok.web*", "result.exec.ok.web1.example.com", True),
    ("*", "flow.setup.fired", True),
    ("result.exec", "result.execute.ok.h", False),
])
def test_patterns_are_word_globs_matching_longer_topics(pattern: str, topic: str,
                                                        hit: bool) -> None:
    assert matches(pattern, topic) is hit
    if hit:  # ZeroMQ's prefix filter never hides what the glob wants
        assert topic.startswith(prefix(pattern))


def test_subscription_prefixes() -> None:
    assert prefix("result.*.failed") == "result."
    assert prefix("result.exec.ok.web*") == "result.exec.ok.web"
    assert prefix("*") == ""


@pytest.mark.parametrize("bad", ["", "results.*", "result..x", "result.", " result"])
def test_bad_patterns_say_why(bad: str) -> None:
    with pytest.raises(ValueError, match="bad topic pattern"):
        check_pattern(bad)


@pytest.mark.parametrize(("topic", "body"), [
    (b"nonsense", encode(FlowBody(flow="f", what="w"))),
    (b"result.exec.ok.h", b"\xc1\xc1 not msgpack"),
    (b"result.exec.ok.h", msgspec.msgpack.encode({"type": "result", "v": 1})),
    (b"result.exec.ok.h", msgspec.msgpack.encode([1, 2, 3])),
])
def test_garbage_is_a_bus_error(topic: bytes, body: bytes) -> None:
    with pytest.raises(BusError):
        decode(topic, body)


def test_gaps_count_missed_messages_per_publisher_and_topic() -> None:
    gaps = Gaps(kept=2)
    assert [gaps.see("p", "t", s) for s in (1, 2, 5, 6)] == [0, 0, 2, 0]
    assert gaps.see("q", "t", 10) == 0  # a new publisher: where it starts is not a gap
    assert gaps.see("p", "t", 1) == 0  # a restarted one neither
    assert gaps.missed == 2
    gaps.see("r", "t", 1)  # beyond `kept` topics the oldest is forgotten: bounded memory
    assert len(gaps.last) == 2
