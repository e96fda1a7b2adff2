"""Another process's published Result, read from a real hub's bus, as a trigger:
`on(bus("result.check.failed.*"), hosts=lab) | then(exec_, …)` runs on that host."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reops import bus, exec_, then
from reops.control.bus import read_keypair
from reops.control.client import request_sync
from reops.core.model import Result
from reops.lab.agents import LabHub
from reops.lab.fleet import LabInfo
from reops.streams.triggers.on import on

DEADLINE_S = 30.0

PUBLISH = '''
"""Publish one failed check of web3 with `| publish()`; print how many were sent."""
import time
import reactivex
from reops import publish
from reops.core.model import Host, Hosts, Result
from reops.sinks.bus import publisher
from reops.streams.stream import Stream, run

down = Result(host="web3", op="check", status="failed", code=3, err="webapp is down")
run(Stream(reactivex.just(down), Hosts([Host(name="web3", address="127.0.0.1")])) | publish())
end = time.monotonic() + 30
while publisher().sent < 1 and time.monotonic() < end:  # sent once the hub's bus took it
    time.sleep(0.02)
print(publisher().sent, flush=True)
'''


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LabHub]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {"REOPS_HUB_CONTROL": "", "REOPS_HUB_KEYS_DIR": "",
           "REOPS_HUB_BUS_IN": "tcp://127.0.0.1:*", "REOPS_HUB_BUS_OUT": "tcp://127.0.0.1:*",
           "REOPS_CONFIG": str(home / "none.toml")}
    with LabHub(home=home, env=env, bind="tcp://127.0.0.1:*").start() as h:
        yield h


def until(cond: Callable[[], Any], what: str) -> Any:
    """Poll `cond` until it is truthy, failing with `what` at the deadline."""
    end = time.monotonic() + DEADLINE_S
    while not (value := cond()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def test_a_published_failure_triggers_the_next_step_on_its_host(hub: LabHub, lab: LabInfo,
                                                                 tmp_path: Path) -> None:
    got: list[Result] = []
    errors: list[Exception] = []
    cond = threading.Condition()

    def on_next(r: Result) -> None:
        with cond:
            got.append(r)
            cond.notify_all()

    def on_error(e: Exception) -> None:
        with cond:
            errors.append(e)
            cond.notify_all()

    keys = read_keypair(hub.keys_dir, "hub")
    failures = bus("result.check.failed.*", hub=hub.control_path, keys=keys)
    heal = on(failures, hosts=lab.as_hosts().only(["web3"])) | then(exec_, "echo healed")
    sub = heal.subscribe(on_next, on_error)
    try:
        until(lambda: "result.check.failed." in request_sync(
            hub.control_path, "bus.stats")["subscriptions"], "the bus subscription")
        script = tmp_path / "publish.py"
        script.write_text(PUBLISH)
        env = {**os.environ, "REOPS_HOME": str(hub.home), "REOPS_HUB_CONTROL": "",
               "REOPS_HUB_KEYS_DIR": "", "REOPS_CONFIG": str(hub.home / "none.toml")}
        sent = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=DEADLINE_S)
        assert sent.stdout.strip() == "1", sent.stderr
        with cond:
            assert cond.wait_for(lambda: got or errors, DEADLINE_S), "nothing triggered"
        assert not errors, errors[0]
        (r,) = got
        assert (r.host, r.op, r.status, r.out.strip()) == ("web3", "exec", "ok", "healed")
        event = r.steps[0].data
        assert (r.steps[0].op, event.key, event.payload.topic) == (
            "event.bus.result", "web3", "result.check.failed.web3")
        assert event.payload.body.to_result().err == "webapp is down"
    finally:
        sub.dispose()
