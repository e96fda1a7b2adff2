"""Issue 8, hub side: enrollment by first key and fingerprint, keys checked on every message,
bounded pending keys, clones refused, private control socket without touching shared dirs.

Real hub and `reops-agent` processes over CurveZMQ on loopback; hand-driven pyzmq DEALERs
only where a test plays an attacker (forged routing id, a flood of names).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from click.testing import CliRunner
from reops_agent.keys import load_keypair
from reops_agent.protocol import (
    Call,
    Done,
    Hello,
    Pending,
    Refused,
    Unknown,
    Welcome,
    decode_hub,
    encode,
    fingerprint,
)

from reops.cli.main import main
from reops.control.client import HubClient
from reops.control.wire import AnyPiece, Event, ResultItem
from reops.hub.keystore import ContestedName, KeyStore
from reops.lab.agents import LabHub, await_agents, start_agents, start_hub

HEARTBEAT = 0.25
FLAGS = ["--heartbeat", str(HEARTBEAT), "--reconnect-max", "0.3"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_HUB_BIND", "tcp://127.0.0.1:*")
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "home").mkdir(mode=0o700)  # private, as reops makes it (else it warns)
    return tmp_path / "home"


@pytest.fixture
def hub(home: Path) -> Iterator[LabHub]:
    # a roomy liveness window: these tests never wait on it, and a loaded machine must not
    # make an agent "lost" under them
    with start_hub(home, heartbeat_s=HEARTBEAT, misses=40) as h:
        yield h


@pytest.fixture
async def client(hub: LabHub) -> AsyncIterator[HubClient]:
    c = HubClient(hub.control_path)
    yield c
    await c.close()


def reops(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


async def next_event(events: AsyncIterator[AnyPiece], kind: str, timeout: float = 20.0
                     ) -> Any:
    """The data of the next event whose data.event is `kind` (bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            match await anext(events):
                case Event(data={"event": event} as data) if event == kind:
                    return data


async def call_results(client: HubClient, **params: Any) -> list[ResultItem]:
    """The results of one hub call."""
    return [r async for r in client.pieces("call", **params) if isinstance(r, ResultItem)]


def dealer(ctx: zmq.asyncio.Context, hub: LabHub, public: bytes, secret: bytes,
           routing_id: bytes | None = None) -> zmq.asyncio.Socket:
    """A CurveZMQ DEALER to the hub with this key pair (and, if given, this routing id)."""
    s = ctx.socket(zmq.DEALER)
    s.curve_serverkey, s.curve_publickey, s.curve_secretkey = hub.key.encode(), public, secret
    s.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        s.setsockopt(zmq.ROUTING_ID, routing_id)
    s.connect(hub.bind)
    return s


async def expect(sock: zmq.asyncio.Socket, kind: type, timeout: float = 20.0) -> Any:
    """The next message of type `kind` the hub sends on `sock` (others skipped; bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = decode_hub(await sock.recv())
            if isinstance(msg, kind):
                return msg


# ── 5. enrollment: the first key keeps the name; a contested name needs a fingerprint ──


def test_keystore_keeps_the_first_claim(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys")
    first, second, third = "A" * 40, "B" * 40, "C" * 40
    assert keys.add_pending("newhost", first) == "new"
    assert keys.add_pending("newhost", second) == "contested"
    assert keys.add_pending("newhost", second) == "known-contest"
    entry = keys.get("newhost")
    assert entry is not None and entry.key == first  # not overwritten by the later claim
    [pending] = keys.entries("pending")
    assert pending.claims == [fingerprint(first), fingerprint(second)]
    with pytest.raises(ContestedName, match=r"2 keys claim newhost.*--fingerprint"):
        keys.accept("newhost")
    assert keys.accept_all_pending() == []  # contested: never accepted wholesale
    with pytest.raises(ValueError, match="no key claiming newhost has fingerprint"):
        keys.accept("newhost", fingerprint(third))
    assert keys.accept("newhost", fingerprint(second).upper()).key == second
    assert keys.accepted_key("newhost") == second and keys.contenders("newhost") == []


def test_keystore_one_name_per_key_and_a_cap(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys")
    assert keys.add_pending("a", "K" * 40) == "new"
    assert keys.add_pending("b", "K" * 40) == "other-name"
    assert keys.add_pending("c", "L" * 40, max_pending=2) == "new"
    assert keys.add_pending("d", "M" * 40, max_pending=2) == "full"
    assert sorted(e.name for e in keys.entries("pending")) == ["a", "c"]
    assert keys.pending_name_of("K" * 40) == "a"


async def test_two_agents_claim_one_name(hub: LabHub, client: HubClient,
                                         tmp_path: Path) -> None:
    events = client.pieces("subscribe", topics=["keys", "agents"])
    await anext(events)
    work1, work2 = tmp_path / "first", tmp_path / "second"
    with start_agents(["newhost"], hub.bind, hub.key, hub.keys_dir, workdir=work1,
                      accept=False, extra=FLAGS) as first:
        assert (await next_event(events, "pending"))["agent"] == "newhost"
        with start_agents(["newhost"], hub.bind, hub.key, hub.keys_dir, workdir=work2,
                          accept=False, extra=FLAGS) as second:
            contested = await next_event(events, "contested")
            fp1 = own_fingerprint(work1 / "newhost")
            fp2 = own_fingerprint(work2 / "newhost")
            assert fp1 != fp2 and contested["fingerprint"] == fp2
            code, out = await asyncio.to_thread(reops, "keys")
            assert code == 0 and "2 keys claim newhost" in out and fp1 in out and fp2 in out
            listed = json.loads((await asyncio.to_thread(reops, "keys", "--json"))[1])
            assert [k["claims"] for k in listed] == [[fp1, fp2]]
            code, out = await asyncio.to_thread(reops, "keys", "accept", "newhost")
            assert code == 2 and len(out.strip().splitlines()) == 1
            assert "2 keys claim newhost" in out and "--fingerprint" in out
            code, out = await asyncio.to_thread(reops, "keys", "accept", "newhost",
                                                "--fingerprint", fp1)
            assert (code, out) == (0, "accepted newhost\n")
            await await_agents(hub.control_path, ["newhost"], timeout=60)
            [agent] = await client.request("agents")
            assert agent["fingerprint"] == fp1
            got = await call_results(client, hosts=["newhost"], fn="shell", args=["echo $PPID"])
            assert got[0].status == "ok" and got[0].out == f"{first.pid('newhost')}\n"
            assert second.procs["newhost"].poll() is None  # still retrying, never served
    await events.aclose()
    keys = {k["name"]: k for k in await client.request("keys")}
    assert keys["newhost"]["state"] == "accepted" and keys["newhost"]["fingerprint"] == fp1


def own_fingerprint(keys_dir: Path) -> str:
    """What `reops-agent --print-fingerprint` says for the key pair in `keys_dir`."""
    got = subprocess.run([sys.executable, "-m", "reops_agent", "--keys-dir", str(keys_dir),
                          "--print-fingerprint"], capture_output=True, text=True, check=True)
    return got.stdout.strip()


def test_accept_by_fingerprint_without_a_hub(home: Path) -> None:
    keys = KeyStore(home / "keys")
    keys.add_pending("solo", "S" * 40)
    code, out = reops("keys", "accept", "solo", "--fingerprint", "00:11")
    assert code == 2 and "no key claiming solo has fingerprint 00:11" in out
    assert reops("keys", "accept", "solo", "--fingerprint", fingerprint("S" * 40)) == (
        0, "accepted solo\n")


# ── 6. the authenticated key is checked on every message, not only the routing id ────


async def test_a_dropped_agents_routing_id_gets_no_calls(hub: LabHub, client: HubClient,
                                                        tmp_path: Path) -> None:
    """A peer reusing a gone agent's routing id is not that agent: no calls, no answers."""
    public, secret = load_keypair(tmp_path / "victim", "agent")
    KeyStore(hub.keys_dir).pre_accept("victim", public.decode())
    rogue_public, rogue_secret = load_keypair(tmp_path / "rogue", "agent")  # never accepted
    rid = b"victim-connection"
    ctx = zmq.asyncio.Context()
    events = client.pieces("subscribe", topics=["agents"])
    await anext(events)
    try:
        real = dealer(ctx, hub, public, secret, rid)
        await real.send(encode(Hello(name="victim", pid=4242)))
        await expect(real, Welcome)
        real.close(0)  # the agent's connection drops
        assert (await next_event(events, "disconnected"))["agent"] == "victim"
        rogue = await take_routing_id(ctx, hub, rogue_public, rogue_secret, rid)
        got = await call_results(client, hosts=["victim"], fn="shell", args=["echo real"])
        await rogue.send(encode(Done(id=1, status="ok", code=0, out="forged\n")))
        seen = []
        async with asyncio.timeout(20):
            while not seen or not isinstance(seen[-1], Unknown):
                seen.append(decode_hub(await rogue.recv()))
    finally:
        ctx.destroy(0)
        await events.aclose()
    assert not any(isinstance(m, Call) for m in seen), "the rogue was sent the agent's call"
    assert (got[0].status, got[0].code) == ("unreachable", -1)
    assert "not connected" in got[0].err


async def take_routing_id(ctx: zmq.asyncio.Context, hub: LabHub, public: bytes,
                          secret: bytes, rid: bytes) -> zmq.asyncio.Socket:
    """Connect with routing id `rid` until the hub answers a Hello on it (bounded)."""
    async with asyncio.timeout(30):
        while True:  # ROUTER parks a duplicate id until it has let go of the old connection
            sock = dealer(ctx, hub, public, secret, rid)
            await sock.send(encode(Hello(name="rogue")))
            try:
                await expect(sock, Pending, timeout=2.0)
                return sock
            except TimeoutError:
                sock.close(0)


async def test_forged_answer_with_a_live_agents_routing_id(tmp_path: Path) -> None:
    """The key is checked on every message, even when the routing id is still registered.

    A hub in this process, its connection monitor switched off: as if the drop of the
    agent's connection had not been seen yet (events are asynchronous, and can be lost).
    """
    from reops.control.settings import HubSettings
    from reops.hub.controller import Controller

    settings = HubSettings(bind="tcp://127.0.0.1:*", control=str(tmp_path / "run" / "hub.sock"),
                           keys_dir=str(tmp_path / "keys"), heartbeat_s=5.0, misses=20)
    controller = Controller(settings)
    controller.fleet.sock.disable_monitor()
    stop = asyncio.Event()
    served = asyncio.create_task(controller.serve(stop))
    hub = LabHub(home=tmp_path, env={}, bind=controller.fleet.endpoint,
                 key=controller.public_key)
    public, secret = load_keypair(tmp_path / "victim", "agent")
    controller.keys.pre_accept("victim", public.decode())
    rogue_public, rogue_secret = load_keypair(tmp_path / "rogue", "agent")  # never accepted
    rid = b"victim-connection"
    ctx = zmq.asyncio.Context()
    client = HubClient(settings.control_path)
    try:
        events = client.pieces("subscribe", topics=["agents"])
        await anext(events)
        real = dealer(ctx, hub, public, secret, rid)
        await real.send(encode(Hello(name="victim", pid=4242)))
        await expect(real, Welcome)
        caller = asyncio.create_task(anext(client.pieces("call", hosts=["victim"], fn="shell",
                                                         args=["echo real"])))
        call = await expect(real, Call)
        real.close(0)  # the connection drops with the call in flight
        impostor = asyncio.create_task(next_event(events, "impostor", timeout=30))
        async with asyncio.timeout(30):
            while not impostor.done() and not caller.done():
                rogue = dealer(ctx, hub, rogue_public, rogue_secret, rid)
                await rogue.send(encode(Done(id=call.id, status="ok", code=0,
                                             out="forged\n")))
                await asyncio.wait([impostor, caller], timeout=2.0)
                rogue.close(0)
        assert not caller.done(), f"the forged answer was delivered: {caller.result()}"
        assert (await impostor)["agent"] == "victim"
        back = dealer(ctx, hub, public, secret)  # the real agent, on a new connection
        await back.send(encode(Hello(name="victim", pid=4242)))
        await expect(back, Welcome)
        await back.send(encode(Done(id=call.id, status="ok", code=0, out="real\n")))
        result = await asyncio.wait_for(caller, 20)
        assert isinstance(result, ResultItem) and (result.status, result.out) == ("ok", "real\n")
        assert (await client.request("ping"))["impostors"] >= 1
        await events.aclose()
    finally:
        await client.close()
        ctx.destroy(0)
        stop.set()
        await served


# ── 7. pending keys: one name per key, a rate, a cap; the hub binds loopback ─────────


async def test_one_key_flooding_names_gets_one_pending_entry(hub: LabHub, client: HubClient,
                                                             tmp_path: Path) -> None:
    public, secret = load_keypair(tmp_path / "flood", "agent")
    ctx = zmq.asyncio.Context()
    sock = dealer(ctx, hub, public, secret)
    replies: list[Any] = []
    try:
        for i in range(50):
            await sock.send(encode(Hello(name=f"flood{i}")))
            replies.append(await expect(sock, (Pending, Refused)))  # type: ignore[arg-type]
    finally:
        ctx.destroy(0)
    pending = [k["name"] for k in await client.request("keys") if k["state"] == "pending"]
    assert pending == ["flood0"]
    assert isinstance(replies[0], Pending) and all(isinstance(r, Refused) for r in replies[1:])
    assert "already pending as flood0" in replies[1].reason
    assert hub.log.count("refused (one name per key)") <= 10  # rationed, not 49 lines


async def test_new_pending_keys_are_rate_limited(home: Path, tmp_path: Path) -> None:
    env = {"REOPS_HUB_PENDING_PER_MINUTE": "2", "REOPS_HUB_CONTROL": "",
           "REOPS_HUB_KEYS_DIR": "", "REOPS_HUB_HEARTBEAT_S": "5"}
    lab = LabHub(home=home, env=env, bind="tcp://127.0.0.1:*")
    await asyncio.to_thread(lab.start)
    ctx = zmq.asyncio.Context()
    try:
        replies = []
        for i in range(12):
            public, secret = load_keypair(tmp_path / f"k{i}", "agent")
            sock = dealer(ctx, lab, public, secret)
            await sock.send(encode(Hello(name=f"many{i}")))
            replies.append(await expect(sock, (Pending, Refused)))  # type: ignore[arg-type]
            sock.close(0)
        client = HubClient(lab.control_path)
        try:
            pending = [k for k in await client.request("keys") if k["state"] == "pending"]
        finally:
            await client.close()
    finally:
        ctx.destroy(0)
        lab.stop()
    # 2 a minute, in bursts of 2 (a third only if this took over 30 s, a fourth 60 s)
    assert len(pending) <= 4
    assert sum(isinstance(r, Refused) for r in replies) == 12 - len(pending)
    assert any("too many new keys" in r.reason for r in replies if isinstance(r, Refused))


def test_default_bind_is_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reops.control.settings import DEFAULT_PORT, load_hub_settings

    monkeypatch.delenv("REOPS_HUB_BIND", raising=False)
    settings = load_hub_settings(tmp_path / "none.toml")
    assert settings.bind == f"tcp://127.0.0.1:{DEFAULT_PORT}"


def test_hub_ping_reports_a_loopback_bind(hub: LabHub) -> None:
    from reops.control.client import ping_sync

    assert ping_sync(hub.control_path)["bind"].startswith("tcp://127.0.0.1:")


# ── 8. a cloned agent (same key, same name) is refused while the first is alive ──────


async def test_cloned_agent_is_refused(hub: LabHub, client: HubClient,
                                       tmp_path: Path) -> None:
    events = client.pieces("subscribe", topics=["agents"])
    await anext(events)
    with start_agents(["gold"], hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "one",
                      extra=FLAGS) as one:
        await await_agents(hub.control_path, ["gold"], timeout=60)
        (tmp_path / "two" / "gold").mkdir(parents=True)
        for f in ("agent.key", "agent.key_secret"):  # the golden image's key dir, copied
            shutil.copy2(tmp_path / "one" / "gold" / f, tmp_path / "two" / "gold" / f)
        with start_agents(["gold"], hub.bind, hub.key, hub.keys_dir,
                          workdir=tmp_path / "two", extra=FLAGS) as two:
            clone = await next_event(events, "clone")
            assert clone["agent"] == "gold"
            for _ in range(3):  # calls keep going to the first agent, none fails
                got = await call_results(client, hosts=["gold"], fn="shell",
                                         args=["sleep 0.3; echo $PPID"])
                assert (got[0].status, got[0].out) == ("ok", f"{one.pid('gold')}\n")
            await until(lambda: "already connected from" in two.log("gold"))
            assert two.procs["gold"].poll() is None  # it keeps retrying, with the reason
    await events.aclose()
    assert "refused a second connection for agent gold" in hub.log


async def test_a_new_key_for_the_name_replaces_the_old_agent(hub: LabHub, client: HubClient,
                                                           tmp_path: Path) -> None:
    """A redeploy (a new key pre-accepted for the name) is not a clone: the new one serves."""
    with start_agents(["re"], hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "old",
                      extra=FLAGS) as old:
        await await_agents(hub.control_path, ["re"], timeout=60)
        events = client.pieces("subscribe", topics=["agents"])
        await anext(events)
        with start_agents(["re"], hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "new",
                          extra=FLAGS) as new:
            assert (await next_event(events, "registered"))["agent"] == "re"
            got = await call_results(client, hosts=["re"], fn="shell", args=["echo $PPID"])
            assert (got[0].status, got[0].out) == ("ok", f"{new.pid('re')}\n")
            await until(lambda: "belongs to another key" in old.log("re"))
        await events.aclose()


async def until(condition: Any, timeout: float = 20.0) -> None:
    """Return once `condition()` holds (a file another process writes); bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s")
        await asyncio.sleep(0.05)


# ── 12. the control socket: 0600, and a shared directory is never chmod-ed ───────────


def test_control_socket_in_a_shared_directory(tmp_path: Path) -> None:
    from reops.hub.control import ControlServer

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    ctx = zmq.asyncio.Context()
    try:
        in_shared = ControlServer(ctx, shared / "hub.sock")
        ours = ControlServer(ctx, tmp_path / "new" / "run" / "hub.sock")
        assert stat.S_IMODE((shared / "hub.sock").stat().st_mode) == 0o600
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # left as it was
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700  # made here: private
        assert stat.S_IMODE((tmp_path / "new" / "run").stat().st_mode) == 0o700
        in_shared.close()
        ours.close()
    finally:
        ctx.destroy(0)


def test_deploy_refuses_a_loopback_hub_for_remote_hosts(home: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REOPS_HUB_BIND")  # the default: loopback
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[hosts.web1]\naddress = "10.0.0.11"\n')
    code, out = reops("agents", "deploy", "-i", str(inventory), "all")
    assert code == 2 and len(out.strip().splitlines()) == 1
    assert "tcp://127.0.0.1:7720 (this machine only), which web1 cannot reach" in out


# ── 9. an agent runs an inventory host's commands only if it is that host ────────────


def test_agent_must_be_the_inventory_host(lab_factory: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import msgspec

    from reops.core.model import Hosts
    from reops.lab.agents import wait_for_agents
    from reops.ops.shell import exec_
    from reops.streams.source import source
    from reops.streams.stream import run

    info = lab_factory(hosts=2).info
    hosts = info.as_hosts()
    here, elsewhere = hosts.names
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    with start_hub(tmp_path / "home", heartbeat_s=HEARTBEAT, misses=40) as hub, \
            start_agents([here], hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "a",
                         extra=FLAGS, sources=info.hosts), \
            start_agents([elsewhere], hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "b",
                         extra=FLAGS):  # another machine (127.0.0.1) calling itself that
        wait_for_agents(hub.control_path, [here, elsewhere], timeout=60)
        auto = run(source(hosts, exec_("echo", "hi"), via="auto"))
        agent = run(source(hosts, exec_("echo", "hi"), via="agent"))
        pin = own_fingerprint(tmp_path / "b" / elsewhere)
        pinned = Hosts([msgspec.structs.replace(hosts[elsewhere], agent_key=pin)])
        by_pin = run(source(pinned, exec_("echo", "hi"), via="agent"))
        wrong = Hosts([msgspec.structs.replace(hosts[here], agent_key=pin)])
        by_wrong_pin = run(source(wrong, exec_("echo", "hi"), via="agent"))
    assert {r.host: (r.status, r.transport) for r in auto.results} == {
        here: ("ok", "agent"), elsewhere: ("ok", "ssh")}
    ok, refused = agent.results if agent.results[0].host == here else agent.results[::-1]
    assert (ok.status, ok.transport) == ("ok", "agent")
    assert (refused.status, refused.code) == ("unreachable", -1)
    assert refused.err == (f"agent {elsewhere} connects from 127.0.0.1, inventory says "
                           f"{info.hosts[elsewhere]}; pin agent_key or fix the address")
    assert (by_pin.results[0].status, by_pin.results[0].transport) == ("ok", "agent")
    assert by_wrong_pin.results[0].status == "unreachable"
    assert f"the inventory pins agent_key {pin}" in by_wrong_pin.results[0].err


def test_inventory_agent_key_field(tmp_path: Path) -> None:
    from reops.core.inventory import InventoryError, inventory

    path = tmp_path / "inventory.toml"
    path.write_text('[hosts.db1]\naddress = "10.0.0.21"\nagent_key = "ab:cd"\n')
    assert inventory(path)["db1"].agent_key == "ab:cd"
    path.write_text('[hosts.db1]\naddress = "10.0.0.21"\nagent_key = 3\n')
    with pytest.raises(InventoryError, match="agent_key must be"):
        inventory(path)


# ── on a terminal, `keys accept NAME` shows the fingerprint and asks ─────────────────


def accept_on_a_tty(home: Path, name: str, answer: bytes) -> tuple[int, str]:
    """Run `reops keys accept NAME` on a pseudo-terminal, answer its question; (code, text)."""
    import pty
    import select

    master, slave = pty.openpty()
    env = {**os.environ, "REOPS_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "reops", "keys", "accept", name],
                            stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    text, answered = b"", False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            text += chunk
            if not answered and b"[y/N]" in text:
                os.write(master, answer + b"\n")
                answered = True
        return proc.wait(10), text.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_accept_on_a_terminal_shows_the_fingerprint_and_asks(home: Path) -> None:
    keys = KeyStore(home / "keys")
    keys.add_pending("solo", "S" * 40)
    code, text = accept_on_a_tty(home, "solo", b"n")
    assert code == 2 and f"solo: key fingerprint {fingerprint('S' * 40)}" in text
    assert "solo not accepted" in text and keys.accepted_key("solo") is None
    code, text = accept_on_a_tty(home, "solo", b"y")
    assert code == 0 and "accepted solo" in text and keys.accepted_key("solo") == "S" * 40


def test_rationed_log_says_the_rest_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from reops.hub.limits import RationedLog

    log = logging.getLogger("reops.test.rationed")
    rationed = RationedLog(log, "claims", lines=2, interval=3600)
    with caplog.at_level(logging.INFO, logger="reops.test.rationed"):
        said = [rationed(logging.INFO, "claim %d", i) for i in range(50)]
        rationed.summary()
    assert said[:2] == [True, True] and not any(said[2:])
    assert [r.getMessage() for r in caplog.records] == [
        "claim 0", "claim 1", "48 more claims in the last 3600 s (not logged one by one)"]


async def test_identity_rules_without_a_network() -> None:
    from reops.control.identity import is_agent_for, mismatch
    from reops.core.model import Host

    key = "k" * 40
    seen = {"address": "::ffff:127.0.0.1", "fingerprint": fingerprint(key)}
    assert mismatch(Host(name="db1", address="127.0.0.1"), seen) is None  # IPv4-mapped
    assert await is_agent_for(Host(name="db1", address="localhost"), seen)  # resolved
    other = mismatch(Host(name="db1", address="127.0.3.4"), seen)
    assert other == ("agent db1 connects from 127.0.0.1, inventory says 127.0.3.4; pin "
                     "agent_key or fix the address")
    assert mismatch(Host(name="db1", address="127.0.3.4", agent_key=key), seen) is None
    pin = fingerprint(key).upper()
    assert mismatch(Host(name="db1", address="127.0.3.4", agent_key=pin), seen) is None
    assert not await is_agent_for(Host(name="db1", address="127.0.0.1", agent_key="00:11"),
                                  seen)


async def test_agent_and_bus_keys_never_mix(hub: LabHub, client: HubClient,
                                            tmp_path: Path) -> None:
    """An agent named `bus-…` would have its key accepted for the bus; a bus key
    registering as an agent would gain the agent role. Both are refused, nothing pending."""
    ctx = zmq.asyncio.Context()
    try:
        public, secret = load_keypair(tmp_path / "sneaky", "agent")
        sock = dealer(ctx, hub, public, secret)
        await sock.send(encode(Hello(name="bus-sneaky")))
        refused = await expect(sock, Refused)
        assert "may not start with 'bus-'" in refused.reason

        bus_public, bus_secret = load_keypair(tmp_path / "subscriber", "agent")
        KeyStore(hub.keys_dir).pre_accept("bus-subscriber", bus_public.decode())
        sock = dealer(ctx, hub, bus_public, bus_secret)
        await sock.send(encode(Hello(name="web9")))
        refused = await expect(sock, Refused)
        assert "accepted for the bus" in refused.reason
    finally:
        ctx.destroy(0)
    keys = {k["name"]: k["state"] for k in await client.request("keys")}
    assert keys == {"bus-subscriber": "accepted"}  # neither hello recorded a pending key
    assert "agent bus-sneaky refused" in hub.log and "agent web9 refused" in hub.log
