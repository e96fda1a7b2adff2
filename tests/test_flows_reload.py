"""Hot reload in a real `reops hub`: the versions of a flow read ONE live trigger source.

Each test starts a real hub process, runs a flow built on the real `every` trigger and
reads the hub's SQLite audit. The flow records each tick as `('vN', Tick(n=…, due=…))`:
`n` is the trigger's own count, so an event lost in a swap is a hole in the n's and an
event handled twice is a repeated n; a trigger restarted by the reload starts again at 0.
Waits poll with a deadline; no pass/fail depends on how long anything took.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_flows_hub import Hub, until, version

from reops.lab.fleet import LabInfo

FLOW = '''\
from reactivex import operators as ops

from reops.streams.triggers.clock import every
from reops.flows import flow

LABEL = "v0"


@flow
def ticks(period: float = 0.01) -> object:
    """Record each tick of every(PERIOD)."""
    return every(period).observable.pipe(ops.map(lambda e: (LABEL, e.payload)))
'''

TICK = re.compile(r"\('(v\d+)', Tick\(n=(\d+), due=([\d.]+)\)\)")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "home").start()
    yield h
    h.close()


def write(path: Path, label: str, flow: str = FLOW) -> str:
    path.write_text(flow.replace('LABEL = "v0"', f'LABEL = "{label}"'))
    return version(path)


def ticks(hub: Hub, name: str = "ticks") -> list[tuple[str, int, float]]:
    """(label, n, due) of every tick the flow recorded, in audit order."""
    out = []
    for r in hub.audit(name):
        m = TICK.fullmatch(r.detail) if r.status == "fired" else None
        if m:
            out.append((m[1], int(m[2]), float(m[3])))
    return out


def test_reloads_under_a_fast_trigger_lose_and_double_no_tick(hub: Hub, tmp_path: Path
                                                              ) -> None:
    path = tmp_path / "ticks.py"
    write(path, "v0")
    hub.cli("flows", "start", str(path), "--max-rate", "off", "--period", "0.005")
    until(lambda: ticks(hub), "the first ticks")
    for i in range(1, 11):
        v = write(path, f"v{i}")
        info = hub.request("flows.reload", name="ticks")
        assert (info["reloaded"], info["version"]) == (True, v)
        until(lambda i=i: any(label == f"v{i}" for label, _, _ in ticks(hub)),
              f"a tick of version v{i}")
    hub.cli("flows", "stop", "ticks")
    seen = ticks(hub)
    ns = [n for _, n, _ in seen]
    assert len(ns) == len(set(ns)), "a tick was handled twice"
    assert sorted(ns) == list(range(ns[0], ns[0] + len(ns))), "a tick was lost"
    labels = [label for label, _, _ in seen]
    # every version got a run of ticks, in order, and never one after its successor's
    assert [label for i, label in enumerate(labels) if i == 0 or labels[i - 1] != label] == [
        f"v{i}" for i in range(11)]
    assert hub.ls()["ticks"]["reloads"] == 10


def test_a_reload_that_changes_the_step_keeps_the_schedule(hub: Hub, tmp_path: Path) -> None:
    path = tmp_path / "ticks.py"
    write(path, "v0")
    hub.cli("flows", "start", str(path), "--period", "0.5")
    until(lambda: len(ticks(hub)) >= 2, "two ticks of v0")
    write(path, "v1")
    hub.cli("flows", "reload", "ticks")
    until(lambda: sum(label == "v1" for label, _, _ in ticks(hub)) >= 2, "two ticks of v1")
    seen = ticks(hub)
    first = next(i for i, (label, _, _) in enumerate(seen) if label == "v1")
    (_, n_old, due_old), (_, n_new, due_new) = seen[first - 1], seen[first]
    assert n_new == n_old + 1  # the same trigger goes on (a new one would start at 0)
    # the next firing is the one the old schedule had due: same grid, not reload + period
    assert abs(due_new - due_old - 0.5) < 0.05
    _, n0, due0 = seen[0]
    assert all(abs(due - due0 - (n - n0) * 0.5) < 0.05 for _, n, due in seen)


def test_triggers_are_squelched_by_default_and_said_so_once(hub: Hub, tmp_path: Path
                                                            ) -> None:
    path = tmp_path / "ticks.py"
    write(path, "v0")
    hub.cli("flows", "start", str(path), "--max-rate", "5/1s", "--period", "0.01")
    info = until(lambda: (hub.ls()["ticks"] if hub.ls()["ticks"]["squelched"] else None),
                 "the storm squelched")
    assert (info["squelched"], info["max_rate"]) == (1, "5/1s")  # one storm, said once
    rows = [r for r in hub.audit("ticks") if r.status == "squelched"]
    assert len(rows) == 1 and "went over 5/1s" in rows[0].detail
    pretty = hub.cli("flows", "ls").stdout
    assert "squelched 1x over 5/1s" in pretty
    # only the 5 ticks before the storm passed (the rest were dropped, not run)
    assert len(ticks(hub)) == 5
    bad = hub.cli("flows", "start", str(path), "--as", "x", "--max-rate", "fast", check=False)
    assert bad.returncode != 0 and "'fast' is not a rate" in bad.stderr


def test_the_default_storm_limit_comes_from_flows_max_rate(tmp_path: Path) -> None:
    h = Hub(tmp_path / "home", REOPS_FLOWS_MAX_RATE="3/1s").start()
    try:
        path = tmp_path / "ticks.py"
        write(path, "v0")
        h.cli("flows", "start", str(path), "--period", "0.01")
        until(lambda: h.ls()["ticks"]["squelched"], "the storm squelched")
        assert h.ls()["ticks"]["max_rate"] == "3/1s" and len(ticks(h)) == 3
    finally:
        h.close()


STEP_FLOW = '''\
from reops import exec_, inventory, on, then
from reops.streams.triggers.clock import every
from reops.flows import flow

LABEL = "v0"


@flow
def slow(inv: str, host: str, marker: str) -> object:
    """Every 0.5 s, a step on HOST that takes a while (its first run writes MARKER)."""
    hosts = inventory(inv).select(host)
    cmd = f"test -e {marker} || {{ touch {marker}.started; sleep 2; touch {marker}; }}"
    return on(every(0.5), hosts=hosts) | then(exec_, f": {LABEL}; {cmd}")
'''


async def test_a_replaced_version_finishes_its_steps_in_flight(hub: Hub, lab: LabInfo,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "slow.py"
    v0 = write(path, "v0", STEP_FLOW)
    host = next(iter(lab.hosts))
    marker = f"/tmp/reops-reload-{tmp_path.name}"
    await asyncio.to_thread(hub.cli, "flows", "start", str(path), "--inv",
                            str(lab.inventory), "--host", host, "--marker", marker)

    def in_flight() -> Any:
        return [r for r in hub.request("flows.ls") if r["in_flight"]]

    await asyncio.to_thread(until, in_flight, "the first step in flight")
    write(path, "v1", STEP_FLOW)
    info = await asyncio.to_thread(hub.request, "flows.reload", name="slow")
    assert info["reloaded"]
    done = await asyncio.to_thread(until, lambda: hub.hosts("slow", version=v0),
                                   "the old version's step recorded")
    # it ran to its end (sleep 2, then touch): not cancelled by the swap
    assert [(r.status, r.code) for r in done][:1] == [("ok", 0)]
