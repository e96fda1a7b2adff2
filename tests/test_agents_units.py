"""Agent pieces without a network: protocol (fuzzed), key store, functions, shipped code."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reops_agent.cancel import Cancelled, Token
from reops_agent.functions import REFUSED_CODE, Runner
from reops_agent.protocol import (
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    Beat,
    Call,
    CodeRef,
    Done,
    Hello,
    Output,
    ProtocolError,
    Tick,
    code_hash,
    decode_agent,
    decode_hub,
    encode,
)

from reops.hub.keystore import KeyStore
from reops.hub.zap import decide

VALID = [
    encode(Hello(name="web1", hostname="h", pid=3, functions=["shell"])),
    encode(Beat(running=2, load=0.5)),
    encode(Output(id=7, stream="err", text="x")),
    encode(Done(id=7, status="ok", code=0, out="o", data={"a": [1, 2]})),
    encode(Tick(schedule=1, seq=2, result=Done(id=0, status="ok", code=0))),
]


def test_roundtrip_and_version() -> None:
    msg = decode_agent(VALID[3])
    assert isinstance(msg, Done) and msg.data == {"a": [1, 2]} and msg.v == PROTOCOL_VERSION
    call = Call(id=1, fn="shell", args=["uname"], code=CodeRef(hash="h", function="f"))
    assert decode_hub(encode(call)) == call
    with pytest.raises(ProtocolError, match="version"):
        decode_agent(encode(Beat(v=PROTOCOL_VERSION + 1)))
    with pytest.raises(ProtocolError, match="invalid agent name"):
        decode_agent(encode(Hello(name="../etc/passwd")))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_agent(b"\x00" * (MAX_MESSAGE + 1))
    with pytest.raises(ProtocolError):  # a hub message is not an agent message
        decode_agent(encode(call))


def _decodes_or_refuses(frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_agent(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_decoder_fuzz_random(frame: bytes) -> None:
    _decodes_or_refuses(frame)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_decoder_fuzz_truncated_and_flipped(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame)))
    _decodes_or_refuses(frame[:cut])
    pos = data.draw(st.integers(0, len(frame) - 1))
    byte = data.draw(st.integers(0, 255))
    _decodes_or_refuses(frame[:pos] + bytes([byte]) + frame[pos + 1:])


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
                    | st.text(max_size=20)
                    | st.binary(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c,
                                                                        max_size=4),
                    max_leaves=20))
def test_decoder_fuzz_wrong_shapes(value: object) -> None:
    _decodes_or_refuses(msgspec.msgpack.encode(value))
    _decodes_or_refuses(msgspec.msgpack.encode({"t": "hello", "v": 1, "name": value}))
    _decodes_or_refuses(msgspec.msgpack.encode({"t": "done", "v": value, "id": 1}))


def test_keystore_flow(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys")
    assert len(keys.hub_public_key()) == 40
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert keys.add_pending("web1", "K" * 40) == "new"
    assert keys.add_pending("web1", "K" * 40) == "same"
    assert [e.state for e in keys.entries()] == ["pending"]
    assert keys.accept("web1").state == "accepted" and keys.accepted_key("web1") == "K" * 40
    assert keys.reject("web1").state == "rejected" and keys.is_rejected("K" * 40)
    assert keys.accepted_key("web1") is None
    keys.delete("web1")
    assert keys.get("web1") is None and not keys.is_rejected("K" * 40)
    with pytest.raises(KeyError):
        keys.accept("nobody")
    with pytest.raises(ValueError):
        keys.add_pending("../x", "K" * 40)
    keys.add_pending("a", "A" * 40)
    keys.add_pending("b", "B" * 40)
    assert {e.name for e in keys.accept_all_pending()} == {"a", "b"}


def test_zap_decisions(tmp_path: Path) -> None:
    import zmq

    keys = KeyStore(tmp_path / "keys")
    keys.ensure()
    public, _ = zmq.curve_keypair()
    raw = zmq.utils.z85.decode(public)
    req = [b"1.0", b"7", b"reops", b"127.0.0.1", b"", b"CURVE", raw]
    assert decide(req, keys)[2:5] == [b"200", b"OK", public]
    (tmp_path / "keys" / "rejected" / "bad").write_text(public.decode())
    assert decide(req, keys)[2] == b"400"
    assert decide([b"1.0", b"8", b"", b"", b"", b"NULL"], keys)[2] == b"400"
    assert decide([b"1.0"], keys)[2] == b"400"


# ── functions, run in-process ────────────────────────────────────────────────────────


def test_shell_streams_lines_in_order() -> None:
    runner = Runner()
    seen: list[tuple[str, str]] = []

    def emit(stream: str, text: str) -> None:
        seen.append((stream, text))

    done = runner.run(1, "shell", ["for i in $(seq 1 300); do echo l$i; done; "
                                   "echo e >&2; printf tail; exit 4"], {}, emit=emit)
    assert done.status == "failed" and done.code == 4
    outs = [t for s, t in seen if s == "out"]
    assert outs == [f"l{i}" for i in range(1, 301)] + ["tail"]
    assert ("err", "e") in seen and done.out.endswith("l300\ntail")


def _gone(pgid: int, within: float = 30.0) -> bool:
    """Whether process group `pgid` has no process left (polled up to `within` s)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_timeout_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    done = Runner().run(1, "shell", [f"echo $$ > {pid_file}; sleep 30"], {}, timeout=0.5)
    assert done.status == "timeout" and done.code == -1 and "0.5 s" in done.err
    assert _gone(int(pid_file.read_text()))  # the shell and its sleep: the whole group


def test_stdin_is_written_while_output_is_read() -> None:
    data = "x" * (1024 * 1024) + "\n"  # far beyond a pipe's buffer, both ways
    done = Runner().run(1, "shell", ["cat"], {"stdin": data}, timeout=60)
    assert done.status == "ok" and len(done.out) == len(data)


def test_a_cancelled_call_kills_its_command_and_says_so(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    runner, token = Runner(), Token()
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(runner.run(1, "shell", [f"echo $$ > {pid_file}; sleep 30"], {},
                                      token=token))
        except Cancelled as e:
            outcome.append(e)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.01)
    token.cancel()
    worker.join(30)
    assert not worker.is_alive() and isinstance(outcome[0], Cancelled)
    assert _gone(int(pid_file.read_text()))
    assert runner.running == 0  # its slot is free again


def test_concurrency_is_bounded() -> None:
    runner = Runner(concurrency=2)
    peak = 0
    workers = [threading.Thread(target=runner.run, args=(1, "shell", ["sleep 0.2"], {}))
               for _ in range(5)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        peak = max(peak, runner.running)
        time.sleep(0.005)
    assert peak == 2 and runner.running == 0


SHIPPED = """
import os

def add(a, b):
    return a + b

def boom():
    raise RuntimeError("kaboom")

async def pid():
    return os.getpid()
"""


def test_shipped_code_refused_then_run_and_errors() -> None:
    ref = CodeRef(hash=code_hash(SHIPPED), function="add", source=SHIPPED)
    refused = Runner().run(1, "add", [1, 2], {}, code=ref)
    assert refused.status == "error" and refused.err == REFUSED_CODE
    runner = Runner(allow_code=True)
    ok = runner.run(1, "add", [1, 2], {}, code=ref)
    assert ok.status == "ok" and ok.data == 3
    cached = CodeRef(hash=ref.hash, function="boom")  # by hash only: the cache has it
    err = runner.run(2, "boom", [], {}, code=cached)
    assert err.status == "error" and "RuntimeError: kaboom" in err.err and "Traceback" in err.err
    forged = CodeRef(hash="0" * 64, function="add", source=SHIPPED)
    assert "does not match" in (runner.run(3, "add", [1, 2], {}, code=forged)).err
    # an `async def` gets an event loop of its own (the agent itself runs none)
    coro = runner.run(4, "pid", [], {}, code=CodeRef(hash=ref.hash, function="pid"))
    assert coro.status == "ok" and coro.data == os.getpid()


def test_builtins(tmp_path: Path) -> None:
    runner = Runner()
    facts = runner.run(1, "facts", [], {})
    assert facts.status == "ok" and facts.data["hardware"]["cpus"] >= 1
    assert facts.data["os"]["kernel_release"]
    m = runner.run(1, "metrics", [], {})
    assert set(m.data) >= {"cpu", "memory", "load", "disks", "net", "entropy"}
    assert 0 <= m.data["cpu"]["busy_pct"] <= 100 and m.data["memory"]["total"] > 0
    bad = runner.run(1, "metrics", ["gpu"], {})
    assert bad.status == "error" and "unknown metrics" in bad.err
    target = tmp_path / "d" / "f.txt"
    w = runner.run(1, "file.write", [str(target), b"hello"], {"mode": 0o600})
    assert w.data["changed"] and target.read_bytes() == b"hello"
    assert not (runner.run(1, "file.write", [str(target), b"hello"], {})).data["changed"]
    r = runner.run(1, "file.read", [str(target)], {})
    assert r.data["content"] == b"hello" and r.data["mode"] == 0o600
    assert (runner.run(1, "nope", [], {})).status == "error"
