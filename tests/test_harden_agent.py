"""Partial failure over agents (issue 8): lost vs unreachable, stdin, big results, deadlines.

Real `reops hub` and `reops-agent` processes on loopback with CurveZMQ. The shared hub beats
every HEARTBEAT s, so anything noticed well inside that was noticed from the connection,
not from missed heartbeats; tests assert that by ordering (a bounded wait shorter than the
heartbeat window), never by wall-clock margins.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reops_agent.protocol import cut_marker

from reops.control.client import HubClient
from reops.control.wire import LineItem, ResultItem
from reops.core.model import Host, Line
from reops.core.settings import Settings
from reops.lab.agents import (
    LabAgents,
    LabHub,
    await_agents,
    start_agents,
    start_hub,
    wait_for_agents,
)
from reops.ops.base import Op
from reops.transports.agent import AgentExecutor

HEARTBEAT = 20.0  # long on purpose: a quick answer cannot come from a heartbeat miss
MISSES = 3
AGENT_FLAGS = ["--reconnect-max", "0.3"]
MIB = 1024 * 1024


def _agents(hub: LabHub, names: list[str], root: Path, **kw: Any) -> LabAgents:
    return start_agents(names, hub.bind, hub.key, hub.keys_dir, workdir=root / "agents",
                        extra=AGENT_FLAGS, **kw)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabHub, Path]]:
    root = tmp_path_factory.mktemp("harden")
    with start_hub(root / "home", heartbeat_s=HEARTBEAT, misses=MISSES,
                   call_grace_s=1.0) as hub, _agents(hub, ["h1", "h2"], root), \
            _agents(hub, ["c1", "c2"], root, allow_code=True):
        wait_for_agents(hub.control_path, ["h1", "h2", "c1", "c2"])
        yield hub, root


@pytest.fixture
async def client(fleet: tuple[LabHub, Path]) -> AsyncIterator[HubClient]:
    c = HubClient(fleet[0].control_path)
    yield c
    await c.close()


async def call(client: HubClient, **params: Any) -> dict[str, ResultItem]:
    """Results by host of one hub call."""
    results: dict[str, ResultItem] = {}
    async for item in client.pieces("call", **params):
        if isinstance(item, ResultItem):
            results[item.host] = item
    return results


def host(name: str) -> Host:
    return Host(name=name, address="127.0.0.1")


# ── 15: stdin is written while output is read; slots are always released ─────────────


async def test_cat_with_a_megabyte_of_stdin_twenty_times(client: HubClient) -> None:
    """More calls than the agent's 16 slots: each must finish, none may wedge a slot."""
    text = (string.ascii_letters + string.digits + "\n") * (MIB // 63 + 1)
    text = text[:MIB]  # 1 MiB: within the default max_output, kept whole
    runs = [call(client, hosts=["h1"], fn="shell", args=["cat"], kwargs={"stdin": text},
                 timeout=120) for _ in range(20)]
    results = await asyncio.gather(*runs)
    assert [r["h1"].status for r in results] == ["ok"] * 20
    assert all(r["h1"].out == text for r in results)
    info = await client.request("ping")
    assert info["calls"] == 0  # nothing left in flight on the hub


# ── 16: big results come back bounded, as over SSH; nothing stuck in the hub ─────────

BIG = 12_000_000
BIG_COMMAND = (f"head -c {BIG} /dev/zero | tr '\\0' '\\377'; "
               f"head -c {BIG} /dev/zero | tr '\\0' '\\377' >&2")


async def test_big_output_is_cut_with_a_marker_on_two_agents(client: HubClient) -> None:
    results = await call(client, hosts=["h1", "h2"], fn="shell", args=[BIG_COMMAND])
    # 1 MiB head and tail; the head's last 0xFF looks like a split character and is cut too
    head, tail = MIB - 1, MIB
    for name in ("h1", "h2"):
        r = results[name]
        assert (r.status, r.code) == ("ok", 0)
        for stream, text in (("out", r.out), ("err", r.err)):
            marker = cut_marker(BIG - head - tail, stream)
            assert text == "\ufffd" * head + marker + "\ufffd" * tail
            assert "raise max_output" in marker
    assert (await client.request("ping"))["calls"] == 0


def test_big_output_text_is_the_same_over_ssh_and_agents(
        fleet: tuple[LabHub, Path], lab_factory: Callable[..., Any]) -> None:
    from reops.streams.source import source
    from reops.streams.stream import run

    lab_hosts = lab_factory(hosts=1).info.as_hosts()
    op = Op(name="exec", command=BIG_COMMAND)
    over_ssh = run(source(lab_hosts, op, via="ssh")).results[0]

    async def over_agent() -> Any:
        ex = AgentExecutor(fleet[0].control_path)
        try:
            return await ex.run(host("h1"), op, Settings())
        finally:
            await ex.close()

    agent = asyncio.run(over_agent())
    assert (over_ssh.status, agent.status) == ("ok", "ok")
    assert agent.out == over_ssh.out and agent.err == over_ssh.err
    assert len(agent.out) < 3 * MIB


# ── 2 and 16: a call that was sent and then lost its agent or hub is "lost" ───────────


async def test_agent_killed_mid_call_is_lost_from_the_disconnect(
        fleet: tuple[LabHub, Path], client: HubClient) -> None:
    hub, root = fleet
    with _agents(hub, ["k1"], root) as lab:
        await await_agents(hub.control_path, ["k1"])
        stream = client.pieces("call", hosts=["k1"], fn="shell", stream=True,
                               args=["echo started; sleep 60"])
        result: ResultItem | None = None
        # bounded by one heartbeat interval: a heartbeat miss needs MISSES of them
        async with asyncio.timeout(HEARTBEAT):
            async for item in stream:
                match item:
                    case LineItem():
                        lab.kill("k1")
                    case ResultItem():
                        result = item
        assert result is not None and (result.status, result.code) == ("lost", -1)
        assert "connection dropped during the call" in result.err
        assert "may have run" in result.err


async def test_hub_killed_mid_call_gives_lost_while_the_command_still_runs(
        tmp_path: Path) -> None:
    done = tmp_path / "done"
    with start_hub(tmp_path / "home", heartbeat_s=HEARTBEAT, misses=MISSES) as hub, \
            _agents(hub, ["g1"], tmp_path):
        await await_agents(hub.control_path, ["g1"])
        started = asyncio.Event()

        def on_line(line: Line) -> None:
            started.set()

        async def kill_hub_once_started() -> None:
            await started.wait()
            await asyncio.to_thread(hub.stop, 9)

        ex = AgentExecutor(hub.control_path)
        killer = asyncio.create_task(kill_hub_once_started())
        try:
            async with asyncio.timeout(HEARTBEAT):  # the command itself sleeps 60 s
                r = await ex.run(host("g1"), Op(name="exec",
                                 command=f"echo started; sleep 60; touch {done}"),
                                 Settings(), on_line=on_line)
            await killer
        finally:
            killer.cancel()
            await ex.close()
        assert (r.status, r.code, r.transport) == ("lost", -1, "agent")
        assert "may have run" in r.err and "g1" in r.err
        assert not done.exists()  # the answer came while the command was still running


# ── 10: shipping a function ships that function, never its script ────────────────────

SCRIPT = """
import json

with open({marker!r}, "a") as f:  # top-level code: must run here only, never on agents
    f.write("ran\\n")

FACTOR = 6


def times(x: int, extra: int = FACTOR) -> int:
    return x * FACTOR + extra + len(json.dumps([1]))


def adder(k):
    return lambda x: x + k


from reops import agents, call, run

hosts = agents().select("c1,c2")
outcomes = {{"def": run(call(hosts, times, 7)), "lambda": run(call(hosts, lambda: 42)),
             "closure": run(call(hosts, adder(5), 1))}}
print(json.dumps({{k: {{r.host: [r.status, r.data, r.err] for r in o.results}}
                   for k, o in outcomes.items()}}))
"""


def test_a_script_function_is_shipped_without_its_script(
        fleet: tuple[LabHub, Path], tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    hub, _ = fleet
    marker = tmp_path / "ran"
    script = tmp_path / "myscript.py"
    script.write_text(SCRIPT.format(marker=str(marker)))
    env = {**os.environ, "REOPS_HOME": str(hub.home), "REOPS_CONFIG": str(tmp_path / "none")}
    env.pop("REOPS_HUB_CONTROL", None)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    both = ("c1", "c2")
    assert {h: got["def"][h][:2] for h in both} == {h: ["ok", 7 * 6 + 6 + 3] for h in both}
    assert {h: got["lambda"][h][:2] for h in both} == {h: ["ok", 42] for h in both}
    assert {h: got["closure"][h][:2] for h in both} == {h: ["ok", 6] for h in both}
    assert marker.read_text() == "ran\n"  # the local run only: no agent ran the script


def test_what_cannot_be_shipped_is_refused_before_sending() -> None:
    import threading

    from reops.streams.agents import call

    lock = threading.Lock()

    def uses_a_lock() -> bool:
        return lock.locked()

    with pytest.raises(ValueError, match=r"cannot ship .*uses_a_lock.*'lock'.*argument"):
        call([host("c1")], uses_a_lock)
    with pytest.raises(ValueError, match="not a plain Python function"):
        call([host("c1")], print)


# ── 7, 17, 12: transfers in chunks under a small frame limit; bounded reads; modes ───


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


async def test_files_beyond_any_frame_limit_move_in_chunks(
        fleet: tuple[LabHub, Path], tmp_path: Path) -> None:
    """70 MiB: more than the hub's 4 MiB frames and the old 64 MiB one-frame limit."""
    import os

    from reops.ops.files import download, upload

    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(70):
            f.write(os.urandom(MIB))
        f.write(b"tail")
    remote = tmp_path / "remote" / "big.bin"
    ex = AgentExecutor(fleet[0].control_path)
    try:
        up = await ex.run(host("h1"), upload(str(src), str(remote)), Settings())
        assert (up.status, up.changed) == ("ok", True), up.err
        assert _sha256(remote) == _sha256(src)
        again = await ex.run(host("h1"), upload(str(src), str(remote)), Settings())
        assert (again.status, again.changed) == ("ok", False)
        down = await ex.run(host("h2"), download(str(remote), str(tmp_path / "got")),
                            Settings())
        assert down.status == "ok", down.err
        assert _sha256(Path(down.out)) == _sha256(src)
    finally:
        await ex.close()
    assert not [p for p in remote.parent.iterdir() if p.name != "big.bin"]  # no temp left


async def test_the_hub_drops_frames_over_its_small_limit(fleet: tuple[LabHub, Path],
                                                         tmp_path: Path) -> None:
    """An accepted peer sending a 5 MiB frame is disconnected (limit 4 MiB by default)."""
    import zmq
    import zmq.asyncio
    from reops_agent.keys import load_keypair
    from reops_agent.protocol import Hello, Welcome, decode_hub, encode
    from zmq.utils.monitor import parse_monitor_message

    from reops.hub.keystore import KeyStore

    hub, _ = fleet
    public, secret = load_keypair(tmp_path, "big")
    KeyStore(hub.keys_dir).pre_accept("bigsender", public.decode())
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
        hub.key.encode(), public, secret)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 60_000)  # one connection: its drop is the signal
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(hub.bind)
    try:
        async with asyncio.timeout(HEARTBEAT):
            await sock.send(encode(Hello(name="bigsender")))
            while not isinstance(decode_hub(await sock.recv()), Welcome):
                pass
            await sock.send(b"\x00" * (5 * MIB))
            event = parse_monitor_message(await monitor.recv_multipart())
        assert event["event"] == zmq.EVENT_DISCONNECTED
    finally:
        monitor.close(0)
        sock.close(0)
        ctx.term()


async def test_reads_are_bounded(client: HubClient, tmp_path: Path) -> None:
    from reops.ops.files import download

    results = await call(client, hosts=["h1"], fn="file.read", args=["/dev/zero"])
    r = results["h1"]
    assert r.status == "error" and "too large for one read" in r.err
    ex = AgentExecutor(client.path)
    try:
        down = await ex.run(host("h1"), download("/dev/zero", str(tmp_path)), Settings())
    finally:
        await ex.close()
    assert (down.status, down.code) == ("failed", 1) and "not a regular file" in down.err


async def test_downloads_drop_setuid_bits_into_private_host_dirs(
        fleet: tuple[LabHub, Path], tmp_path: Path) -> None:
    from reops.ops.files import download

    src = tmp_path / "tool"
    src.write_text("#!/bin/sh\necho hi\n")
    src.chmod(0o6755)
    ex = AgentExecutor(fleet[0].control_path)
    try:
        r = await ex.run(host("h1"), download(str(src), str(tmp_path / "got")), Settings())
    finally:
        await ex.close()
    assert r.status == "ok", r.err
    assert Path(r.out).read_text() == src.read_text()
    assert Path(r.out).stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "got" / "h1").stat().st_mode & 0o777 == 0o700


# ── 18: `--via auto` asks the hub without blocking the event loop ─────────────────────


async def test_via_auto_waits_for_a_paused_hub_without_blocking_the_loop(
        fleet: tuple[LabHub, Path]) -> None:
    """While the hub is paused the choice is pending and this loop keeps running; once
    the hub answers, the host goes over its agent (not over SSH by a blocking timeout)."""
    import os
    import signal

    from reops.transports.agent import AutoExecutor
    from reops.transports.ssh.executor import SshExecutor

    hub, _ = fleet
    assert hub.proc is not None
    agent, ssh = AgentExecutor(hub.control_path), SshExecutor()
    auto = AutoExecutor(agent, ssh)
    os.kill(hub.proc.pid, signal.SIGSTOP)
    try:
        task = asyncio.create_task(auto.run(host("h1"), Op(name="exec", command="echo hi"),
                                            Settings()))
        asking = asyncio.create_task(agent.available(host("h1")))  # async: awaits the hub
        for _ in range(5):
            await asyncio.sleep(0)  # the loop is ours while the choice waits for the hub
        assert not task.done() and not asking.done()
    finally:
        os.kill(hub.proc.pid, signal.SIGCONT)
    try:
        async with asyncio.timeout(HEARTBEAT):
            r = await task
            assert await asking  # the hub's answer, not a cached guess
    finally:
        await agent.close()
        await ssh.close()
    assert (r.status, r.transport, r.out) == ("ok", "agent", "hi\n")


# ── 16: every hub call has a deadline, even one given none ───────────────────────────


async def test_a_call_without_timeout_gets_the_hubs_default_deadline(tmp_path: Path) -> None:
    with start_hub(tmp_path / "home", heartbeat_s=HEARTBEAT, misses=MISSES,
                   call_timeout_s=1.0) as hub, _agents(hub, ["d1"], tmp_path):
        await await_agents(hub.control_path, ["d1"])
        c = HubClient(hub.control_path)
        try:
            async with asyncio.timeout(HEARTBEAT):  # the command would sleep 60 s
                results = await call(c, hosts=["d1"], fn="shell", args=["sleep 60"])
            r = results["d1"]
            assert (r.status, r.code) == ("timeout", -1)
            assert "timed out after 1 s" in r.err
            assert (await c.request("ping"))["calls"] == 0
        finally:
            await c.close()


def test_the_right_lambda_of_a_line_is_shipped(fleet: tuple[LabHub, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from reops.streams.agents import call
    from reops.streams.stream import run

    hub, _ = fleet
    monkeypatch.setenv("REOPS_HOME", str(hub.home))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.delenv("REOPS_HUB_CONTROL", raising=False)
    scale = 10
    first, second = (lambda x: x + 1), (lambda x: x * scale)
    out = run(call([host("c1")], second, 4))
    assert [(r.status, r.data) for r in out.results] == [("ok", 40)]
    assert first(1) == 2
