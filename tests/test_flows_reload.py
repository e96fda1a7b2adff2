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


# ── what a reload keeps: stage identity and the longest unchanged prefix ─────────────────

STAGES = '''\
from reactivex import operators as ops

from reops import limit, once_within, then

LIMIT = 3


def step(hosts):
    """A step: its body is part of its identity."""
    return hosts


def stages():
    return [
        once_within("5m", key=lambda r: r.host),
        once_within("5m", key="host"),
        then(step),
        ops.map(lambda r: (r, LIMIT)),
        limit(1, then(step)),
    ]
'''


def idents(path: Path, text: str) -> list[str]:
    """The stage identities of STAGES-like `text`, imported afresh (as a reload does)."""
    from reops.core.pyfile import import_file
    from reops.streams.stream import Operator as Op
    from reops.streams.stream import Stage, _operator_name

    path.write_text(text)
    module = import_file(path, ValueError, "test file")
    return [Stage(s.name, s.apply).ident if isinstance(s, Op) else
            Stage(_operator_name(s), s).ident for s in module.stages()]


def test_a_stage_is_the_same_when_re_imported_and_changed_when_its_code_is(tmp_path: Path
                                                                          ) -> None:
    path = tmp_path / "stages.py"
    first = idents(path, STAGES)
    assert len(set(first)) == 5  # five different stages
    # the same file imported again: new function objects, the same identities; moving
    # code (line numbers) changes nothing either
    assert idents(path, STAGES) == first
    assert idents(path, "\n\n\n" + STAGES) == first
    # a lambda edited to another body: that stage only
    lam = idents(path, STAGES.replace("key=lambda r: r.host)", "key=lambda r: r.host[0])"))
    assert [a == b for a, b in zip(first, lam, strict=True)] == [False, True, True, True, True]
    # an argument (the window) of one stage
    win = idents(path, STAGES.replace('once_within("5m", key="host")',
                                      'once_within("6m", key="host")'))
    assert [a == b for a, b in zip(first, win, strict=True)] == [True, False, True, True, True]
    # a step function's body (also inside limit), and a module global a lambda reads
    body = idents(path, STAGES.replace("    return hosts", "    return hosts  # same\n"
                                       "    print('edited')"))
    assert [a == b for a, b in zip(first, body, strict=True)] == [True, True, False, True, False]
    glob = idents(path, STAGES.replace("LIMIT = 3", "LIMIT = 4"))
    assert [a == b for a, b in zip(first, glob, strict=True)] == [True, True, True, False, True]


def test_trigger_identity_includes_keyword_arguments() -> None:
    from reops.streams.triggers.clock import every

    plain, again, now = every("1s"), every("1s"), every("1s", immediately=True)
    assert plain.stages is not None and again.stages is not None and now.stages is not None
    assert plain.stages[0].ident == again.stages[0].ident
    assert plain.stages[0].ident != now.stages[0].ident


def _key(r: Any) -> str:
    """Ticks 0-2 are key a, later ones key b (the virtual-time test's keys)."""
    return "a" if r.data.payload.n <= 2 else "b"


def test_a_reload_keeps_the_unchanged_prefix_and_its_window_in_virtual_time() -> None:
    """v0 → v1 edits only the last stage: once_within's window goes on (tick 2, key a,
    is still suppressed), the new last stage runs. v1 → v2 edits the window: it starts
    afresh (tick 5, key b, passes again), and the report says what was kept."""
    from reactivex import operators as ops
    from reactivex.testing import TestScheduler

    from reops import on, once_within
    from reops.core.model import Host, Hosts
    from reops.hub.flow_sources import Build, FlowSources
    from reops.streams.stream import staging
    from reops.streams.triggers._trigger import sharing
    from reops.streams.triggers.clock import every

    clock = TestScheduler()
    sources = FlowSources("off", notice=lambda n: None)
    hosts = Hosts([Host(name="h", address="127.0.0.1")])
    seen: list[tuple[str, int]] = []
    subs: list[Any] = []

    def build(gen: int, label: str, window: str) -> Build:
        b = Build(gen)
        t1, t2 = sharing.set(sources.builder(b)), staging.set(sources.stage_builder(b))
        try:
            made = (on(every(10, scheduler=clock), hosts=hosts)
                    | once_within(window, key=_key, scheduler=clock)
                    | ops.map(lambda r, label=label: (label, r.data.payload.n)))
        finally:
            sharing.reset(t1)
            staging.reset(t2)
        subs.append(made.observable.subscribe(seen.append))
        b.kept_text = b.report(made)  # type: ignore[attr-defined]
        return b

    v0 = build(1, "v0", "1h")
    assert v0.kept_text == ([], ["on(every('10s')) | once_within('1h') | reactivex operator"])
    clock.advance_to(25)  # ticks 0 (a: passes), 1 (a: suppressed) at 10 and 20

    v1 = build(2, "v1", "1h")
    assert v1.kept_text == (["on(every('10s')) | once_within('1h')"], ["reactivex operator"])
    sources.switch(v1)
    subs[0].dispose()  # the old version retires
    clock.advance_to(55)  # 2 (a: still in the window), 3 (b: passes), 4 (b: suppressed)

    v2 = build(3, "v2", "2h")  # the window's own argument: it and what follows are new
    assert v2.kept_text == (["on(every('10s'))"], ["once_within('2h') | reactivex operator"])
    sources.switch(v2)
    subs[1].dispose()
    clock.advance_to(65)  # 5 (b: a new, empty window)
    assert seen == [("v0", 0), ("v1", 3), ("v2", 5)]
    subs[2].dispose()
    assert not sources.live  # every live source ended with its last reader


WINDOWED = '''\
from pathlib import Path

from reactivex import operators as ops

from reops import Hosts, on, once_within
from reops.core.model import Host
from reops.flows import flow
from reops.streams.triggers.clock import every

LABEL = "v0"
WINDOW = "1h"


@flow
def windowed(keyfile: str, log: str, period: float = 0.05) -> object:
    """Each tick keyed by what KEYFILE says (logged to LOG), once per key per WINDOW."""

    def key(r):
        k = Path(keyfile).read_text().strip()
        with open(log, "a") as f:
            f.write(f"{r.data.payload.n} {k}\\n")
        return k

    hosts = Hosts([Host(name="here", address="127.0.0.1")])
    return (on(every(period), hosts=hosts) | once_within(WINDOW, key=key)
            | ops.map(lambda r: (LABEL, r.data.payload.n)))
'''
PASSED = re.compile(r"\('(v\d+)', (\d+)\)")


def passed(hub: Hub, log: Path) -> list[tuple[str, str]]:
    """(version label, key) of each tick that passed the window, in audit order."""
    keys = dict(line.split() for line in log.read_text().splitlines()) if log.exists() else {}
    out = []
    for r in hub.audit("windowed"):
        m = PASSED.fullmatch(r.detail) if r.status == "fired" else None
        if m:
            out.append((m[1], keys.get(m[2], "?")))
    return out


def logged_after(log: Path, n: int, key: str) -> bool:
    """Whether the window's key function saw a tick later than `n` under `key`."""
    return any(int(a) > n and b == key
               for a, b in (line.split() for line in log.read_text().splitlines()))


def last_logged(log: Path) -> int:
    return max(int(line.split()[0]) for line in log.read_text().splitlines())


def test_a_window_survives_a_reload_that_edits_only_a_later_step(hub: Hub, tmp_path: Path
                                                                 ) -> None:
    path, keyfile, log = tmp_path / "windowed.py", tmp_path / "key", tmp_path / "keys.log"
    keyfile.write_text("a")
    write(path, "v0", WINDOWED)
    hub.cli("flows", "start", str(path), "--keyfile", str(keyfile), "--log", str(log))
    until(lambda: passed(hub, log) == [("v0", "a")], "key a through v0's window")
    v1 = write(path, "v1", WINDOWED)  # only the last step's code changes
    out = hub.cli("flows", "reload", "windowed").stdout
    assert out.strip().endswith("kept on(every('0.05s')) | once_within('1h'); "
                                "swapped reactivex operator"), out
    # ticks of key a reach the kept window after the swap, and stay suppressed
    n = last_logged(log)
    until(lambda: logged_after(log, n + 1, "a"), "two more ticks of key a")
    keyfile.write_text("b")
    until(lambda: ("v1", "b") in passed(hub, log), "key b through v1's new step")
    assert passed(hub, log) == [("v0", "a"), ("v1", "b")]  # no second a: the window held
    info = hub.ls()["windowed"]
    assert info["version"] == v1
    assert info["reloaded"] == ("kept on(every('0.05s')) | once_within('1h'); "
                                "swapped reactivex operator")
    rows = [r for r in hub.audit("windowed") if r.status == "reloaded"]
    assert rows and rows[-1].detail.endswith(info["reloaded"])
    assert "last reload: kept on(every('0.05s'))" in hub.cli("flows", "ls").stdout

    # the window's own argument edited: it starts afresh (key b passes again), and says so
    write(path, "v2", WINDOWED.replace('WINDOW = "1h"', 'WINDOW = "2h"'))
    info = hub.request("flows.reload", name="windowed")
    assert (info["kept"], info["swapped"]) == (
        ["on(every('0.05s'))"], ["once_within('2h') | reactivex operator"])
    until(lambda: ("v2", "b") in passed(hub, log), "key b through v2's fresh window")
    assert passed(hub, log) == [("v0", "a"), ("v1", "b"), ("v2", "b")]


IMMEDIATE = '''\
from reactivex import operators as ops

from reops.flows import flow
from reops.streams.triggers.clock import every

LABEL = "v0"
NOW = False


@flow
def hourly() -> object:
    """Every hour (the first tick at once when NOW)."""
    return every(3600, immediately=NOW).observable.pipe(ops.map(lambda e: (LABEL, e.payload.n)))
'''


def test_a_trigger_with_other_keyword_arguments_is_another_trigger(hub: Hub, tmp_path: Path
                                                                   ) -> None:
    path = tmp_path / "hourly.py"
    write(path, "v0", IMMEDIATE)
    hub.cli("flows", "start", str(path))
    until(lambda: hub.ls()["hourly"]["state"] == "running", "the flow running")
    write(path, "v1", IMMEDIATE.replace("NOW = False", "NOW = True"))
    info = hub.request("flows.reload", name="hourly")
    # every(3600, immediately=True) is not every(3600): a new source, which ticks at once
    assert info["kept"] == [] and info["swapped"][0] == "every('3600s')"
    rows = until(lambda: [r for r in hub.audit("hourly") if r.status == "fired"],
                 "the new trigger's first tick")
    assert [r.detail for r in rows] == ["('v1', 0)"]


async def test_a_storm_is_announced_on_event_flow_squelched(hub: Hub, tmp_path: Path) -> None:
    """The storm notice's topic is `flow` (the bus: `event.flow.squelched`), as a
    `Squelched` published from a pipeline; the flows' lifecycle stays on `flows`."""
    from reops.control.client import HubClient
    from reops.control.wire import Event

    path = tmp_path / "ticks.py"
    write(path, "v0")
    client = HubClient(hub.lab_hub.control_path)
    try:
        events = client.pieces("subscribe", topics=["flow"])
        assert await anext(events) == Event(topic="subscribed", data={})
        await asyncio.to_thread(hub.cli, "flows", "start", str(path), "--max-rate", "5/1s",
                                "--period", "0.01")
        seen: list[tuple[str, str]] = []
        async with asyncio.timeout(60):  # (a subscription to `flow` also gets `flows`)
            async for item in events:
                assert isinstance(item, Event)
                seen.append((item.topic, item.data["event"]))
                if item.topic == "flow":
                    break
        assert seen == [("flows", "started"), ("flow", "squelched")]
        await events.aclose()
    finally:
        await client.close()


NOISY = '''\
import reactivex

from reops import Hosts, publish
from reops.core.model import Result
from reops.flows import flow
from reops.streams.stream import Stream


@flow
def noisy(n: int = 300) -> object:
    """N Results at once through publish(), more than the bus's high-water mark holds."""
    burst = [Result(host=f"h{i}", op="noise", status="ok", code=0, out="x" * 1000)
             for i in range(n)]
    return Stream(reactivex.concat(reactivex.from_iterable(burst), reactivex.never()),
                  Hosts()) | publish()


@flow
def quiet() -> object:
    """Publishes nothing (its publish() drops nothing, whatever the hub's others do)."""
    return Stream(reactivex.never(), Hosts()) | publish()
'''


def test_flows_ls_shows_each_flows_own_publish_drops(tmp_path: Path) -> None:
    h = Hub(tmp_path / "home", REOPS_HUB_BUS_HWM="1").start()
    try:
        path = tmp_path / "noisy.py"
        path.write_text(NOISY)
        h.cli("flows", "start", f"{path}:quiet")
        h.cli("flows", "start", f"{path}:noisy")
        noisy = until(lambda: h.ls()["noisy"]["publish_dropped"], "the noisy flow's drops")
        assert noisy > 0 and h.ls()["quiet"]["publish_dropped"] == 0
        assert f"{noisy} bus messages dropped by its publish()" in h.cli("flows", "ls").stdout
    finally:
        h.close()


def test_a_reload_that_changes_on_hosts_keeps_the_trigger_only() -> None:
    """`on(trigger, hosts=…)` with other hosts: the trigger (its schedule) is kept, `on` and
    everything after it are new, and the report says so."""
    from reactivex.testing import TestScheduler

    from reops import on, once_within
    from reops.core.model import Host, Hosts
    from reops.hub.flow_sources import Build, FlowSources
    from reops.streams.stream import staging
    from reops.streams.triggers._trigger import sharing
    from reops.streams.triggers.clock import every

    clock = TestScheduler()
    sources = FlowSources("off", notice=lambda n: None)

    def build(gen: int, host: str) -> tuple[list[str], list[str]]:
        b = Build(gen)
        t1, t2 = sharing.set(sources.builder(b)), staging.set(sources.stage_builder(b))
        try:
            where = Hosts([Host(name=host, address="127.0.0.1")])
            made = (on(every(10, scheduler=clock), hosts=where)
                    | once_within("1h", scheduler=clock))
        finally:
            sharing.reset(t1)
            staging.reset(t2)
        made.subscribe(lambda _: None)
        return b.report(made)

    assert build(1, "a") == ([], ["on(every('10s')) | once_within('1h')"])
    assert build(2, "a") == (["on(every('10s')) | once_within('1h')"], [])
    assert build(3, "b") == (["every('10s')"], ["on(…) | once_within('1h')"])
