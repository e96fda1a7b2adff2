"""One shape per word: `facts`/`metrics` give the same typed data over SSH and agents.

The agent's built-ins (`call(hosts, "facts")`, `schedule(hosts, "metrics")`) return plain
dicts that reops decodes into the very Facts/Metrics Structs the SSH ops parse into. The
lab test runs both on the same host and compares them field by field: stable fields by
value, fields that move between two readings (uptime, load, free memory) by type.
"""

from __future__ import annotations

import threading
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from reops_agent import system

from reops.core.model import Result
from reops.lab.agents import start_agents, start_hub, wait_for_agents
from reops.ops import facts as facts_op
from reops.ops import metrics as metrics_op
from reops.ops.facts import Facts
from reops.ops.metrics import Metrics
from reops.ops.shapes import typed
from reops.streams.agents import call, schedule
from reops.streams.source import source
from reops.streams.stream import run

# ── the agent's dicts have exactly the Structs' fields (no lab needed) ───────────────


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct inside `tp` (X, X | None, list[X]), or None for scalars."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    for arg in typing.get_args(tp):
        found = _struct_of(arg)
        if found is not None:
            return found
    return None


def _mismatches(value: Any, shape: type[msgspec.Struct], where: str = "") -> list[str]:
    """Every dict in `value` whose keys are not exactly its Struct's field names (msgspec
    would drop an unknown key, a misspelt field silently becoming its default)."""
    if isinstance(value, list):
        return [m for i, v in enumerate(value) for m in _mismatches(v, shape, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return []
    fields = set(shape.__struct_fields__)
    out = [f"{where or shape.__name__}: {sorted(set(value) ^ fields)}"] \
        if set(value) != fields else []
    hints = typing.get_type_hints(shape)
    for key, v in value.items():
        inner = _struct_of(hints.get(key))
        if inner is not None and v is not None:
            out += _mismatches(v, inner, f"{where}.{key}")
    return out


def test_agent_facts_have_the_fields_and_types_of_facts() -> None:
    data = system.facts()
    assert _mismatches(data, Facts) == []
    f = msgspec.convert(data, Facts)
    assert f.os is not None and f.hardware is not None and f.network is not None
    assert f.os.kernel == "Linux" and f.hardware.cpus >= 1 and f.hardware.memory_bytes > 0
    assert any(i.name == "lo" for i in f.network.interfaces)
    assert f.users and any(u.uid == 0 for u in f.users)
    only = system.facts("os")
    assert only["hardware"] is None and only["os"]["kernel"] == "Linux"
    with pytest.raises(ValueError, match="unknown fact parts"):
        system.facts("gpu")


def test_agent_metrics_have_the_fields_and_types_of_metrics() -> None:
    sampler = system.Sampler()
    data = system.metrics(sampler)  # rates since the sampler's reading
    assert _mismatches(data, Metrics) == []
    m = msgspec.convert(data, Metrics)
    assert m.cpu is not None and m.memory is not None and m.load is not None
    assert m.memory.total > 0 and m.disks is not None and m.net is not None
    raw = msgspec.convert(system.metrics(sampler, "cpu", "net", interval=0), Metrics)
    assert raw.cpu is not None and raw.cpu.busy_pct is None and raw.cpu.counters
    assert raw.memory is None and raw.interval_s is None
    with pytest.raises(ValueError, match="unknown metrics"):
        system.metrics(sampler, "mem")  # one word per kind: `memory`, as over SSH


def test_old_agent_data_is_an_error_not_an_empty_facts() -> None:
    old = Result(host="h", op="call:facts", status="ok", code=0, transport="agent",
                 data={"hostname": "h", "cpus": 2, "mem_total": 1024})
    got = typed("facts", old)
    assert got.status == "error" and "not a Facts" in got.err and "Upgrade" in got.err
    mine = typed("check", old)  # not a built-in with a shape: its data is left alone
    assert mine is old


# ── the same host over SSH and over its agent ───────────────────────────────────────


def _present(value: Any) -> Any:
    """Which fields are set (not None), recursively: the shape without the values."""
    if isinstance(value, msgspec.Struct):
        return {k: _present(getattr(value, k)) for k in value.__struct_fields__
                if getattr(value, k) is not None}
    if isinstance(value, list):
        return sorted((_present(v) for v in value), key=repr)
    return type(value).__name__


def _interfaces(f: Facts) -> dict[str, Any]:
    assert f.network is not None
    return {i.name: (i.mac, i.mtu, i.state, i.up,
                     sorted((a.family, a.address, a.prefix, a.scope) for a in i.addresses))
            for i in f.network.interfaces}


def test_facts_and_metrics_are_one_shape_over_ssh_and_agents(
        lab_factory: Callable[..., Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    info = lab_factory(hosts=1).info
    hosts = info.as_hosts()
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    ticks: list[Result] = []
    ticked = threading.Event()

    def on_tick(r: Result) -> None:
        ticks.append(r)
        ticked.set()

    with start_hub(tmp_path / "home", heartbeat_s=0.25, misses=4) as hub, start_agents(
            hosts.names, hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "agents",
            extra=["--heartbeat", "0.25"], sources=info.hosts):
        wait_for_agents(hub.control_path, hosts.names)
        ssh_facts = run(source(hosts, facts_op.facts(), via="ssh")).successful[0]
        agent_facts = run(call(hosts, "facts")).successful[0]
        ssh_metrics = run(source(hosts, metrics_op.metrics(interval=0.2),
                                 via="ssh")).successful[0]
        agent_metrics = run(call(hosts, "metrics")).successful[0]
        sub = schedule(hosts, "metrics", "memory", "load", every=0.2,
                       hub=hub.control_path).subscribe(on_tick)
        try:
            assert ticked.wait(30), "no scheduled metrics within 30 s"
        finally:
            sub.dispose()

    assert (ssh_facts.transport, agent_facts.transport) == ("ssh", "agent")
    s, a = ssh_facts.data, agent_facts.data
    assert isinstance(s, Facts) and isinstance(a, Facts), (type(s), type(a))
    assert a.os == s.os  # hostname, distribution, kernel, arch: every field
    assert s.hardware is not None and a.hardware is not None
    assert a.hardware == s.hardware  # cpus, model, memory, swap, disks
    assert _interfaces(a) == _interfaces(s)
    assert s.network is not None and a.network is not None
    assert (a.network.default_route, a.network.default_route6) == (
        s.network.default_route, s.network.default_route6)
    assert a.users == s.users
    assert _present(a) == _present(s)  # uptime, boot and clock: set, and floats

    assert (ssh_metrics.transport, agent_metrics.transport) == ("ssh", "agent")
    sm, am = ssh_metrics.data, agent_metrics.data
    assert isinstance(sm, Metrics) and isinstance(am, Metrics), (type(sm), type(am))
    assert sm.memory is not None and am.memory is not None
    assert am.memory.total == sm.memory.total
    assert sm.net is not None and am.net is not None
    assert {n.iface for n in am.net} == {n.iface for n in sm.net}
    assert sm.disks and am.disks and "/" in {d.mount for d in am.disks} & {
        d.mount for d in sm.disks}
    shape = _present(sm)
    shape["disks"] = shape["net"] = "list"  # which disks and links: compared above
    got = _present(am)
    got["disks"] = got["net"] = "list"
    assert got == shape
    assert _present(sm.net[0]) == _present(am.net[0])  # counters and rates, all set

    tick = ticks[0]
    assert tick.ok and tick.transport == "agent", tick.err
    assert isinstance(tick.data, Metrics) and tick.data.load is not None
    assert tick.data.memory is not None and tick.data.memory.total == sm.memory.total
    assert (tick.data.cpu, tick.data.net, tick.data.disks) == (None, None, None)
