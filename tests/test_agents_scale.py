"""Many agents per hub: reconnects spread by jittered backoff; key checks off the slow path.

The backoff generator is checked deterministically (seeded RNG). The restart test runs real
agents (the `Agent` class, CurveZMQ on loopback) against a real hub process that is stopped
and started again on the same endpoint: the agents' own recorded reconnect attempts and the
hub's registration times must not all fall in one 100 ms window (libzmq's fixed interval
put every agent's retry within its 100 ms jitter of the others').
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from reops_agent.agent import Agent, AgentConfig
from reops_agent.backoff import Backoff
from reops_agent.protocol import Call, Done

from reops.control.client import HubClient
from reops.hub.calls import CallTable, InFlight
from reops.hub.keystore import KeyStore
from reops.lab.agents import await_agents, start_hub

# ── the backoff generator ─────────────────────────────────────────────────────────────


def test_backoff_windows_double_to_the_cap_and_delays_are_drawn_inside() -> None:
    b = Backoff(base=0.1, cap=2.0, rng=random.Random(7))
    windows, delays = [], []
    for _ in range(8):
        windows.append(b.window())
        delays.append(b.next())
    assert windows == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert all(0.0 <= d <= w for d, w in zip(delays, windows, strict=True))
    assert len(set(delays)) == len(delays)  # drawn, not a fixed schedule
    b.reset()
    assert b.window() == 0.1 and b.attempt == 0


def test_backoff_spreads_a_crowd_and_is_reproducible_with_a_seed() -> None:
    def crowd(seed: int) -> list[float]:
        return [Backoff(0.1, 30.0, random.Random(seed * 10_000 + i)).next()
                for i in range(1000)]

    first = crowd(1)
    assert crowd(1) == first  # seeded: the same delays again
    assert crowd(2) != first
    # 1,000 agents' first retries cover the whole window, not one instant
    assert min(first) < 0.01 and max(first) > 0.09
    buckets = [0] * 10
    for d in first:
        buckets[min(9, int(d / 0.01))] += 1
    assert max(buckets) < 200  # roughly uniform: no tenth of the window holds a fifth


def test_backoff_refuses_a_nonsense_window() -> None:
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base=0.0, cap=1.0)
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base=2.0, cap=1.0)


# ── a real hub restarted under real agents ───────────────────────────────────────────

AGENTS = 12


async def _registered_at(path: Path) -> dict[str, float]:
    client = HubClient(path)
    try:
        return {a["name"]: a["registered_at"] for a in await client.request("agents")
                if a["state"] == "connected"}
    finally:
        await client.close()


def test_agents_come_back_spread_out_after_a_hub_restart(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "home")
    store = KeyStore(hub.keys_dir)
    names = [f"r{i}" for i in range(AGENTS)]
    configs = []
    for name in names:
        public, secret = zmq.curve_keypair()
        store.pre_accept(name, public.decode())
        configs.append(AgentConfig(hub=hub.bind, hub_key=hub.key.encode(), public_key=public,
                                   secret_key=secret, name=name, reconnect_max_s=2.0))

    async def scenario() -> tuple[float, list[Agent], dict[str, float]]:
        agents = [Agent(cfg) for cfg in configs]
        runs = [threading.Thread(target=a.run) for a in agents]  # each its own poll loop
        for t in runs:
            t.start()
        try:
            await await_agents(hub.control_path, names, timeout=30)
            stopped = time.monotonic()
            await asyncio.to_thread(hub.stop)
            # every agent has noticed and retried at least once before the hub is back
            async with asyncio.timeout(30):
                while not all(any(t > stopped for t in a.attempts) for a in agents):
                    await asyncio.sleep(0.02)
            await asyncio.to_thread(hub.start)
            await await_agents(hub.control_path, names, timeout=30)
            return stopped, agents, await _registered_at(hub.control_path)
        finally:
            for a in agents:
                a.stop()
            for t in runs:
                await asyncio.to_thread(t.join, 30)
            assert not any(t.is_alive() for t in runs)  # stop() ends each loop

    try:
        stopped, agents, registered = asyncio.run(scenario())
    finally:
        hub.stop()
    assert sorted(registered) == sorted(names)
    # the agents' own record: each retried more than once, at times of its own
    last = [max(a.attempts) for a in agents]
    assert all(sum(t > stopped for t in a.attempts) >= 2 for a in agents)
    assert max(last) - min(last) > 0.1, last
    # and the hub saw them arrive spread out, not as one burst
    times = sorted(registered.values())
    assert times[-1] - times[0] > 0.1, times


# ── the key store's bus-key cache (asked at every registration) ──────────────────────


def test_accepted_keys_by_prefix_is_cached_and_sees_other_writers(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    store.ensure()
    store.pre_accept("bus-ops", "K" * 40)
    store.pre_accept("web1", "W" * 40)
    accepted = tmp_path / "keys" / "accepted"
    os.utime(accepted, ns=(10**18, 10**18))  # a settled folder (its change is long past)
    keys = store.accepted_keys("bus-")
    assert keys == frozenset({"K" * 40})
    assert store.accepted_keys("bus-") is keys  # cached: no re-read
    store.pre_accept("web2", "V" * 40)  # our own write of another role keeps it warm
    assert store.accepted_keys("bus-") is keys
    # (mtimes are coarse: each outside change below comes after the folder settled)
    os.utime(accepted, ns=(2 * 10**18, 2 * 10**18))
    assert store.accepted_keys("bus-") == keys
    other = KeyStore(tmp_path / "keys")  # `reops keys accept` in another process
    other.pre_accept("bus-late", "L" * 40)
    assert store.accepted_keys("bus-") == frozenset({"K" * 40, "L" * 40})
    os.utime(accepted, ns=(3 * 10**18, 3 * 10**18))
    assert store.accepted_keys("bus-") == frozenset({"K" * 40, "L" * 40})
    other.reject("bus-ops")
    assert store.accepted_keys("bus-") == frozenset({"L" * 40})


# ── the hub's call table: one deadline timer per instant, not one per call ───────────


def test_a_fan_out_shares_deadline_timers_and_still_expires_each_call() -> None:
    async def scenario() -> tuple[int, int, list[tuple[str, dict[str, Any]]], list[int]]:
        expired: list[int] = []
        table = CallTable(100_000, on_expire=lambda e: expired.append(e.call.id))
        results: list[tuple[str, dict[str, Any]]] = []
        for i in range(1000):
            call = Call(id=table.next_id(), fn="ping", timeout=0.05)
            table.add(InFlight(agent=f"a{i}", call=call,
                               on_done=lambda h, r: results.append((h, r)), on_line=None),
                      0.05)
        timers = len(table._buckets)
        for i in range(1, 1000):  # every call but the first is answered
            table.done(f"a{i}", Done(id=i + 1, status="ok", code=0, out="pong"))
        left = len(table._buckets)
        async with asyncio.timeout(10):
            while len(results) < 1000:
                await asyncio.sleep(0.01)
        return timers, left, results, expired

    timers, left, results, expired = asyncio.run(scenario())
    assert timers <= 2  # 1,000 calls due at about the same instant: one or two buckets
    assert left == timers  # the unanswered call keeps its bucket's timer
    late = [(h, r) for h, r in results if r["status"] != "ok"]
    assert late == [("a0", {"status": "timeout", "code": -1, "out": "",
                            "err": "no answer from agent a0 within 0.05 s",
                            "started_at": late[0][1]["started_at"],
                            "duration_s": late[0][1]["duration_s"], "data": None})]
    assert expired == [1]  # and its agent is told to stop it
