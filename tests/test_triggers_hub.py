"""`vm_started` against a real hub Controller whose machines state the test sets, so the
order of a VM's start, its job's end and its recorded address is chosen, not raced.

The libvirt test driver finds a VM's address at once, so with it (tests/test_triggers_live.py)
the record already has the address when the trigger reads it. Real QEMU does not: libvirt
says STARTED long before the job has found the guest's IP. Here the control socket, its
protocol, the subscription and the selectors are the real ones; only the machines service
is replaced by records the test writes and events it publishes, in the shapes the machines
service publishes (`reops.systems.service`).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import reactivex

from reops import Hosts, Result, Stream, then
from reops.control.settings import HubSettings
from reops.hub.controller import Controller
from reops.store.model import Job, Machine, Placement, System
from reops.streams.triggers.hypervisor import vm_started
from reops.streams.triggers.on import on
from reops.systems.select import select
from tests.conftest import Seen

DEADLINE = 30.0


class StagedHub:
    """A Controller serving `machines.systems` and `machines.jobs` from what the test sets,
    on its own loop in a thread; `publish` sends an event as the machines service would."""

    def __init__(self, tmp: Path) -> None:
        self.settings = HubSettings(bind="tcp://127.0.0.1:*", control=str(tmp / "run/hub.sock"),
                                    keys_dir=str(tmp / "keys"))
        self.systems: dict[str, System] = {}
        self.jobs: dict[str, Job] = {}
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.controller: Controller | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.main(),))

    async def main(self) -> None:
        self.stop = asyncio.Event()
        c = self.controller = Controller(self.settings)

        async def systems(s: Any) -> Any:
            return msgspec.to_builtins(select(list(self.systems.values()),
                                              s.params.get("selector") or "all"))

        async def jobs(s: Any) -> Any:
            return msgspec.to_builtins(list(self.jobs.values()))

        c.register("machines.systems", systems)
        c.register("machines.jobs", jobs)
        self.loop.call_soon(self.ready.set)
        await c.serve(self.stop)

    def __enter__(self) -> StagedHub:
        self.thread.start()
        assert self.ready.wait(DEADLINE)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(DEADLINE)
        self.loop.close()

    @property
    def control(self) -> Path:
        return self.settings.control_path

    def system(self, name: str, type_: str, ip: str | None) -> System:
        s = System(id=hashlib.sha1(name.encode()).hexdigest(), type=type_,
                   machine=Machine(hostname=name, ip=ip),
                   placement=Placement(hypervisor="lab", domain=name), state="running")
        self.systems[s.id] = s
        return s

    def job(self, s: System, state: str) -> Job:
        j = Job(id=f"job-{s.hostname}", op="start", system_id=s.id, state=state)  # type: ignore[arg-type]
        self.jobs[j.id] = j
        return j

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        assert self.controller is not None
        self.loop.call_soon_threadsafe(self.controller.publish, topic, data)

    def started(self, name: str) -> None:
        self.publish("hypervisor.lab", {"hypervisor": "lab", "kind": "domain", "name": name,
                                        "uuid": "", "event": "STARTED", "detail": "BOOTED",
                                        "time": time.time()})

    def job_ended(self, j: Job, state: str, ip: str | None = None) -> None:
        s = self.systems[j.system_id or ""]
        self.systems[s.id] = msgspec.structs.replace(
            s, machine=msgspec.structs.replace(s.machine, ip=ip))
        done = self.jobs[j.id] = msgspec.structs.replace(j, state=state)  # type: ignore[arg-type]
        self.publish("jobs", {"event": state, "job": msgspec.to_builtins(done),
                              "time": time.time()})


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StagedHub]:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    with StagedHub(tmp_path) as h:
        yield h


def where_am_i(hosts: Hosts) -> Stream:
    """A next step that reports the address it was given (nothing is reached)."""
    return Stream(reactivex.from_iterable(
        [Result(host=h.name, op="where", status="ok", code=0, out=h.address) for h in hosts]),
        hosts)


def rows(got: Seen, n: int) -> list[tuple[str, str, str]]:
    """The first `n` Results (or more) `got` received, as (host, status, out or err)."""
    items = got.wait(lambda xs: len(xs) >= n, f"{n} Result(s)", DEADLINE)
    return [(r.host, r.status, r.out or r.err) for r in items]


def test_a_start_waits_for_its_job_to_record_the_address(hub: StagedHub) -> None:
    r1 = hub.system("r1", "redis", None)
    j1 = hub.job(r1, "running")  # the start job is still looking for r1's address
    hub.system("r2", "redis", "10.0.0.2")
    r3 = hub.system("r3", "redis", None)
    j3 = hub.job(r3, "running")
    hub.system("r4", "redis", None)  # no job works on it: nothing will record an address
    hub.system("w1", "web", "10.0.0.9")  # not selected
    ready = threading.Event()
    got = Seen()
    sub = (on(vm_started("typed:redis", hub=hub.control, on_ready=ready.set))
           | then(where_am_i)).subscribe(got, got.error)
    try:
        assert ready.wait(DEADLINE)
        hub.started("r1")  # held: its job runs and r1 has no address yet
        hub.started("w1")
        hub.started("r2")  # has its address: fires at once, after r1 has been looked at
        assert rows(got, 1) == [("r2", "ok", "10.0.0.2")]
        hub.job_ended(j1, "succeeded", ip="10.0.0.1")  # the job found r1's address
        assert rows(got, 2)[1] == ("r1", "ok", "10.0.0.1")
        hub.started("r3")
        hub.job_ended(j3, "failed")  # no address found: fires without one
        hub.started("r4")  # no job: fires at once without one
        _, _, r3_seen, r4_seen = rows(got, 4)
        assert r3_seen[:2] == ("r3", "unreachable") and "no address yet" in r3_seen[2]
        assert r4_seen[:2] == ("r4", "unreachable")
        first = got.items[1].steps[0].data  # the event behind r1's step
        assert (first.kind, first.key, first.host.address) == ("started", "r1", "10.0.0.1")
        assert first.payload.system_id == r1.id
    finally:
        sub.dispose()
    assert [r.host for r in got.items] == ["r2", "r1", "r3", "r4"]  # w1 never fired
