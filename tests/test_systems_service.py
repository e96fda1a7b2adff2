"""Machines hosted in a real controller (the `reops hub` Controller) and used over its socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from systems_fixtures import config_toml

from reops.control.settings import HubSettings
from reops.hub.controller import Controller
from reops.hub.daemon import attach_services
from reops.systems.config import load_machines_config
from reops.systems.machines import Machines
from reops.systems.service import setup


class HubThread:
    """A controller with Machines set up, serving on its own loop in a thread."""

    def __init__(self, tmp: Path, via_attach: bool = False) -> None:
        self.via_attach = via_attach
        self.settings = HubSettings(bind="tcp://127.0.0.1:*", control=str(tmp / "run/hub.sock"),
                                    keys_dir=str(tmp / "keys"))
        self.tmp = tmp
        config_toml(tmp)
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.main(),))
        self.stop: asyncio.Event | None = None

    async def main(self) -> None:
        self.stop = asyncio.Event()
        controller = Controller(self.settings)
        if self.via_attach:  # as `reops hub` does with [hub] services
            attach_services(controller, ["reops.systems.service:attach"])
            self.loop.call_soon(self.ready.set)
            await controller.serve(self.stop)
            return
        m = await setup(controller, Machines.open(
            self.tmp, load_machines_config(self.tmp / "config.toml")))
        self.loop.call_soon(self.ready.set)
        try:
            await controller.serve(self.stop)
        finally:
            await m.aclose()

    def __enter__(self) -> HubThread:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(params=["setup", "attach"])
def hub(request: pytest.FixtureRequest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[HubThread]:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("REOPS_HUB_CONTROL", str(tmp_path / "run/hub.sock"))
    with HubThread(tmp_path, via_attach=request.param == "attach") as h:
        yield h


def test_cli_through_the_hub_keeps_machines_alive(hub: HubThread) -> None:
    from reops.cli.systems import jobs, systems, types

    cli = CliRunner()
    assert cli.invoke(types, ["add", "redis"]).exit_code == 0
    r = cli.invoke(systems, ["create", "redis", "--preset", "tiny", "--hostname", "r1"])
    assert r.exit_code == 0, r.output
    assert "succeeded   create" in r.output and "started     create" in r.output
    # a later command sees the same hypervisor connection: the VM is still running there
    listed = cli.invoke(systems, ["ls", "r1"]).output
    assert "running" in listed and "192.168.122." in listed
    r = cli.invoke(systems, ["stop", "r1", "--force"])
    assert r.exit_code == 0 and "stop=shut down" in r.output, r.output
    assert "stopped" in cli.invoke(systems, ["ls", "r1"]).output
    r = cli.invoke(systems, ["create", "nope"])
    assert r.exit_code == 2 and "unknown type 'nope'" in r.output
    assert "create" in cli.invoke(jobs, ["ls"]).output



async def test_api_through_the_hub(hub: HubThread) -> None:
    from reops.control.client import HubClient
    from reops.store.model import JobEvent, MachinesError
    from reops.systems.api import HubMachines
    from reops.systems.libvirt.events import HypervisorEvent

    api = HubMachines(HubClient(hub.settings.control_path))
    try:
        await api.add_type("web", "", None, {})
        seen: list[JobEvent] = []
        await api.follow()  # from here on no job event is missed, however fast the hub is
        jobs = await api.create("web", ["tiny", "count=2"], None, None, None)
        done = await api.wait(jobs, seen.append)
        assert [j.state for j in done] == ["succeeded", "succeeded"]
        for j in jobs:
            assert [e.event for e in seen if e.job.id == j.id] == [
                "queued", "started", "succeeded"]
        assert len(await api.systems("typed:web & running")) == 2
        with pytest.raises(MachinesError, match="unknown preset 'huge'"):
            await api.create("web", ["huge"], None, None, None)
        assert len(await api.systems()) == 2

        # events flow from the hub's hypervisor connection to a subscriber
        ready = asyncio.get_running_loop().create_future()
        got: asyncio.Queue[HypervisorEvent] = asyncio.Queue()
        watcher = asyncio.ensure_future(api.watch(["lab"], got.put_nowait,
                                                  lambda: ready.set_result(None)))
        await asyncio.wait_for(ready, 10)
        (stop,) = await api.wait(await api.submit("stop", jobs_host(done, await api.systems())))
        assert stop.state == "succeeded"
        ev = await asyncio.wait_for(got.get(), 10)
        assert (ev.hypervisor, ev.event, ev.detail) == ("lab", "STOPPED", "SHUTDOWN")
        watcher.cancel()
    finally:
        await api.aclose()


def jobs_host(jobs: list, systems: list) -> str:
    """The hostname of the first job's system."""
    return next(s.hostname for s in systems if s.id == jobs[0].system_id)


def test_live_observable_through_the_hub(hub: HubThread) -> None:
    """hypervisor_events() from blocking code: events of machines the hub runs."""
    import queue

    from reops.control.client import request_sync
    from reops.systems.live import hypervisor_events, systems

    got: queue.Queue[object] = queue.Queue()
    listening = threading.Event()
    sub = hypervisor_events("lab", on_ready=listening.set).subscribe(got.put)
    try:
        assert listening.wait(10)
        request_sync(hub.settings.control_path, "machines.types.add", {"name": "live"})
        jobs = request_sync(hub.settings.control_path, "machines.create",
                            {"type": "live", "presets": ["tiny"], "hostname": "lv1"})
        ev = got.get(timeout=10)
        assert (ev.hypervisor, ev.name, ev.event) == ("lab", "lv1", "DEFINED")  # type: ignore[attr-defined]
        request_sync(hub.settings.control_path, "machines.wait", {"ids": [jobs[0]["id"]]},
                     timeout=10)
        assert [s.hostname for s in systems("typed:live")] == ["lv1"]
    finally:
        sub.dispose()
