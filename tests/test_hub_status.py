"""`reops hub status` against a real `reops hub` process: a real agent connected over CURVE,
a flow running in the hub, a never-reading CURVE subscriber on the bus while a publisher
process bursts; and exit 3 with one line when no hub runs. Waits poll with a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from reops.control.client import request_sync
from reops.hub.keystore import KeyStore
from reops.lab.agents import LabHub, await_agents, start_agents

DEADLINE_S = 60.0

FLOW = '''\
"""Waits for nothing, forever: a flow that stays running."""
import reactivex
from reops.flows import flow


@flow
def idle() -> object:
    """Never emits, never ends."""
    return reactivex.never()
'''

PUBLISHER = '''\
"""Publish N Results of SIZE bytes through `| publish()`, then one that carries the final
drop count to the hub; print what the publisher counted."""
import json, sys, threading, time
import reactivex
from reops import publish
from reops.core.model import Host, Hosts, Result
from reops.core.runtime import get_runtime
from reops.sinks import bus
from reops.sinks.bus import publisher
from reops.streams.stream import Stream

# what was handed to ZeroMQ must reach the hub before this process exits, however loaded
# the machine: the default bounded linger (2 s) may discard a queued tail at exit
bus.LINGER_S = 60.0
hosts = Hosts([Host(name="h1", address="127.0.0.1")])


def pipeline(n, size):
    done = threading.Event()
    results = (Result(host="h1", op="status", status="ok", code=0, out="x" * size)
               for _ in range(n))
    (Stream(reactivex.from_iterable(results), hosts) | publish()).subscribe(
        on_completed=done.set)
    done.wait()


def settled(total):
    """Wait (bounded) until each of `total` messages was sent or counted as dropped."""
    pub, end = publisher(), time.monotonic() + 60
    while pub.sent + pub.dropped < total and time.monotonic() < end:
        get_runtime().barrier()
        time.sleep(0.02)
    return pub


n, size = int(sys.argv[1]), int(sys.argv[2])
pipeline(n, size)
pub, total = settled(n), n
burst = {"sent": pub.sent, "dropped": pub.dropped}
while True:  # one more, sent (not dropped): its header tells the hub the final count
    sent = pub.sent
    pipeline(1, 1)
    total += 1
    settled(total)
    if pub.sent > sent:
        break
    time.sleep(0.1)
print(json.dumps({**burst, "final_dropped": pub.dropped, "total_sent": pub.sent}), flush=True)
'''


def until(check: Callable[[], Any], what: str,
          seen: Callable[[], str] | None = None) -> Any:
    """Poll `check` until it returns something true; fail naming `what` (and what was
    `seen`) at the deadline."""
    end = time.monotonic() + DEADLINE_S
    while not (value := check()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}"
                                 + (f": {seen()}" if seen is not None else ""))
        time.sleep(0.05)
    return value


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LabHub]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {"REOPS_HUB_CONTROL": "", "REOPS_HUB_KEYS_DIR": "",
           "REOPS_HUB_BUS_IN": "tcp://127.0.0.1:*", "REOPS_HUB_BUS_OUT": "tcp://127.0.0.1:*",
           "REOPS_HUB_BUS_HWM": "50", "REOPS_CONFIG": str(home / "none.toml")}
    with LabHub(home=home, env=env, bind="tcp://127.0.0.1:*").start() as h:
        yield h


def env_of(hub: LabHub) -> dict[str, str]:
    return {**os.environ, "REOPS_HOME": str(hub.home), "REOPS_HUB_CONTROL": "",
            "REOPS_HUB_KEYS_DIR": "", "REOPS_CONFIG": str(hub.home / "none.toml")}


def reops(hub: LabHub, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops.cli.main", *args], env=env_of(hub),
                          capture_output=True, text=True, timeout=DEADLINE_S,
                          stdin=subprocess.DEVNULL)


def status(hub: LabHub) -> dict[str, Any]:
    done = reops(hub, "hub", "status", "-o", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_status_reports_agent_flow_and_bus(hub: LabHub, tmp_path: Path) -> None:
    before = status(hub)
    assert hub.proc is not None and before["pid"] == hub.proc.pid
    assert before["agents"] == {"connected": 0, "lost": 0, "pending": 0}
    assert before["flows"]["running"] == 0 and before["since"] <= time.time()
    assert before["endpoints"]["agents"] == hub.bind

    # a real agent over CURVE, and a key left pending
    with start_agents(["web1"], hub.bind, hub.key, hub.keys_dir,
                      workdir=tmp_path / "agents") as _agents:
        asyncio.run(await_agents(hub.control_path, ["web1"], timeout=DEADLINE_S))
        KeyStore(hub.keys_dir).add_pending("web2", zmq.curve_keypair()[0].decode())

        # a flow the hub keeps running
        (tmp_path / "idle.py").write_text(FLOW)
        started = reops(hub, "flows", "start", str(tmp_path / "idle.py"))
        assert started.returncode == 0, started.stderr
        until(lambda: status(hub)["flows"]["running"] == 1, "the flow running")

        # a subscriber that never reads, then a burst far larger than the queues between
        public, secret = zmq.curve_keypair()
        KeyStore(hub.keys_dir).pre_accept("bus-never", public.decode())
        bus = request_sync(hub.control_path, "bus.stats")
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 10)
        sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = (
            str(bus["key"]).encode(), public, secret)
        sub.setsockopt(zmq.SUBSCRIBE, b"result.")
        sub.connect(str(bus["out"]))
        try:
            until(lambda: request_sync(hub.control_path, "bus.stats")["subscriptions"]
                  .get("result.") == 1, "the subscription")
            (tmp_path / "pub.py").write_text(PUBLISHER)
            n = 5000
            pub = subprocess.run([sys.executable, str(tmp_path / "pub.py"), str(n), "4096"],
                                 env=env_of(hub), capture_output=True, text=True,
                                 timeout=DEADLINE_S * 2, stdin=subprocess.DEVNULL)
            assert pub.returncode == 0, pub.stderr
            counted = json.loads(pub.stdout)
            assert counted["sent"] + counted["dropped"] == n
            st = until(lambda: (s := status(hub))["bus"]["received"] >= counted["total_sent"]
                       and s, "the hub to receive what was sent",
                       lambda: f"hub bus {status(hub)['bus']}, publisher {counted}; hub log:"
                       f" {hub.log[-3000:]}")
        finally:
            sub.close(0)

    assert st["agents"] == {"connected": 1, "lost": 0, "pending": 1}
    assert st["flows"] == {"running": 1, "known": 1}
    bus_st = st["bus"]
    assert bus_st["subscribers"] >= 1 and bus_st["forwarded"] >= counted["total_sent"]
    # drops the hub can know: what each publisher says it dropped (its queue to the hub full)
    assert bus_st["publisher_drops"] == counted["final_dropped"] >= counted["dropped"]
    assert st["ssh_pool"] == {"connections": 0, "requests": 0}
    pretty = reops(hub, "hub", "status")
    assert pretty.returncode == 0, pretty.stderr
    assert f"pid {st['pid']}" in pretty.stdout and "1 connected" in pretty.stdout
    assert "flows: 1 running of 1" in pretty.stdout
    assert f"{counted['final_dropped']} by publishers" in pretty.stdout


def test_no_hub_is_exit_3_and_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    done = subprocess.run([sys.executable, "-m", "reops.cli.main", "hub", "status"],
                          env={**os.environ, "REOPS_HOME": str(home), "REOPS_HUB_CONTROL": ""},
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no reops hub is running" in done.stderr


def test_hub_help_lists_status() -> None:
    done = subprocess.run([sys.executable, "-m", "reops.cli.main", "hub", "--help"],
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0 and "reops hub status" in done.stdout
