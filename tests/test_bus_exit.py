"""A publisher's exit waits until the hub has read what it sent (`bus.seen`), so nothing is in
flight when its connection closes: libzmq drops the unread tail of a connection whose peer
goes away while the hub holds it back (seen as `test_hub_status` losing ~800 of 5,000
messages, uncounted, about once in 20 runs). Real hub, real publisher process, the hub
frozen with SIGSTOP so that it is certainly behind when the publisher exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reops.control.client import request_sync
from reops.lab.agents import LabHub

DEADLINE_S = 60.0

PUBLISHER = '''\
"""Publish one Result (the connection is up), then on a line from stdin N more; exit."""
import json, sys, threading, time
import reactivex
from reops import publish
from reops.core.model import Host, Hosts, Result
from reops.core.runtime import get_runtime
from reops.sinks import bus
from reops.sinks.bus import publisher
from reops.streams.stream import Stream

bus.LINGER_S = 60.0  # the exit's wait for the hub, longer than the test keeps it frozen
hosts = Hosts([Host(name="h1", address="127.0.0.1")])


def burst(n):
    done = threading.Event()
    results = (Result(host="h1", op="status", status="ok", code=0, out="x" * 4096)
               for _ in range(n))
    (Stream(reactivex.from_iterable(results), hosts) | publish()).subscribe(
        on_completed=done.set)
    done.wait()
    pub, end = publisher(), time.monotonic() + 60
    while pub.sent + pub.dropped < total[0] + n and time.monotonic() < end:
        get_runtime().barrier()
        time.sleep(0.02)
    total[0] += n
    return pub


total = [0]
while burst(1).sent == 0:  # until the hub has answered the connection
    time.sleep(0.05)
print("ready", flush=True)
sys.stdin.readline()
pub = burst(int(sys.argv[1]))
print(json.dumps({"sent": pub.sent, "dropped": pub.dropped}), flush=True)
'''


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LabHub]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {"REOPS_HUB_CONTROL": "", "REOPS_HUB_KEYS_DIR": "",
           "REOPS_HUB_BUS_IN": "tcp://127.0.0.1:*", "REOPS_HUB_BUS_OUT": "tcp://127.0.0.1:*",
           "REOPS_HUB_BUS_HWM": "50", "REOPS_CONFIG": str(home / "none.toml")}
    with LabHub(home=home, env=env, bind="tcp://127.0.0.1:*").start() as h:
        yield h
        if h.proc is not None and h.proc.poll() is None:
            os.kill(h.proc.pid, signal.SIGCONT)  # never leave it frozen for the stop


def test_exit_waits_until_the_hub_has_read_what_was_sent(hub: LabHub, tmp_path: Path) -> None:
    assert hub.proc is not None
    (tmp_path / "pub.py").write_text(PUBLISHER)
    env = {**os.environ, "REOPS_HOME": str(hub.home), "REOPS_HUB_CONTROL": "",
           "REOPS_HUB_KEYS_DIR": "", "REOPS_CONFIG": str(hub.home / "none.toml")}
    # few enough to sit in the socket buffers: libzmq's own linger lets the process go
    # at once, while the frozen hub has read none of them
    proc = subprocess.Popen([sys.executable, str(tmp_path / "pub.py"), "8"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    frozen = False
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr
        os.kill(hub.proc.pid, signal.SIGSTOP)
        frozen = True
        proc.stdin.write("go\n")
        proc.stdin.flush()
        counted = json.loads(proc.stdout.readline())
        assert counted["sent"] + counted["dropped"] == 1 + 8 and counted["sent"] > 1
        # the hub is frozen, so it cannot have read them: the publisher must still wait
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3.0)
        os.kill(hub.proc.pid, signal.SIGCONT)
        frozen = False
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if frozen:
            os.kill(hub.proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "may be lost" not in err, err
    # everything sent was read by the hub before the process left
    got = request_sync(hub.control_path, "bus.stats")["received"]
    assert got == counted["sent"]


def test_seen_answers_at_once_when_nothing_is_missing_and_says_so_when_it_is(
        hub: LabHub) -> None:
    # a publisher the hub never heard of: 0 read; asked for nothing, answered at once
    assert request_sync(hub.control_path, "bus.seen",
                        {"src": "nobody", "sent": 0, "wait": 30}) == {"seen": 0}
    # asked for 5 that never come: the hub answers after the wait with what it has
    assert request_sync(hub.control_path, "bus.seen",
                        {"src": "nobody", "sent": 5, "wait": 0.2}) == {"seen": 0}
    bad = request_sync(hub.control_path, "bus.seen", {"sent": 5})
    assert "src" in bad["error"]
