"""The Machines service end to end on libvirt's test driver: create to destroy, via the queue."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from systems_fixtures import config_toml

from reops.core.model import Result
from reops.store.model import JobEvent, MachinesError, System
from reops.systems.config import load_machines_config
from reops.systems.libvirt.events import HypervisorEvent
from reops.systems.machines import Machines


def open_machines(tmp_path: Path, shutdown: object = None) -> Machines:
    return Machines.open(tmp_path, load_machines_config(config_toml(tmp_path)),
                         shutdown=shutdown)  # type: ignore[arg-type]


@pytest.fixture
async def m(tmp_path: Path) -> AsyncIterator[Machines]:
    async with open_machines(tmp_path) as machines:
        machines.add_type("redis", "redis server", provision="flows/redis.py")
        yield machines


async def test_create_start_stop_reload_destroy(m: Machines) -> None:
    job_events: list[JobEvent] = []
    m.job_events.subscribe(job_events.append)
    domain_events: list[HypervisorEvent] = []
    (await m.hypervisor_events("lab")).subscribe(domain_events.append)

    jobs = await m.create("redis", ["small", "debian-12", "volume=data:20"], count=2)
    done = await m.wait(jobs)
    assert [j.state for j in done] == ["succeeded", "succeeded"]
    assert done[0].result["provision"] == "flows/redis.py (not run: no provisioner wired)"
    redis = m.systems("typed:redis")
    assert len(redis) == 2 and all(s.state == "running" and s.machine.ip for s in redis)
    assert m.systems("running & typed:redis") == redis
    s = redis[0]
    assert (s.machine.cpu, s.machine.ram, s.machine.os) == (1, 1024, "debian-12")
    assert [v.name for v in s.placement.volumes] == [
        f"{s.hostname}.qcow2", f"{s.hostname}-data.qcow2"]
    assert {e.event for e in job_events if e.job.id == done[0].id} == {
        "queued", "started", "succeeded"}

    hosts = m.hosts("typed:redis")
    assert [h.address for h in hosts] == [x.machine.ip for x in redis]
    assert hosts[s.hostname].tags["id"] == s.short_id

    assert (await m.wait(await m.stop(s.short_id)))[0].result == {"stop": "shut down"}
    assert m.system(s.id).state == "stopped" and m.system(s.id).machine.ip is None
    assert [x.hostname for x in m.systems("running")] == [redis[1].hostname]
    await m.wait(await m.start(s.id[:5]))
    assert m.system(s.id).state == "running"

    uuid_before = m.system(s.id).placement.uuid
    (reloaded,) = await m.wait(await m.reload(s.hostname))
    assert reloaded.state == "succeeded", reloaded.error
    assert m.system(s.id).placement.uuid != uuid_before and m.system(s.id).state == "running"

    await m.wait(await m.destroy("typed:redis"))
    assert m.systems("typed:redis") == []
    hyp = await m.hypervisor("lab")
    assert await hyp.state(s.hostname) == "missing"
    pool = hyp.connection.storagePoolLookupByName("default")
    assert sorted(pool.listVolumes()) == ["alpine-3.qcow2", "debian-12.qcow2"]
    started = [e for e in domain_events if e.name == s.hostname and e.event == "STARTED"]
    assert len(started) == 3  # create, start, reload


async def test_snapshot_revert_and_clear(m: Machines) -> None:
    (job,) = await m.wait(await m.create("redis", ["tiny"], hostname="cache"))
    assert job.state == "succeeded"
    await m.wait(await m.snapshot("cache", "before"))
    (bad,) = await m.wait(await m.revert("cache", "nope"))
    assert bad.state == "failed" and "no snapshot 'nope' (has: before)" in bad.error
    (ok,) = await m.wait(await m.revert("cache", "before"))
    assert ok.result == {"reverted": "before", "state": "running"}
    await m.wait(await m.clear("cache"))
    assert m.systems() == []
    assert await (await m.hypervisor()).state("cache") == "running"  # clear forgets only


async def test_sync_imports_and_reattaches(m: Machines) -> None:
    await m.wait(await m.create("redis", ["tiny"], hostname="mine"))
    mine = m.systems("mine")[0]
    m.store.remove_system(mine.id)  # the record is lost; the domain still says who it is
    (job,) = await m.wait([await m.sync("lab")])
    assert sorted(job.result["imported"]) == ["legacy1", "legacy2", "mine"]
    assert m.systems("mine")[0].id == mine.id
    legacy = m.systems("legacy1")[0]
    assert (legacy.type, legacy.state, legacy.machine.ip is not None) == ("", "running", True)
    assert legacy.machine.mac == "52:54:00:aa:00:01"
    await (await m.hypervisor()).remove("mine", "default", [])
    (again,) = await m.wait([await m.sync()])
    assert again.result["missing"] == ["mine"] and m.systems("mine")[0].state == "missing"


async def test_domain_events_keep_states_current(m: Machines) -> None:
    await m.wait(await m.create("redis", ["tiny"], hostname="ev1"))
    hyp = await m.hypervisor()
    stopped = asyncio.ensure_future(hyp.next_event(lambda e: e.event == "STOPPED", 10))
    await asyncio.sleep(0)
    await asyncio.to_thread(hyp.connection.lookupByName("ev1").destroy)  # behind our back
    assert await stopped is not None
    assert m.systems("ev1")[0].state == "stopped"


@pytest.mark.parametrize("call,message", [
    (dict(type_name="nope"), "unknown type 'nope' (known: redis)"),
    (dict(type_name="redis", presets=["huge"]), "unknown preset 'huge'"),
    (dict(type_name="redis", hypervisor="far"), "hypervisor 'far' (qemu+tcp://127.0.0.1:1"),
    (dict(type_name="redis", hypervisor="moon"), "unknown hypervisor 'moon'"),
    (dict(type_name="redis", presets=["fedora-41"]), "no base volume 'fedora-41.qcow2'"),
    (dict(type_name="redis", hostname="legacy1"), "a machine named 'legacy1' already exists"),
])
async def test_bad_input_leaves_nothing_behind(m: Machines, call: dict, message: str) -> None:
    with pytest.raises(MachinesError) as e:
        await m.create(**call)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert m.systems() == [] and m.jobs() == []


async def test_selecting_nothing_is_an_error(m: Machines) -> None:
    with pytest.raises(MachinesError, match="no system matches 'typed:redis'"):
        await m.stop("typed:redis")


async def test_jobs_survive_a_restart_of_the_service(tmp_path: Path) -> None:
    async with open_machines(tmp_path) as m:
        m.add_type("redis")
        (job,) = await m.wait(await m.create("redis", ["tiny"]))
    async with open_machines(tmp_path) as m2:
        assert m2.job(job.id[:6]).state == "succeeded"
        assert m2.systems("typed:redis")[0].id == job.system_id


async def test_physical_machines_wake_on_lan_and_ssh_seam(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config_toml(tmp_path)
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(cfg_path.read_text().replace(
        '[hypervisors.rack]\nkind = "physical"\n',
        f'[hypervisors.rack]\nkind = "physical"\nbroadcast = "127.0.0.1:{port}"\n'))
    shut: list[System] = []

    async def shutdown(s: System) -> Result:
        shut.append(s)
        return Result(host=s.hostname, op="shutdown", status="ok", code=0)

    m = Machines.open(tmp_path, load_machines_config(cfg_path), shutdown=shutdown)
    async with m:
        s = m.register_physical("box1", "aa:bb:cc:dd:ee:ff", ip="10.1.1.1", hypervisor="rack")
        (job,) = await m.wait(await m.start("box1"))
        assert job.state == "succeeded", job.error
        packet = await asyncio.to_thread(sock.recv, 200)
        assert packet == b"\xff" * 6 + bytes.fromhex("aabbccddeeff") * 16
        (stop,) = await m.wait(await m.stop("box1"))
        assert stop.state == "succeeded" and shut[0].id == s.id
        (gone,) = await m.wait(await m.destroy("box1"))
        assert gone.state == "failed" and "use `clear`" in gone.error
    sock.close()
    async with open_machines(tmp_path) as plain:  # no SSH wired: a clear failure
        (stop,) = await plain.wait(await plain.stop("box1"))
        assert stop.state == "failed" and "needs SSH" in stop.error


@pytest.mark.parametrize(("status", "state"), [("lost", "succeeded"), ("failed", "failed")])
async def test_physical_stop_counts_a_connection_cut_by_shutdown_as_sent(
        tmp_path: Path, status: str, state: str) -> None:
    """`shutdown` may take the SSH connection down before its exit status arrives: that
    Result is `lost` and the stop still happened; a plain failure is still a failure."""

    async def shutdown(s: System) -> Result:
        return Result(host=s.hostname, op="shutdown", status=status,  # type: ignore[arg-type]
                      code=-1 if status == "lost" else 1, err="connection lost mid-command")

    async with open_machines(tmp_path, shutdown=shutdown) as m:
        m.register_physical("box2", "aa:bb:cc:dd:ee:01", ip="127.0.0.9", hypervisor="rack")
        (stop,) = await m.wait(await m.stop("box2"))
        assert stop.state == state, stop.error
        assert (m.systems("box2")[0].state == "stopped") is (state == "succeeded")


async def test_hosts_bridge_reads_the_store(m: Machines, tmp_path: Path) -> None:
    from reops.systems import hosts

    await m.wait(await m.create("redis", ["tiny"], count=2))
    await m.wait(await m.create("redis", ["tiny"], hostname="off"))
    await m.wait(await m.stop("off"))
    found = hosts("typed:redis & running", root=tmp_path)
    assert len(found) == 2 and all(h.address.startswith("192.168.122.") for h in found)
    assert all(h.groups == ("redis",) and h.tags["hypervisor"] == "lab" for h in found)


async def test_provisioning_seam_runs_after_boot(tmp_path: Path) -> None:
    from reops.store.model import Type

    ran: list[tuple[str, str | None]] = []

    async def provision(s: System, t: Type) -> Result:
        ran.append((s.hostname, s.machine.ip))
        ok = s.hostname != "bad"
        return Result(host=s.hostname, op="provision", status="ok" if ok else "failed",
                      code=0 if ok else 1, err="" if ok else "apt failed")

    async with Machines.open(tmp_path, load_machines_config(config_toml(tmp_path)),
                             provision=provision) as m:
        m.add_type("redis", provision="flows/redis.py")
        (good,) = await m.wait(await m.create("redis", ["tiny"], hostname="good"))
        assert good.result["provisioned"] is True and ran[0][1] is not None
        (bad,) = await m.wait(await m.create("redis", ["tiny"], hostname="bad"))
        assert bad.state == "failed" and "provisioning with flows/redis.py failed" in bad.error
        assert "apt failed" in bad.error and m.systems("bad")[0].state == "running"
        (again,) = await m.wait(await m.provision("good"))
        assert again.state == "succeeded" and len(ran) == 3


async def test_physical_status_and_shutdown_over_executors(tmp_path: Path) -> None:
    """Reachability over real SSH (nothing listens: stopped); shutdown's command via DryRun."""
    from reops.core.settings import Settings
    from reops.systems.physical.ssh import over
    from reops.transports.base import DryRun
    from reops.transports.ssh.executor import SshExecutor

    settings = Settings(connect_timeout=5)
    ssh = SshExecutor(settings)
    _, ssh_reachable = over(ssh, settings)
    dry_shutdown, dry_reachable = over(DryRun(), settings)
    cfg = load_machines_config(config_toml(tmp_path))
    async with Machines.open(tmp_path, cfg, reachable=ssh_reachable) as m:
        m.register_physical("box1", "aa:bb:cc:dd:ee:01", ip="127.0.0.1", hypervisor="rack")
        (job,) = await m.wait([await m.sync("rack")])
        assert job.result == {"running": [], "stopped": ["box1"]}, job.error
    await ssh.close()
    async with Machines.open(tmp_path, cfg, reachable=dry_reachable,
                             shutdown=dry_shutdown) as m:
        (job,) = await m.wait([await m.sync("rack")])
        assert job.result == {"running": ["box1"], "stopped": []}
        box = m.systems("box1")[0]
        r = await dry_shutdown(box)
        assert r.out == "sudo -n -- sh -c 'shutdown -h now'" and r.host == "box1"
        (stop,) = await m.wait(await m.stop("box1"))
        assert stop.state == "succeeded" and m.systems("box1")[0].state == "stopped"
