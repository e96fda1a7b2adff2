"""Triggers against real parts: lab hosts over SSH, real files (watchfiles), a real
`reops hub` process running the machines service on the libvirt test driver, and real
agents. Waits are on events or on a condition with a deadline, never on sleeps.

The test driver gives VMs addresses in 192.168.122.0/24, which nothing here may reach:
steps that run over SSH run on lab hosts standing in for the VMs by name
(`on(..., hosts=lab)`), as the inventory would say.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reactivex import operators as rx
from systems_fixtures import node_uri

from reops import Hosts, collect, exec_, run, then
from reops.control.client import HubClient, ping_sync
from reops.core.model import Result
from reops.core.runtime import get_runtime
from reops.lab.agents import start_agents, start_hub
from reops.lab.fleet import LabInfo
from reops.streams.triggers.agents import agent_changes
from reops.streams.triggers.clock import every
from reops.streams.triggers.event import TriggerEvent
from reops.streams.triggers.files import file_changed
from reops.streams.triggers.hypervisor import vm_started
from reops.streams.triggers.jobs import job_succeeded
from reops.streams.triggers.metrics import threshold
from reops.streams.triggers.on import on
from reops.systems.api import HubMachines
from tests.conftest import Seen

DEADLINE = 60.0
VM_NET = "192.168.122."


def one_of(lab: LabInfo, name: str) -> Hosts:
    return lab.as_hosts().only([name])


# ── clock and files ────────────────────────────────────────────────────────────────


def test_every_tick_runs_a_real_command_on_each_lab_host(lab: LabInfo) -> None:
    hosts = lab.as_hosts().only(["web1", "web2"])
    # the next tick is 30 s away: the first one's two Results end the run
    out = run(on(every("30s", immediately=True), hosts=hosts) | then(exec_, "echo $((6*7))")
              | rx.take(2))
    assert sorted(r.host for r in out.successful) == ["web1", "web2"]
    for r in out.successful:
        tick = r.steps[0]
        assert (tick.op, tick.data.source, tick.data.payload.n) == ("event.clock.tick",
                                                                    "clock", 0)
        assert r.op == "exec" and r.out.strip() == "42"


def test_threshold_over_real_cpu_samples_runs_the_next_step(lab: LabInfo) -> None:
    """`collect` samples the lab hosts over SSH; a condition every sample meets crosses at
    each host's first sample, and the next step runs on that host."""
    hosts = lab.as_hosts().only(["db1", "db2"])
    hot = threshold(collect(hosts, ["cpu"], every=2), "cpu.busy >= 0")
    out = run(on(hot) | then(exec_, "echo hot") | rx.take(2))
    assert sorted(r.host for r in out.successful) == ["db1", "db2"]
    for r in out.successful:
        crossed = r.steps[0].data
        assert (r.steps[0].op, crossed.key, crossed.host.address) == (
            "event.metric.crossed", r.host, lab.hosts[r.host])
        assert crossed.payload.condition == "cpu.busy >= 0" and crossed.payload.value >= 0
        assert r.out.strip() == "hot"


def test_file_changed_fires_for_real_writes_and_deletes(tmp_path: Path) -> None:
    ready = threading.Event()
    seen = Seen()
    sub = file_changed(tmp_path, glob="*.conf", debounce="50ms",
                       on_ready=ready.set).subscribe(seen, seen.error)
    try:
        assert ready.wait(DEADLINE)
        (tmp_path / "notes.txt").write_text("not watched: the glob leaves it out\n")
        conf = tmp_path / "app.conf"
        conf.write_text("port = 8080\n")
        events = seen.wait(lambda xs: any(e.key == str(conf) for e in xs), "app.conf written")
        assert {e.key for e in events} == {str(conf)}
        assert {e.kind for e in events} <= {"added", "modified"}
        e = events[0]
        assert (e.source, e.host, e.payload.path, e.topic) == (
            "file", None, str(conf), f"event.file.{e.kind}")
        conf.unlink()
        seen.wait(lambda xs: any(e.kind == "deleted" for e in xs), "app.conf deleted")
    finally:
        sub.dispose()


def test_file_changed_refuses_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no such file or directory: .*nope"):
        file_changed(tmp_path / "nope")


# ── hub: libvirt domains and jobs ─────────────────────────────────────────────────


class Hub:
    """A real `reops hub` process running the machines service on a libvirt test node."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.control = home / "run" / "hub.sock"
        (home / "config.toml").write_text(
            f'[hypervisors.lab]\nuri = "{node_uri(home)}"\n\n[machines]\n'
            'default_hypervisor = "lab"\nstop_timeout = 5\nip_timeout = 5\n'
            'connect_timeout = 5\n')
        env = {**os.environ, "REOPS_HOME": str(home), "REOPS_CONFIG": str(home / "config.toml"),
               "REOPS_HUB_BIND": "tcp://127.0.0.1:*", "REOPS_HUB_CONTROL": str(self.control),
               "REOPS_HUB_SERVICES": "reops.systems.service:attach"}
        self.proc = subprocess.Popen([sys.executable, "-m", "reops.hub"], env=env,
                                     stderr=(home / "hub.log").open("wb"))
        ping_sync(self.control, timeout=30, wait=True)
        self.api = HubMachines(HubClient(self.control))

    def call(self, coro: Any) -> Any:
        """Run a Machines API call on the runtime loop (where its client lives)."""
        return get_runtime().call(coro)

    def create(self, type_name: str, hostname: str) -> Any:
        (job,) = self.call(self.api.wait(self.call(
            self.api.create(type_name, ["tiny"], None, None, hostname))))
        assert job.state == "succeeded", job.error
        return job

    def close(self) -> None:
        self.call(self.api.aclose())
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path)
    try:
        h.call(h.api.add_type("redis", "", None, {}))
        h.call(h.api.add_type("web", "", None, {}))
        yield h
    finally:
        h.close()


def test_vm_started_by_selector_carries_the_vms_address_and_runs_the_next_step(
        hub: Hub, lab: LabInfo) -> None:
    """A real domain start in the hub fires vm_started for typed:redis only, with the
    address the create job found; the next step runs for that system (on the lab host
    that stands in for it by name)."""
    raw, ran, jobs = Seen(), Seen(), Seen()
    ready = [threading.Event() for _ in range(3)]
    subs = [
        vm_started("typed:redis", hub=hub.control, on_ready=ready[0].set).subscribe(
            raw, raw.error),
        (on(vm_started("typed:redis", hub=hub.control, on_ready=ready[1].set),
            hosts=one_of(lab, "cache1")) | then(exec_, "echo $((6*7))")).subscribe(
            ran, ran.error),
        job_succeeded(["create"], hub=hub.control, on_ready=ready[2].set).subscribe(
            jobs, jobs.error),
    ]
    try:
        assert all(r.wait(DEADLINE) for r in ready)
        hub.create("web", "w1")  # not typed:redis: must not fire
        created = hub.create("redis", "cache1")

        (e,) = raw.wait(lambda xs: len(xs) >= 1, "vm_started of cache1")
        assert (e.source, e.kind, e.key, e.topic) == ("libvirt", "started", "cache1",
                                                      "event.libvirt.started")
        assert (e.payload.type, e.payload.system_id) == ("redis", created.system_id)
        assert e.payload.event == "STARTED" and e.host is not None
        assert e.host.name == "cache1" and e.host.address.startswith(VM_NET)  # the job's

        (r,) = ran.wait(lambda xs: len(xs) >= 1, "the step after the event")
        assert isinstance(r, Result) and r.ok and r.out.strip() == "42", r
        assert r.host == "cache1" and r.steps[0].op == "event.libvirt.started"
        assert r.steps[0].data.host.address.startswith(VM_NET)

        done = jobs.wait(lambda xs: len(xs) >= 2, "both create jobs")
        assert [(j.kind, j.key, j.payload.op) for j in done] == [
            ("succeeded", "w1", "create"), ("succeeded", "cache1", "create")]
        assert all(j.host is not None and j.host.address.startswith(VM_NET) for j in done)
    finally:
        for s in subs:
            s.dispose()
    assert len(raw.items) == 1 and len(ran.items) == 1  # w1 never fired


def test_vm_trigger_bad_selector_and_no_hub_say_why(hub: Hub, tmp_path: Path) -> None:
    bad = Seen()
    sub = vm_started("typd:redis", hub=hub.control).subscribe(bad, bad.error)
    try:
        err = str(bad.wait_error())  # the hub's selector error: a line, then where
        assert err.startswith("unknown selector kind 'typd:' (did you mean 'typed:'")
    finally:
        sub.dispose()
    gone = Seen()
    sub = vm_started(hub=tmp_path / "none.sock").subscribe(gone, gone.error)
    try:
        err = str(gone.wait_error())
        assert "no reops hub is running" in err and "reops hub" in err
    finally:
        sub.dispose()


# ── agents ─────────────────────────────────────────────────────────────────────────


def test_agent_registered_lost_and_back_from_real_agents(tmp_path: Path) -> None:
    with start_hub(tmp_path / "home", heartbeat_s=0.25, misses=4) as lab_hub:
        ready = threading.Event()
        seen = Seen()
        sub = agent_changes(("registered", "lost", "back"), "t*", hub=lab_hub.control_path,
                            on_ready=ready.set).subscribe(seen, seen.error)
        try:
            assert ready.wait(DEADLINE)
            with start_agents(["t1"], lab_hub.bind, lab_hub.key, lab_hub.keys_dir,
                              workdir=tmp_path / "agents",
                              extra=["--reconnect-max", "0.3", "--heartbeat", "0.25"]
                              ) as agents:
                (e,) = seen.wait(lambda xs: len(xs) >= 1, "t1 registered")
                assert isinstance(e, TriggerEvent)
                assert (e.source, e.kind, e.key, e.payload.agent, e.topic) == (
                    "agent", "registered", "t1", "t1", "event.agent.registered")
                assert e.host is not None and e.host.address == "127.0.0.1"
                os.kill(agents.pid("t1"), signal.SIGSTOP)  # silent: no heartbeats
                try:
                    events = seen.wait(lambda xs: any(x.kind == "lost" for x in xs), "t1 lost")
                finally:
                    os.kill(agents.pid("t1"), signal.SIGCONT)
                lost = next(x for x in events if x.kind == "lost")
                assert lost.key == "t1" and lost.host.address == "127.0.0.1"  # remembered
                events = seen.wait(lambda xs: any(x.kind == "back" for x in xs), "t1 back")
                assert [x.kind for x in events] == ["registered", "lost", "back"]
        finally:
            sub.dispose()
