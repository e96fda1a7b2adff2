"""The hub and agents as real processes on loopback, with CurveZMQ and a key store.

A module-wide hub serves agents a1, a2 (no shipped code) and c1 (--allow-code); tests that
kill or restart things start their own. Heartbeats are short (config), never slept on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from reops_agent.keys import load_keypair
from reops_agent.protocol import (
    Done,
    Hello,
    Output,
    Pending,
    Refused,
    Unknown,
    decode_hub,
    encode,
)

from reops.control.client import HubClient
from reops.control.wire import Event, LineItem, ResultItem, TickItem
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
from reops.ops.metrics import Metrics
from reops.transports.agent import AgentExecutor, agents, ship

HEARTBEAT = 0.25
MISSES = 4
WINDOW = HEARTBEAT * MISSES
AGENT_FLAGS = ["--reconnect-max", "0.3", "--heartbeat", str(HEARTBEAT)]

SHIPPED = '''
def add(a, b):
    return a + b

def boom():
    raise RuntimeError("kaboom")
'''


def _hub(root: Path, misses: int = MISSES, **kw: Any) -> LabHub:
    return start_hub(root / "home", heartbeat_s=HEARTBEAT, misses=misses, call_grace_s=1.0,
                     **kw)


def _agents(hub: LabHub, names: list[str], root: Path, **kw: Any) -> LabAgents:
    return start_agents(names, hub.bind, hub.key, hub.keys_dir, workdir=root / "agents",
                        extra=AGENT_FLAGS, **kw)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabHub, Path]]:
    root = tmp_path_factory.mktemp("agents")
    # a roomier window for the shared hub: a busy test machine must not make agents "lost"
    with _hub(root, misses=3 * MISSES) as hub, _agents(hub, ["a1", "a2"], root), \
            _agents(hub, ["c1"], root, allow_code=True):
        wait_for_agents(hub.control_path, ["a1", "a2", "c1"])
        yield hub, root


@pytest.fixture
async def client(fleet: tuple[LabHub, Path]) -> AsyncIterator[HubClient]:
    c = HubClient(fleet[0].control_path)
    yield c
    await c.close()


async def call(client: HubClient, **params: Any
               ) -> tuple[dict[str, ResultItem], list[LineItem]]:
    """Results by host, and the streamed line items, of one hub call."""
    results: dict[str, ResultItem] = {}
    lines: list[LineItem] = []
    async for item in client.pieces("call", **params):
        match item:
            case ResultItem():
                results[item.host] = item
            case LineItem():
                lines.append(item)
    return results, lines


def host(name: str) -> Host:
    return Host(name=name, address="127.0.0.1")


# ── calls ─────────────────────────────────────────────────────────────────────────────


async def test_builtins_fan_out(client: HubClient) -> None:
    results, _ = await call(client, hosts=["a1", "a2", "c1", "ghost"], fn="ping")
    assert {h: r.status for h, r in results.items()} == {
        "a1": "ok", "a2": "ok", "c1": "ok", "ghost": "unreachable"}
    assert results["ghost"].code == -1 and "not connected" in results["ghost"].err
    results, _ = await call(client, hosts=["a1"], fn="metrics", args=["load", "memory"])
    data = results["a1"].data  # the fields of reops.ops.metrics.Metrics
    assert data["load"] and data["memory"] and data["at"] and data["cpu"] is None


async def test_executor_gives_ssh_shaped_results(fleet: tuple[LabHub, Path]) -> None:
    ex = AgentExecutor(fleet[0].control_path)
    try:
        assert await ex.connected(host("a1")) and not await ex.connected(host("ghost"))
        ok = await ex.run(host("a1"), Op(name="exec", command="echo hi"), Settings())
        assert (ok.status, ok.code, ok.out, ok.transport) == ("ok", 0, "hi\n", "agent")
        assert ok.started_at > 0 and ok.duration_s > 0
        bad = await ex.run(host("a2"), Op(name="exec", command="echo no >&2; exit 3"),
                           Settings())
        assert (bad.status, bad.code, bad.err) == ("failed", 3, "no\n")
        gone = await ex.run(host("ghost"), Op(name="exec", command="true"), Settings())
        assert (gone.status, gone.code, gone.transport) == ("unreachable", -1, "agent")
        parsed = await ex.run(host("a1"), Op(name="ls", command="printf 'a\\nb\\n'",
                                             parse=str.split), Settings())
        assert parsed.data == ["a", "b"]
    finally:
        await ex.close()


async def test_streamed_lines_arrive_in_order_before_the_result(
        fleet: tuple[LabHub, Path]) -> None:
    ex = AgentExecutor(fleet[0].control_path)
    lines: list[Line] = []
    try:
        r = await ex.run(host("a1"), Op(name="exec", command="seq 1 2000; echo done >&2"),
                         Settings(), on_line=lines.append)
    finally:
        await ex.close()
    assert r.ok
    assert [ln.text for ln in lines if ln.stream == "out"] == [str(i) for i in range(1, 2001)]
    assert Line("a1", "err", "done") in lines


async def test_call_timing_out(fleet: tuple[LabHub, Path]) -> None:
    ex = AgentExecutor(fleet[0].control_path)
    t0 = time.monotonic()
    try:
        r = await ex.run(host("a2"), Op(name="exec", command="sleep 20", timeout=0.5),
                         Settings())
    finally:
        await ex.close()
    assert (r.status, r.code) == ("timeout", -1) and "timed out after 0.5 s" in r.err
    assert time.monotonic() - t0 < 5


async def test_shipped_code_needs_allow_code(client: HubClient, tmp_path: Path) -> None:
    code = {"source": SHIPPED, "function": "add"}
    results, _ = await call(client, hosts=["a1", "c1"], fn="add", args=[2, 3], code=code)
    assert results["c1"].status == "ok" and results["c1"].data == 5
    assert results["a1"].status == "error" and "--allow-code" in results["a1"].err
    results, _ = await call(client, hosts=["c1"], fn="boom",
                            code={"source": SHIPPED, "function": "boom"})
    assert results["c1"].status == "error"
    assert "Traceback" in results["c1"].err and "RuntimeError: kaboom" in results["c1"].err


async def test_ship_a_module_function_through_the_executor(
        fleet: tuple[LabHub, Path], tmp_path: Path) -> None:
    path = tmp_path / "shipme.py"
    path.write_text(SHIPPED)
    spec = importlib.util.spec_from_file_location("shipme", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    op = Op(name="call:add", kind="code", function="add", args=(20, 22),
            code=ship(module.add))
    ex = AgentExecutor(fleet[0].control_path)
    try:
        r = await ex.run(host("c1"), op, Settings())
    finally:
        await ex.close()
    assert (r.status, r.data, r.transport) == ("ok", 42, "agent")


MODULES = """
import sys

def modules():
    return sorted(sys.modules)
"""


async def test_a_working_agent_runs_without_asyncio(client: HubClient) -> None:
    """The agent process itself (not a probe importing its package) after it served a
    streamed shell call, facts and metrics: its event loop is a zmq.Poller, so asyncio
    (~7 MB of an idle agent) is never imported."""
    results, lines = await call(client, hosts=["c1"], fn="shell", args=["echo one; echo two"],
                                stream=True)
    assert results["c1"].status == "ok" and [x.text for x in lines] == ["one", "two"]
    for fn in ("facts", "metrics"):
        results, _ = await call(client, hosts=["c1"], fn=fn)
        assert results["c1"].status == "ok", results["c1"].err
    results, _ = await call(client, hosts=["c1"], fn="modules",
                            code={"source": MODULES, "function": "modules"})
    modules = set(results["c1"].data)
    assert "reops_agent.agent" in modules and "reops_agent.system" in modules  # it ran them
    assert not {"asyncio", "zmq.asyncio", "concurrent.futures"} & modules


async def test_schedule_streams_ticks_until_cancelled(client: HubClient) -> None:
    ticks: list[TickItem] = []
    stream = client.pieces("schedule", hosts=["a1", "a2"], fn="metrics", args=["load"],
                           every=0.1)
    async for tick in stream:
        assert isinstance(tick, TickItem)
        ticks.append(tick)
        if len(ticks) == 6:
            break
    await stream.aclose()
    assert {t.host for t in ticks} == {"a1", "a2"} and all(t.status == "ok" for t in ticks)
    assert "load" in ticks[0].data


async def test_agents_source_and_listing(fleet: tuple[LabHub, Path], client: HubClient) -> None:
    hosts = await asyncio.to_thread(agents, fleet[0].control_path)
    assert set(hosts.names) >= {"a1", "a2", "c1"}
    assert hosts.select("a*").names == ["a1", "a2"] or set(hosts.select("a*").names) == {
        "a1", "a2"}
    listed = {a["name"]: a for a in await client.request("agents")}
    assert listed["c1"]["allow_code"] and not listed["a1"]["allow_code"]
    assert listed["a1"]["version"] and listed["a1"]["python"]


# ── keys ──────────────────────────────────────────────────────────────────────────────


async def test_pending_accept_reject(fleet: tuple[LabHub, Path], client: HubClient) -> None:
    hub, root = fleet
    events = client.pieces("subscribe", topics=["keys"])
    await anext(events)
    with _agents(hub, ["p1"], root, accept=False):
        event = await asyncio.wait_for(anext(events), 15)
        assert isinstance(event, Event)
        assert event.data["event"] == "pending" and event.data["agent"] == "p1"
        keys = {k["name"]: k for k in await client.request("keys")}
        assert keys["p1"]["state"] == "pending" and len(keys["p1"]["fingerprint"]) == 47
        results, _ = await call(client, hosts=["p1"], fn="ping")
        assert results["p1"].status == "unreachable"  # no service while pending
        await client.request("keys.accept", names=["p1"])
        await await_agents(hub.control_path, ["p1"], timeout=10)
        results, _ = await call(client, hosts=["p1"], fn="ping")
        assert results["p1"].status == "ok"
        await client.request("keys.reject", names=["p1"])
        results, _ = await call(client, hosts=["p1"], fn="ping")
        assert results["p1"].status == "unreachable"
    await events.aclose()
    assert {k["name"]: k["state"] for k in await client.request("keys")}["p1"] == "rejected"


async def test_rogue_agent_gets_no_service(fleet: tuple[LabHub, Path], client: HubClient,
                                           tmp_path: Path) -> None:
    """An unaccepted key may say hello and nothing more, and never sees others' calls."""
    hub, _ = fleet
    public, secret = load_keypair(tmp_path, "rogue")
    ctx = zmq.asyncio.Context()
    rogue = ctx.socket(zmq.DEALER)
    rogue.curve_serverkey, rogue.curve_publickey, rogue.curve_secretkey = (
        hub.key.encode(), public, secret)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(hub.bind)
    got: list[Any] = []

    async def expect(kind: type) -> None:
        while True:
            msg = decode_hub(await rogue.recv())
            got.append(msg)
            if isinstance(msg, kind):
                return

    try:
        await rogue.send(encode(Hello(name="a1")))  # an accepted name, but not its key
        await asyncio.wait_for(expect(Refused), 10)
        await rogue.send(encode(Hello(name="rogue")))
        await asyncio.wait_for(expect(Pending), 10)
        running = asyncio.create_task(call(client, hosts=["a1"], fn="shell",
                                           args=["sleep 0.5; echo real"], stream=True))
        for call_id in range(1, 400):  # forged answers for whatever calls are in flight
            await rogue.send(encode(Output(id=call_id, text="forged")))
            await rogue.send(encode(Done(id=call_id, status="ok", code=0, out="forged")))
        await asyncio.wait_for(expect(Unknown), 10)
        results, lines = await running
        assert results["a1"].out == "real\n" and [ln.text for ln in lines] == ["real"]
        assert all(isinstance(m, (Refused, Pending, Unknown)) for m in got)
    finally:
        rogue.close(0)
        ctx.term()
    listed = {a["name"] for a in await client.request("agents")}
    assert "rogue" not in listed


# ── liveness ──────────────────────────────────────────────────────────────────────────


async def test_agent_killed_mid_call(tmp_path: Path) -> None:
    with _hub(tmp_path) as hub, _agents(hub, ["k1", "k2"], tmp_path) as lab:
        await await_agents(hub.control_path, ["k1", "k2"])
        client = HubClient(hub.control_path)
        try:
            stream = client.pieces("call", hosts=["k1", "k2"], fn="shell", stream=True,
                                   args=["echo started; sleep 30"])
            other = asyncio.create_task(call(client, hosts=["k2"], fn="shell",
                                             args=["sleep 1; echo fine"]))
            results: dict[str, ResultItem] = {}
            killed = False
            async for item in stream:
                match item:
                    case LineItem(host="k1") if not killed:
                        lab.kill("k1")
                        killed = True
                    case ResultItem():
                        results[item.host] = item
                        if item.host == "k1":
                            break
            await stream.aclose()
            k1 = results["k1"]
            assert (k1.status, k1.code) == ("lost", -1)  # it had started: may have run
            assert "connection dropped during the call" in k1.err
            ok, _ = await other
            assert ok["k2"].status == "ok" and ok["k2"].out == "fine\n"
        finally:
            await client.close()


async def test_hub_restart_agents_come_back(tmp_path: Path) -> None:
    with _hub(tmp_path) as hub, _agents(hub, ["r1", "r2"], tmp_path):
        await await_agents(hub.control_path, ["r1", "r2"])
        hub.stop(sig=9)
        await asyncio.to_thread(hub.start)
        await await_agents(hub.control_path, ["r1", "r2"], timeout=15)
        client = HubClient(hub.control_path)
        try:
            results, _ = await call(client, hosts=["r1", "r2"], fn="ping")
        finally:
            await client.close()
        assert all(r.status == "ok" for r in results.values())


# ── fuzzing the hub over the wire ─────────────────────────────────────────────────────


async def test_hub_survives_garbage_on_the_wire(fleet: tuple[LabHub, Path],
                                                client: HubClient, tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    hub, _ = fleet
    from reops.hub.keystore import KeyStore

    public, secret = load_keypair(tmp_path, "fuzz")
    KeyStore(hub.keys_dir).pre_accept("fuzz", public.decode())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
        hub.key.encode(), public, secret)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(hub.bind)
    valid = [encode(Hello(name="fuzz")), encode(Done(id=1, status="ok", code=0)),
             msgspec.msgpack.encode({"t": "beat", "v": 99})]

    frames = st.one_of(
        st.binary(max_size=300),
        st.sampled_from(valid).flatmap(lambda f: st.integers(0, len(f)).map(lambda n: f[:n])),
        st.builds(lambda v: msgspec.msgpack.encode({"t": "hello", "v": v, "name": "x"}),
                  st.integers(-(2**63), 2**63 - 1)),
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(frames, min_size=1, max_size=3))
    def blast(parts: list[bytes]) -> None:
        sock.send_multipart(parts)

    try:
        await asyncio.to_thread(blast)
        sock.send(valid[0])  # and a real hello, registering this key's agent
    finally:
        sock.close(0)
        ctx.term()
    # an oversized frame: libzmq drops that connection, the hub carries on
    big_ctx = zmq.Context()
    big = big_ctx.socket(zmq.DEALER)
    big.curve_serverkey, big.curve_publickey, big.curve_secretkey = (
        hub.key.encode(), public, secret)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(hub.bind)
    big.send(b"\x00" * (64 * 1024 * 1024 + 10))
    big.close(0)
    big_ctx.term()
    info = await client.request("ping")
    assert info["bad_frames"] > 0
    results, _ = await call(client, hosts=["a1", "a2"], fn="ping")
    assert all(r.status == "ok" for r in results.values())
    assert "dropped a bad message" in hub.log


# ── schedules and events as Observables ──────────────────────────────────────────────


def test_schedule_and_events_observables(fleet: tuple[LabHub, Path]) -> None:
    import threading

    from reops.core.model import Result
    from reops.streams.agents import agent_events, schedule

    hub, root = fleet
    got: list[Result] = []
    enough = threading.Event()

    def on_result(r: Result) -> None:
        got.append(r)
        if len(got) >= 4:
            enough.set()

    hosts = agents(hub.control_path).select("a1,a2")
    sub = schedule(hosts, "metrics", "load", every=0.1, hub=hub.control_path).subscribe(
        on_result)
    try:
        assert enough.wait(15)
    finally:
        sub.dispose()
    assert {r.host for r in got} == {"a1", "a2"}
    assert all(r.transport == "agent" and r.ok and isinstance(r.data, Metrics)
               and r.data.load is not None for r in got)

    events: list[Event] = []
    seen, subscribed = threading.Event(), threading.Event()

    def on_event(e: Event) -> None:
        events.append(e)
        if e.topic == "subscribed":
            subscribed.set()
        if e.topic == "agents" and e.data.get("agent") == "e1":
            seen.set()

    sub = agent_events(hub.control_path).subscribe(on_event)
    try:
        assert subscribed.wait(15)
        with _agents(hub, ["e1"], root):
            assert seen.wait(15)
    finally:
        sub.dispose()
    assert any(e.data.get("event") == "registered" for e in events if e.topic == "agents")


async def test_schedule_results_buffered_while_hub_is_away(tmp_path: Path) -> None:
    """A paused hub: ticks wait on the agent (bounded backlog, oldest dropped and counted)."""
    import os
    import signal

    with _hub(tmp_path) as hub, start_agents(
            ["s1"], hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "agents",
            extra=[*AGENT_FLAGS, "--backlog", "3"]):
        await await_agents(hub.control_path, ["s1"])
        client = HubClient(hub.control_path)
        try:
            ticks = client.pieces("schedule", hosts=["s1"], fn="ping", every=0.1)
            await asyncio.wait_for(anext(ticks), 10)
            assert hub.proc is not None
            os.kill(hub.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(WINDOW * 3)  # the outage itself: the hub is away this long
            os.kill(hub.proc.pid, signal.SIGCONT)
            dropped = 0
            while not dropped:
                tick = await asyncio.wait_for(anext(ticks), 15)
                assert isinstance(tick, TickItem)
                dropped = tick.dropped
            assert dropped > 5  # ~30 runs while away, 3 kept
            await ticks.aclose()
        finally:
            await client.close()


async def test_control_socket_survives_garbage(fleet: tuple[LabHub, Path],
                                               client: HubClient) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    hub, _ = fleet
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{hub.control_path}")
    junk = st.one_of(
        st.binary(max_size=200),
        st.builds(lambda m, p: msgspec.msgpack.encode({"id": 1, "method": m, "params": p}),
                  st.sampled_from(["call", "schedule", "keys.accept", "cancel", "nope",
                                   "agents"]),
                  st.dictionaries(st.sampled_from(["hosts", "fn", "every", "names", "id",
                                                   "timeout", "code", "args"]),
                                  st.none() | st.integers(-(2**31), 2**31) | st.text(max_size=5)
                                  | st.lists(st.integers(0, 9), max_size=2), max_size=4)))

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(junk, min_size=1, max_size=2))
    def blast(parts: list[bytes]) -> None:
        sock.send_multipart(parts)

    try:
        await asyncio.to_thread(blast)
    finally:
        sock.close(0)
        ctx.term()
    results, _ = await call(client, hosts=["a1"], fn="ping")
    assert results["a1"].status == "ok"
