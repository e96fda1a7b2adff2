"""kill -9 of `reops hub` while it runs a job on real QEMU: after a restart nothing is lost.

The hub runs Machines as a service (`[hub] services`); a graceful stop of a diskless guest
waits for an ACPI shutdown that never comes, so the job is reliably mid-flight when the hub
is killed. The next hub marks it interrupted and does not retry it (stopping runs
`shutdown` on physical machines: never replayed blindly); the QEMU process — which outlived
the hub — is stopped when the operator runs stop again, as the job's note says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from systems_fixtures import qemu_root
from test_systems_qemu import _why_not

from reops.control.client import HubClient, ping_sync
from reops.control.wire import Event
from reops.systems.api import HubMachines

pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


class Hubs:
    """Hub processes for one test, sharing one home; each is SIGKILLed if left running."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.control = home / "run" / "hub.sock"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "REOPS_HOME": str(self.home),
               "REOPS_CONFIG": str(self.home / "config.toml"),
               "REOPS_HUB_BIND": "tcp://127.0.0.1:*", "REOPS_HUB_CONTROL": str(self.control),
               "REOPS_HUB_SERVICES": "reops.systems.service:attach"}
        proc = subprocess.Popen([sys.executable, "-m", "reops.hub"], env=env,
                                stderr=(self.home / f"hub{len(self.procs)}.log").open("wb"))
        self.procs.append(proc)
        ping_sync(self.control, timeout=30, wait=True)  # waits for the socket, then answers
        return proc

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.fixture
def hubs(tmp_path: Path) -> Iterator[Hubs]:
    (tmp_path / "config.toml").write_text(
        f'[hypervisors.qemu]\nuri = "qemu:///embed?root={qemu_root("-hub")}"\nnetwork = ""\n\n'
        "[machines]\nstop_timeout = 3\n")
    h = Hubs(tmp_path)
    yield h
    h.close()


async def test_kill_9_mid_job_then_restart(hubs: Hubs) -> None:
    hub_a = hubs.start()
    api = HubMachines(HubClient(hubs.control))
    await api.add_type("tiny", "", None, {})
    (created,) = await api.wait(await api.create("tiny", ["tiny", "ram=64", "disk_gb=0"],
                                                 None, None, "k1"))
    assert created.state == "succeeded", created.error

    events = api.client.pieces("subscribe", topics=["jobs"])
    assert await anext(events) == Event(topic="subscribed", data={})
    (stop,) = await api.submit("stop", "k1")
    async for item in events:  # the stop is running: the guest ignores ACPI for 3 s
        assert isinstance(item, Event)
        if item.data["job"]["id"] == stop.id and item.data["event"] == "started":
            break
    hub_a.send_signal(signal.SIGKILL)
    hub_a.wait()
    await events.aclose()
    await api.aclose()

    hubs.start()
    api = HubMachines(HubClient(hubs.control))
    try:
        first = await api.job(stop.id)
        assert first.state == "interrupted" and f"(pid {hub_a.pid})" in first.error
        assert "not retried because stop is not idempotent" in first.error
        assert first.retried_by is None and await api.wait([first]) == [first]
        assert "`reops systems stop " in first.error
        (again,) = await api.wait(await api.submit("stop", "k1"))  # the operator's rerun
        assert again.state == "succeeded", again.error
        assert again.result == {"stop": "destroyed: no clean shutdown within 3s"}
        assert (await api.systems("k1"))[0].state == "stopped"
        assert [j.op for j in await api.jobs(None)] == ["create", "stop", "stop"]
    finally:
        await api.wait(await api.submit("destroy", "k1"))
        await api.aclose()
