"""Store, presets, selectors and Wake-on-LAN: the machines layer without a hypervisor."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from reops.core.selector import SelectorError
from reops.store.model import Job, Machine, MachinesError, Placement, System, Type, new_id
from reops.store.sqlite import MIGRATIONS, Store
from reops.systems.physical import wol
from reops.systems.presets import resolve
from reops.systems.select import select


def system(hostname: str, type_: str = "redis", *, ip: str | None = None, hyp: str = "lab",
           id_: str | None = None, os_: str = "debian-12", cpu: int = 1) -> System:
    return System(
        id=id_ or new_id(), type=type_, state="running" if ip else "stopped",
        machine=Machine(hostname=hostname, ip=ip, os=os_, cpu=cpu),
        placement=Placement(hypervisor=hyp, domain=hostname),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "machines.db")
    yield s
    s.close()


def test_schema_is_migrated_once_in_wal_mode(tmp_path: Path) -> None:
    Store(tmp_path / "m.db").close()
    again = Store(tmp_path / "m.db")
    assert again.schema_version == len(MIGRATIONS)
    again.close()
    db = sqlite3.connect(tmp_path / "m.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_types_round_trip_and_unknown_type_is_clear(store: Store) -> None:
    store.put_type(Type(name="redis", description="cache", provision="flows/redis.py"))
    assert store.get_type("redis").provision == "flows/redis.py"
    with pytest.raises(MachinesError, match=r"unknown type 'web' \(known: redis\)"):
        store.get_type("web")
    store.put_system(system("r1"))
    with pytest.raises(MachinesError, match="used by 1 system"):
        store.remove_type("redis")


def test_ids_match_by_unique_prefix(store: Store) -> None:
    a, b = "abcd1" + "0" * 35, "abcd2" + "0" * 35
    store.record([system("a", id_=a), system("b", id_=b)])
    assert store.system_by_prefix("abcd1").hostname == "a"
    with pytest.raises(MachinesError, match="ambiguous"):
        store.system_by_prefix("abcd")
    with pytest.raises(MachinesError, match="at least 4 hex"):
        store.system_by_prefix("ab")
    with pytest.raises(MachinesError, match="no system"):
        store.system_by_prefix("ffff")
    job = Job(id=new_id(), op="start", system_id=a)
    store.put_job(job)
    assert store.job(job.id[:7]) == job


def test_one_domain_name_per_hypervisor(store: Store) -> None:
    store.put_system(system("web1"))
    with pytest.raises(MachinesError, match="already exists"):
        store.record([system("web2"), system("web1")])
    assert [s.hostname for s in store.systems()] == ["web1"]  # all or nothing


def test_presets_compose_left_to_right() -> None:
    spec = resolve(["small", "debian-12", "count=3", "volume=data:50", "ram=2048"])
    assert (spec.cpu, spec.ram, spec.disk_gb, spec.count) == (1, 2048, 10, 3)
    assert (spec.os, spec.base) == ("debian-12", "debian-12.qcow2")
    assert [(v.name, v.size_gb) for v in spec.volumes] == [("data", 50)]
    custom = {"db": {"use": ["large", "ubuntu-24.04"], "volumes": [{"name": "pg", "size_gb": 9}],
                     "hypervisor": "lab"}}
    spec = resolve(["db", "medium"], custom, count=2)
    assert (spec.cpu, spec.os, spec.hypervisor, spec.count) == (2, "ubuntu-24.04", "lab", 2)
    assert spec.volumes[0].name == "pg"


@pytest.mark.parametrize("names,message", [
    (["smal"], "unknown preset 'smal'"),
    (["cpus=2"], "unknown key 'cpus'"),
    (["count=0"], "bad preset values"),
    (["volume=data"], "volume=NAME:SIZE_GB"),
    (["ram=lots"], "bad preset value"),
])
def test_bad_presets_are_one_line_errors(names: list[str], message: str) -> None:
    with pytest.raises(MachinesError, match=message) as e:
        resolve(names)
    assert "\n" not in str(e.value)


def test_preset_cycles_are_caught() -> None:
    with pytest.raises(MachinesError, match="uses itself"):
        resolve(["a"], {"a": {"use": ["b"]}, "b": {"use": ["a"]}})


def test_selectors() -> None:
    web1 = system("web1", "web", ip="10.0.0.1", id_="aaaa" + "1" * 36)
    web2 = system("web2", "web", hyp="far")
    db1 = system("db1", "db", ip="10.0.0.3", cpu=4, os_="ubuntu-24.04")
    every = [web1, web2, db1]

    def names(sel: str) -> list[str]:
        return [s.hostname for s in select(every, sel)]

    assert names("running") == ["web1", "db1"]
    assert names("typed:web & running") == ["web1"]
    assert names("hyp:far") == ["web2"]
    assert names("web* & !hyp:far") == ["web1"]
    assert names("aaaa11") == ["web1"]
    assert names("id:aaaa") == ["web1"]
    assert names("cpu=4,os=debian-*") == ["web1", "web2", "db1"]
    assert names("(typed:db,typed:web) & !running") == ["web2"]
    assert names("state:stopped") == ["web2"]
    with pytest.raises(SelectorError, match="unknown field 'cpus'"):
        names("cpus=4")
    with pytest.raises(SelectorError, match="did you mean 'web1'"):
        names("webb1")


def test_magic_packet_reaches_a_listener() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Listener(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                got.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(
            Listener, local_addr=("127.0.0.1", 0), family=socket.AF_INET)
        port = transport.get_extra_info("sockname")[1]
        try:
            await wol.wake("52:54:00:12:34:56", f"127.0.0.1:{port}")
            return await asyncio.wait_for(got, 5)
        finally:
            transport.close()

    packet = asyncio.run(main())
    assert packet == b"\xff" * 6 + bytes.fromhex("525400123456") * 16
    assert len(packet) == 102
    with pytest.raises(ValueError, match="bad MAC"):
        wol.magic_packet("52:54:00")
