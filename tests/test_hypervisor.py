"""The libvirt provider on libvirt's own test driver (and on embedded QEMU where present).

No mocks: a custom test-driver node (domains, a network, a pool with base volumes) is the
hypervisor; waits are on libvirt's events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest
from systems_fixtures import node_uri, qemu_root

from reops.store.model import MachinesError, new_id
from reops.systems.libvirt.domain_xml import DomainSpec, mac_for, system_id_of
from reops.systems.libvirt.events import HypervisorEvent
from reops.systems.libvirt.hypervisor import Hypervisor


@pytest.fixture
async def hyp(tmp_path: Path) -> AsyncIterator[Hypervisor]:
    h = await Hypervisor.connect("lab", node_uri(tmp_path), 10)
    yield h
    await h.close()


def spec(name: str, network: str | None = "default") -> DomainSpec:
    sid = new_id()
    return DomainSpec(name=name, system_id=sid, cpu=2, ram=256, network=network,
                      mac=mac_for(sid), type="test")


async def test_unreachable_uri_is_a_one_line_error() -> None:
    with pytest.raises(MachinesError) as e:
        await Hypervisor.connect("far", "qemu+tcp://127.0.0.1:1/system", 10)
    assert str(e.value).startswith("hypervisor 'far' (qemu+tcp://127.0.0.1:1/system) is unreach")
    assert "\n" not in str(e.value)


async def test_create_makes_overlays_on_the_base_volume(hyp: Hypervisor) -> None:
    s = spec("web1")
    info = await hyp.create(s, "default", [("web1.qcow2", 10, "debian-12.qcow2"),
                                           ("web1-data.qcow2", 5, None)])
    assert (info.name, info.cpu, info.ram, info.state) == ("web1", 2, 256, "stopped")
    assert info.system_id == s.system_id and info.mac == s.mac
    assert info.networks == ("default",)
    pool = hyp.connection.storagePoolLookupByName("default")
    overlay = pool.storageVolLookupByName("web1.qcow2").XMLDesc(0)
    assert "<backingStore>" in overlay and "debian-12.qcow2" in overlay
    assert "<backingStore>" not in pool.storageVolLookupByName("web1-data.qcow2").XMLDesc(0)
    xml = hyp.connection.lookupByName("web1").XMLDesc(0)
    assert system_id_of(xml) == s.system_id
    # idempotent: a retried create reuses what exists
    again = await hyp.create(s, "default", [("web1.qcow2", 10, "debian-12.qcow2")])
    assert again.uuid == info.uuid
    await hyp.remove("web1", "default", ["web1.qcow2", "web1-data.qcow2"])
    assert await hyp.state("web1") == "missing"
    assert sorted(pool.listVolumes()) == ["alpine-3.qcow2", "debian-12.qcow2"]
    await hyp.remove("web1", "default", ["web1.qcow2"])  # twice is fine


async def test_missing_base_volume_or_pool_is_clear(hyp: Hypervisor) -> None:
    with pytest.raises(MachinesError, match=r"no base volume 'centos\.qcow2' in pool 'default'"):
        await hyp.check_pool("default", ["centos.qcow2"])
    with pytest.raises(MachinesError, match="no storage pool 'fast'"):
        await hyp.check_pool("fast", [])


async def test_lifecycle_events_arrive_typed_and_in_order(hyp: Hypervisor) -> None:
    seen: list[HypervisorEvent] = []
    hyp.events.subscribe(seen.append)
    await hyp.create(spec("web2"), "default", [])
    stopped = asyncio.ensure_future(hyp.next_event(
        lambda e: e.name == "web2" and e.event == "UNDEFINED", 10))
    await hyp.start("web2")
    assert await hyp.state("web2") == "running"
    assert await hyp.stop("web2", 10) == "shut down"
    await hyp.remove("web2", "default", [])
    assert await stopped is not None
    got = [(e.kind, e.name, e.event, e.detail) for e in seen if e.name == "web2"]
    assert got == [
        ("domain", "web2", "DEFINED", "ADDED"),
        ("domain", "web2", "STARTED", "BOOTED"),
        ("domain", "web2", "STOPPED", "SHUTDOWN"),
        ("domain", "web2", "UNDEFINED", "REMOVED"),
    ]
    assert all(e.hypervisor == "lab" and len(e.uuid) == 36 and e.time > 0 for e in seen)


async def test_network_and_pool_events(hyp: Hypervisor) -> None:
    got = asyncio.ensure_future(hyp.next_event(lambda e: e.kind == "network", 10))
    await asyncio.sleep(0)
    await asyncio.to_thread(hyp.connection.networkLookupByName("default").destroy)
    ev = await got
    assert ev is not None and (ev.name, ev.event) == ("default", "STOPPED")


async def test_stop_of_a_stopped_domain_and_destroy(hyp: Hypervisor) -> None:
    await hyp.create(spec("web3"), "default", [])
    assert await hyp.stop("web3", 10) == "already stopped"
    await hyp.start("web3")
    await hyp.destroy("web3")
    assert await hyp.state("web3") == "stopped"
    await hyp.destroy("nonesuch")  # destroying what is gone is done


async def test_snapshot_and_revert(hyp: Hypervisor) -> None:
    await hyp.create(spec("web4"), "default", [])
    await hyp.snapshot("web4", "clean")  # taken while stopped
    await hyp.start("web4")
    reverted = asyncio.ensure_future(hyp.next_event(
        lambda e: e.name == "web4" and e.detail == "FROM_SNAPSHOT", 10))
    await asyncio.sleep(0)
    await hyp.revert("web4", "clean")
    assert await reverted is not None
    assert await hyp.state("web4") == "stopped"
    with pytest.raises(MachinesError, match=r"web4 has no snapshot 'nope' \(has: clean\)"):
        await hyp.revert("web4", "nope")
    await hyp.remove("web4", "default", [])  # snapshot metadata goes with the domain


async def test_ip_discovery_and_its_timeout(hyp: Hypervisor) -> None:
    assert (await hyp.ip("legacy1", 5)).startswith("192.168.122.")
    await hyp.destroy("legacy1")
    with pytest.raises(MachinesError, match=r"legacy1: no IP address after 0.3s \(.*ARP"):
        await hyp.ip("legacy1", 0.3)


async def test_domains_lists_foreign_and_own(hyp: Hypervisor) -> None:
    s = spec("web5")
    await hyp.create(s, "default", [])
    found = {d.name: d for d in await hyp.domains()}
    assert set(found) == {"legacy1", "legacy2", "web5"}
    assert found["legacy2"].cpu == 2 and found["legacy2"].ram == 1024
    assert found["legacy1"].system_id is None and found["web5"].system_id == s.system_id


# ── real QEMU, embedded (TCG, diskless): start, graceful stop that times out, destroy ─────

QEMU = shutil.which("qemu-system-x86_64") is not None and os.geteuid() == 0


def _qemu_usable() -> str | None:
    import grp
    import pwd
    try:
        pwd.getpwnam("libvirt-qemu")
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        return "needs the libvirt-qemu user and group (see README: machines)"
    return None


@pytest.mark.skipif(not QEMU, reason="needs qemu-system-x86_64 and root")
async def test_embedded_qemu_lifecycle(tmp_path: Path) -> None:
    if (why := _qemu_usable()) is not None:
        pytest.skip(why)
    h = await Hypervisor.connect("qemu", f"qemu:///embed?root={qemu_root()}", 30)
    try:
        assert h.domain_type() == "qemu"
        s = DomainSpec(name="tiny1", system_id=new_id(), cpu=1, ram=64, network="default",
                       mac="52:54:00:00:00:07", type="qemu")
        info = await h.create(s, "default", [])  # no such network: user-mode NIC instead
        assert info.state == "stopped"
        started = asyncio.ensure_future(h.next_event(
            lambda e: e.name == "tiny1" and e.event == "STARTED", 30))
        await asyncio.sleep(0)
        await h.start("tiny1")
        ev = await started
        assert ev is not None and ev.detail == "BOOTED"
        # no guest OS answers ACPI: graceful stop gives up after the timeout and destroys
        assert await h.stop("tiny1", 0.5) == "destroyed: no clean shutdown within 0.5s"
        assert await h.state("tiny1") == "stopped"
        await h.start("tiny1")
        await h.destroy("tiny1")
        await h.remove("tiny1", "default", [])
        assert await h.state("tiny1") == "missing"
    finally:
        await h.close()


def test_libvirt_error_codes_we_rely_on() -> None:
    assert libvirt.VIR_ERR_NO_DOMAIN and libvirt.VIR_ERR_NO_STORAGE_VOL

