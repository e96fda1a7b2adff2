"""The hub's memory per registered agent (issue 13 item 5: <= 25 KB per idle agent).

libzmq's share of an idle agent's connection is measured in bench/bench_zmq_memory.py
(~40 KB over CURVE with ZAP, 12 KB of it the connection's pipe to the ZAP handler, which
libzmq keeps until the connection ends); what the hub itself keeps per agent must stay small
beside it. A real Fleet and ZAP authenticator serve real CURVE DEALER peers on loopback.
Counts, not RSS, so nothing flakes with load: tracemalloc's bytes held by the hub's modules,
and glibc's bytes in use (mallinfo2) before and after the ZAP socket is renewed.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
from pathlib import Path

import zmq
import zmq.asyncio
from reops_agent.protocol import Beat, Hello, encode

from reops.control.settings import HubSettings
from reops.hub import memory
from reops.hub.fleet import Fleet
from reops.hub.keystore import KeyStore
from reops.hub.zap import Authenticator

AGENTS = 1000
#: bytes the hub's Python objects may keep per registered agent
BOUND = 1024
FUNCTIONS = ["ping", "shell", "facts", "metrics", "files.read", "files.write", "service"]


def _peers(endpoint: str, hub_key: bytes, names: list[str], go: threading.Event,
           done: threading.Event) -> None:
    """One DEALER per name (one key for all, like bench_agents' simulated agents)."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(names) + 16)
    public, secret = zmq.curve_keypair()
    socks = []
    try:
        for name in names:
            s = ctx.socket(zmq.DEALER)
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = hub_key, public, secret
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            s.send(encode(Hello(name=name, hostname=f"host-{name}", os="Linux 6.1",
                                python="3.11.2", version="0.1.0", pid=4242,
                                functions=list(FUNCTIONS))))
            socks.append(s)
        go.set()
        done.wait(120)
    finally:
        for s in socks:
            s.close(0)
        ctx.term()


async def _hub_bytes_per_agent(tmp: Path, n: int) -> float:
    keys = KeyStore(tmp / "keys")
    keys.ensure()
    public, _ = keys.hub_keypair()
    names = [f"m{i}" for i in range(n)]
    ctx = zmq.asyncio.Context()
    zap = Authenticator(ctx, keys)
    fleet = Fleet(ctx, HubSettings(bind="tcp://127.0.0.1:*", keys_dir=str(tmp / "keys"),
                                   auto_accept=True), keys, lambda topic, data: None)
    tasks = [asyncio.create_task(zap.serve()), asyncio.create_task(fleet.serve())]
    go, done = threading.Event(), threading.Event()
    tracemalloc.start()
    try:
        # one agent first: its key, caches and dict growth are not per agent
        peers0 = threading.Thread(target=_peers, args=(fleet.endpoint, public, ["warm"],
                                                      threading.Event(), done))
        peers0.start()
        async with asyncio.timeout(60):
            while len(fleet.registry) < 1:
                await asyncio.sleep(0.01)
        gc.collect()
        before = tracemalloc.take_snapshot()
        peers = threading.Thread(target=_peers, args=(fleet.endpoint, public, names, go, done))
        peers.start()
        async with asyncio.timeout(120):
            while len(fleet.registry) < n + 1 or len(fleet.conns) < n + 1:
                await asyncio.sleep(0.01)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(peers0.join, 30)
        if go.is_set() or peers.is_alive():
            await asyncio.to_thread(peers.join, 30)
        fleet.close()
        zap.close()
        ctx.term()
    held = [tracemalloc.Filter(True, "*/reops/hub/*"),
            tracemalloc.Filter(True, "*/reops_agent/protocol.py")]
    grown = after.filter_traces(held).compare_to(before.filter_traces(held), "filename")
    return sum(s.size_diff for s in grown) / n


def test_a_registered_idle_agent_costs_the_hub_under_a_kilobyte_of_python(
        tmp_path: Path) -> None:
    per_agent = asyncio.run(_hub_bytes_per_agent(tmp_path, AGENTS))
    assert 0 < per_agent <= BOUND, f"{per_agent:.0f} B of Python objects per agent"


async def _until(cond: object, timeout: float, what: str) -> None:
    """Await `cond()` true, checking every 10 ms, at most `timeout` s."""
    try:
        async with asyncio.timeout(timeout):
            while not cond():  # type: ignore[operator]
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


async def _renewal(tmp: Path, n: int, *, quiet_s: float, renew_after: int) -> dict[str, int]:
    """Register `n` agents; renew the ZAP socket (itself, or by hand when it would not);
    then one more agent registers. Returns glibc's heap in use around the renewal."""
    keys = KeyStore(tmp / "keys")
    keys.ensure()
    public, _ = keys.hub_keypair()
    ctx = zmq.asyncio.Context()
    zap = Authenticator(ctx, keys, quiet_s=quiet_s, renew_after=renew_after)
    fleet = Fleet(ctx, HubSettings(bind="tcp://127.0.0.1:*", keys_dir=str(tmp / "keys"),
                                   auto_accept=True), keys, lambda topic, data: None)
    tasks = [asyncio.create_task(zap.serve()), asyncio.create_task(fleet.serve())]
    done = threading.Event()
    threads = [threading.Thread(target=_peers, args=(
        fleet.endpoint, public, [f"m{i}" for i in range(n)], threading.Event(), done))]
    out: dict[str, int] = {}
    try:
        threads[0].start()
        await _until(lambda: len(fleet.registry) == n, 60, f"{n} agents registered")
        out["answered"] = zap.answered
        if renew_after > n:  # by hand: measure the heap around it
            out["in_use_before"] = memory.heap_in_use() or 0
            zap.renew()
            # the sessions drop their ZAP pipes on libzmq's threads: wait for the heap
            await _until(lambda: (memory.heap_in_use() or 0)
                         < out["in_use_before"] - n * 16_384,
                         30, f"{n} ZAP pipes (~33 KB each) released")
            out["in_use_after"] = memory.heap_in_use() or 0
        await _until(lambda: zap.renewals == 1, 30, "the ZAP socket renewed")
        out["reachable"] = sum(fleet._send(rec.routing, Beat()) is None
                               for rec in fleet.registry)
        threads.append(threading.Thread(target=_peers, args=(
            fleet.endpoint, public, ["late"], threading.Event(), done)))
        threads[1].start()
        await _until(lambda: "late" in fleet.registry.by_name, 30,
                     "a new agent registered through the renewed ZAP socket")
        out["renewals"] = zap.renewals
    finally:
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for th in threads:
            await asyncio.to_thread(th.join, 30)
        fleet.close()
        zap.close()
        ctx.term()
    return out


def test_renewing_the_zap_socket_releases_every_connections_pipe_and_keeps_serving(
        tmp_path: Path) -> None:
    n = 300
    out = asyncio.run(_renewal(tmp_path, n, quiet_s=3600, renew_after=10**9))
    assert out["answered"] == n
    assert out["in_use_before"] - out["in_use_after"] >= n * 16_384, out
    assert out["reachable"] == n  # the agents' connections are untouched
    assert out["renewals"] == 1


def test_the_zap_socket_renews_itself_once_a_burst_of_handshakes_is_over(
        tmp_path: Path) -> None:
    out = asyncio.run(_renewal(tmp_path, 120, quiet_s=0.2, renew_after=100))
    assert out["renewals"] == 1  # once: the late agent alone is no burst
