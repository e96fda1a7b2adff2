"""Flows that live in the controller: a real `reops hub` process runs them on real lab hosts.

`reops flows start` (a CLI subprocess) sends the flow to the hub; the tests then read the
hub's SQLite audit (the real store file) or ask through `reops flows ls/log`. Waits poll a
condition with a deadline; nothing is judged by how long it took. The test flow is a clock
on the runtime loop (reactivex `timer`) mapped to `exec_` on lab hosts.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubs import HubProc, until

from reops.lab.fleet import LabInfo
from reops.store.flows import AuditRow, SqliteFlowStore

FLOW = '''\
"""A clock on the runtime loop mapped to COMMAND on the selected lab hosts."""
from pathlib import Path

import reactivex
from reactivex import operators as ops
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler

from reops import exec_, inventory
from reops.core.runtime import get_runtime
from reops.flows import flow


@flow
def tick(inv: Path, selector: str = "all", command: str = "true", every: float = 0.5,
         first: float = 0.0, fail_at: int = -1) -> object:
    """Run COMMAND on the hosts every EVERY seconds (the first time after FIRST)."""
    hosts = inventory(inv).select(selector)
    loop = AsyncIOThreadSafeScheduler(get_runtime().loop)

    def check(n: int) -> int:
        if n == fail_at:
            raise RuntimeError(f"tick {n} is broken")
        return n

    return reactivex.timer(first, every, scheduler=loop).pipe(
        ops.map(check), ops.flat_map(lambda n: exec_(hosts, command).observable))
'''
#: the line of `raise RuntimeError` in FLOW
FAIL_LINE = next(i for i, line in enumerate(FLOW.splitlines(), 1) if "raise RuntimeError" in line)


class Hub(HubProc):
    """A `reops hub` process with its own home, the CLI pointed at it, and its audit."""

    def __init__(self, home: Path, **env: str) -> None:
        super().__init__(home, **env)
        self.store: SqliteFlowStore | None = None

    def ls(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in json.loads(self.cli("flows", "ls", "-o", "json").stdout)}

    def audit(self, name: str) -> list[AuditRow]:
        if self.store is None:
            self.store = SqliteFlowStore(self.home / "flows.db")
        return self.store.audit(name)

    def hosts(self, name: str, **match: Any) -> list[AuditRow]:
        """The flow's per-host rows that have every field in `match`."""
        return [r for r in self.audit(name)
                if r.host and all(getattr(r, k) == v for k, v in match.items())]

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.stop(signal.SIGTERM)


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    path = tmp_path / "flows" / "tick.py"
    path.parent.mkdir()
    path.write_text(FLOW)
    return path


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "home").start()
    yield h
    h.close()


def two(lab: LabInfo) -> str:
    first, second = list(lab.hosts)[:2]
    return f"{first},{second}"


def version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_start_fires_periodically_on_lab_hosts_then_ls_log_stop(
        hub: Hub, lab: LabInfo, flow_file: Path) -> None:
    names = two(lab)
    out = hub.cli("flows", "start", str(flow_file), "--inv", str(lab.inventory),
                  "--selector", names, "--command", "echo fired", "--every", "0.5").stdout
    assert out.startswith("started tick (") and version(flow_file) in out
    # the CLI returned; the hub keeps firing: three firings, each on both hosts, all ok
    rows = until(lambda: len({r.firing for r in hub.hosts("tick", status="ok")}) >= 3
                 and hub.hosts("tick", status="ok"), "three firings")
    assert {r.host for r in rows} == set(names.split(","))
    assert {(r.version, r.trigger, r.detail, r.code) for r in rows} == {
        (version(flow_file), "exec", "exec", 0)}
    assert all(r.started_at > 0 for r in rows)

    info = hub.ls()["tick"]
    assert info["state"] == "running" and info["wanted"] and not info["error"]
    assert info["fired"] >= 3 and info["last"] in ("1 ok", "2 ok")
    assert (info["file"], info["func"]) == (str(flow_file), "tick")
    assert info["args"][:2] == ["--inv", str(lab.inventory)]
    text = hub.cli("flows", "ls").stdout
    assert text.splitlines()[1].split()[:2] == ["tick", "running"]
    log = [json.loads(line) for line in
           hub.cli("flows", "log", "tick", "-o", "json", "-n", "1000").stdout.splitlines()]
    assert log[0]["status"] == "started" and str(flow_file) in log[0]["detail"]
    assert {r["host"] for r in log if r.get("host")} == set(names.split(","))
    pretty = hub.cli("flows", "log", "tick").stdout
    assert f"{version(flow_file)}  #" in pretty and " ok  exec" in pretty

    # a second start under the same name is refused with one line; under --as it runs
    again = hub.cli("flows", "start", str(flow_file), "--inv", str(lab.inventory), check=False)
    assert again.returncode == 2 and "'tick' is already running" in again.stderr
    hub.cli("flows", "start", "--as", "tock", str(flow_file), "--inv", str(lab.inventory),
            "--selector", names, "--every", "0.5")

    assert hub.cli("flows", "stop", "tick").stdout.strip() == "stopped tick"
    stop = until(lambda: [r for r in hub.audit("tick") if r.status == "stopped"], "the stop")
    seen = len({r.firing for r in hub.hosts("tock")})
    # tock fires twice more on the same clock: tick, stopped, has started nothing since
    until(lambda: len({r.firing for r in hub.hosts("tock")}) >= seen + 2, "tock firing on")
    assert hub.hosts("tick") and all(r.started_at < stop[0].at for r in hub.hosts("tick"))
    listed = hub.ls()
    assert listed["tick"]["state"] == "stopped" and not listed["tick"]["wanted"]
    assert listed["tock"]["state"] == "running"
    hub.cli("flows", "stop", "tock")
    missing = hub.cli("flows", "stop", "nope", check=False)
    assert missing.returncode == 2 and "no flow 'nope'" in missing.stderr


def test_a_failing_step_keeps_the_flow_and_a_bug_in_it_marks_error(
        hub: Hub, lab: LabInfo, flow_file: Path) -> None:
    host = next(iter(lab.hosts))
    hub.cli("flows", "start", "--as", "failing", str(flow_file), "--inv", str(lab.inventory),
            "--selector", host, "--command", "echo no >&2; exit 3", "--every", "0.3")
    hub.cli("flows", "start", "--as", "buggy", str(flow_file), "--inv", str(lab.inventory),
            "--selector", host, "--every", "0.3", "--fail-at", "2")
    failed = until(lambda: len(hub.hosts("failing", status="failed")) >= 3
                   and hub.hosts("failing", status="failed"), "three failed firings")
    assert {(r.code, r.detail) for r in failed} == {(3, "exec: no")}
    # the bug at tick 2 ends that flow's stream: `error`, with the flow file's line
    until(lambda: hub.ls()["buggy"]["state"] == "error", "buggy in error")
    listed = hub.ls()
    assert listed["buggy"]["error"] == (f"{flow_file}:{FAIL_LINE}: RuntimeError: "
                                        "tick 2 is broken")
    assert len(hub.hosts("buggy", status="ok")) == 2  # ticks 0 and 1 ran
    assert hub.audit("buggy")[-1].status == "error"
    assert f"error: {flow_file}:{FAIL_LINE}:" in hub.cli("flows", "ls").stdout
    assert listed["failing"]["state"] == "running" and listed["failing"]["last"] == "1 failed"
    assert hub.proc.poll() is None  # the hub is up and answering


def test_bad_starts_are_one_line_and_store_nothing(hub: Hub, lab: LabInfo,
                                                   flow_file: Path) -> None:
    missing = hub.cli("flows", "start", str(flow_file), check=False)  # --inv is required
    assert missing.returncode == 2
    assert "Missing option '--inv'" in missing.stderr and len(missing.stderr.splitlines()) == 1
    broken = flow_file.with_name("broken.py")
    broken.write_text("from reops.flows import flow\n\n@flow\ndef b(:\n    pass\n")
    bad = hub.cli("flows", "start", str(broken), check=False)
    assert bad.returncode == 2 and f"{broken}:4: syntax error" in bad.stderr
    once = flow_file.with_name("once.py")
    once.write_text("from reops.flows import flow\n\n@flow\ndef once() -> int:\n    return 0\n")
    finite = hub.cli("flows", "start", str(once), check=False)
    assert finite.returncode == 2 and "returns a Stream or an Observable" in finite.stderr
    named = hub.cli("flows", "start", "--as", "a b", str(flow_file), "--inv", "x", check=False)
    assert named.returncode == 2 and "bad flow name 'a b'" in named.stderr
    assert hub.ls() == {}


def test_kill_9_then_restart_runs_the_flow_again(hub: Hub, lab: LabInfo,
                                                 flow_file: Path) -> None:
    hub.cli("flows", "start", str(flow_file), "--inv", str(lab.inventory),
            "--selector", two(lab), "--command", "echo before", "--every", "0.5")
    until(lambda: len({r.firing for r in hub.hosts("tick")}) >= 2, "two firings")
    killed = hub.proc.pid
    hub.lab_hub.stop(signal.SIGKILL)
    before = hub.audit("tick")[-1].seq

    hub.start()
    assert hub.proc.pid != killed
    # the same flow, the same options: it fires again on both hosts
    after = until(lambda: [r for r in hub.audit("tick") if r.seq > before], "the restart")
    assert after[0].status == "restarted"
    until(lambda: len({r.firing for r in hub.hosts("tick") if r.seq > before}) >= 2,
          "two firings after the restart")
    info = hub.ls()["tick"]
    assert info["state"] == "running" and info["restarts"] == 1
    assert info["args"] == ["--inv", str(lab.inventory), "--selector", two(lab),
                            "--command", "echo before", "--every", "0.5"]
    firings = [r.firing for r in hub.hosts("tick")]
    assert firings == sorted(firings)  # numbering goes on from the stored count
    assert "(restarted 1x by the hub)" in hub.cli("flows", "ls").stdout


def test_reload_a_broken_edit_keeps_the_old_version_then_a_good_one_swaps(
        hub: Hub, lab: LabInfo, flow_file: Path) -> None:
    host = next(iter(lab.hosts))
    v1 = version(flow_file)
    hub.cli("flows", "start", str(flow_file), "--inv", str(lab.inventory), "--selector", host,
            "--every", "0.3")
    until(lambda: hub.hosts("tick", version=v1), "a firing of v1")

    flow_file.write_text(FLOW.replace("    hosts = inventory", "    hosts = = inventory"))
    broken_line = next(i for i, line in enumerate(flow_file.read_text().splitlines(), 1)
                       if "= = inventory" in line)
    failed = hub.cli("flows", "reload", "tick", check=False)
    assert failed.returncode == 1
    assert f"{flow_file}:{broken_line}: syntax error" in failed.stderr
    assert f"version {v1} keeps running" in failed.stderr
    info = hub.ls()["tick"]
    assert info["state"] == "running" and info["version"] == v1
    assert info["error"].startswith(f"{flow_file}:{broken_line}: syntax error")
    assert [r.detail for r in hub.audit("tick") if r.status == "reload-failed"] == [
        info["error"]]
    seen = len(hub.hosts("tick"))
    until(lambda: len(hub.hosts("tick", version=v1, status="ok")) >= seen + 2,
          "the old version firing on after the broken edit")

    flow_file.write_text(FLOW.replace('command: str = "true"', 'command: str = "exit 4"'))
    v2 = version(flow_file)
    done = hub.cli("flows", "reload", "tick").stdout
    assert done.startswith(f"reloaded tick: {v1} -> {v2} in ")
    new = until(lambda: hub.hosts("tick", version=v2), "a firing of v2")
    assert {(r.status, r.code) for r in new} == {("failed", 4)}  # the new code runs
    info = hub.ls()["tick"]
    assert (info["version"], info["error"], info["reloads"]) == (v2, "", 1)
    swap = next(r for r in hub.audit("tick") if r.status == "reloaded")
    # the old version is disposed: none of its firings started after the swap was recorded
    assert all(r.started_at < swap.at for r in hub.hosts("tick", version=v1))


def test_watch_reloads_on_a_file_change(hub: Hub, lab: LabInfo, flow_file: Path) -> None:
    host = next(iter(lab.hosts))
    hub.cli("flows", "start", "--watch", str(flow_file), "--inv", str(lab.inventory),
            "--selector", host, "--every", "0.3")
    until(lambda: hub.hosts("tick", version=version(flow_file)), "a first firing")
    flow_file.write_text(FLOW.replace('command: str = "true"', 'command: str = "exit 5"'))
    v2 = version(flow_file)
    new = until(lambda: hub.hosts("tick", version=v2), "a firing of the saved edit")
    assert {(r.status, r.code) for r in new} == {("failed", 5)}
    assert hub.ls()["tick"]["watch"] is True


def test_sigterm_drains_the_steps_in_flight(hub: Hub, lab: LabInfo, flow_file: Path) -> None:
    names = two(lab)
    hub.cli("flows", "start", str(flow_file), "--inv", str(lab.inventory), "--selector", names,
            "--command", "sleep 5; echo drained", "--every", "3600")
    until(lambda: hub.request("flows.ls")[0]["in_flight"] == 2, "both hosts' steps in flight")
    hub.proc.send_signal(signal.SIGTERM)
    assert hub.proc.wait(60) == 0
    # the steps in flight finished and were recorded before the hub exited
    rows = hub.hosts("tick")
    assert sorted((r.host, r.status, r.firing) for r in rows) == sorted(
        (h, "ok", 1) for h in names.split(","))
    assert all(r.duration_s >= 5 for r in rows)  # each ran to its end, none was cut short


def test_action_concurrency_is_bounded_per_flow(tmp_path: Path, lab: LabInfo,
                                                flow_file: Path) -> None:
    hub = Hub(tmp_path / "home", REOPS_FLOWS_CONCURRENCY="2").start()
    try:
        four = ",".join(list(lab.hosts)[:4])
        hub.cli("flows", "start", str(flow_file), "--inv", str(lab.inventory),
                "--selector", four, "--command", "sleep 0.5", "--every", "3600")
        rows = until(lambda: len(hub.hosts("tick")) == 4 and hub.hosts("tick"), "4 hosts")
        assert {r.status for r in rows} == {"ok"}
        spans = [(r.started_at, r.started_at + r.duration_s) for r in rows]
        most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
        assert most == 2  # never more than 2 of the 4 at once (without the bound: 4)
    finally:
        hub.close()


def test_flows_dir_still_lists_saved_flows(flow_file: Path) -> None:
    from click.testing import CliRunner

    from reops.cli.main import main

    for args in (["flows", str(flow_file.parent)], ["flows", "list", str(flow_file.parent)]):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 0, out.output
        assert out.output.startswith(f"{flow_file}:tick  Run COMMAND on the hosts")
        assert "--inv" in out.output


ON_FLOW = '''\
from pathlib import Path

from reops import exec_, inventory, then
from reops.flows import flow
from reops.streams.triggers.clock import every
from reops.streams.triggers.on import on


@flow
def beat(inv: Path, selector: str = "all", period: float = 0.5) -> object:
    """A clock trigger's ticks become the hosts' first step; `true` runs on each."""
    return on(every(period), hosts=inventory(inv).select(selector)) | then(exec_, "true")
'''


def test_a_trigger_event_is_one_firing_over_its_hosts(hub: Hub, lab: LabInfo,
                                                      tmp_path: Path) -> None:
    pytest.importorskip("reops.streams.triggers.on")
    path = tmp_path / "beat.py"
    path.write_text(ON_FLOW)
    names = two(lab)
    hub.cli("flows", "start", str(path), "--inv", str(lab.inventory), "--selector", names)
    until(lambda: len({r.firing for r in hub.hosts("beat", status="ok")}) >= 5, "5 firings")
    rows = hub.hosts("beat", status="ok")
    by_firing: dict[int, set[str]] = {}
    for r in rows:
        by_firing.setdefault(r.firing, set()).add(r.host)
        assert r.trigger.startswith("event.clock.tick") and r.detail == "exec"
    done = sorted(by_firing)[:-2]  # the newest may still be running on one host
    assert len(done) >= 3
    assert all(by_firing[f] == set(names.split(",")) for f in done)


def test_log_follow_prints_records_as_they_are_written_until_ctrl_c(
        hub: Hub, lab: LabInfo, flow_file: Path) -> None:
    host = next(iter(lab.hosts))
    hub.cli("flows", "start", str(flow_file), "--inv", str(lab.inventory), "--selector", host,
            "--every", "0.3")
    follow = subprocess.Popen([sys.executable, "-m", "reops.cli.main", "flows", "log", "tick",
                               "--follow", "-o", "json"], env=hub.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(60, follow.kill)  # a hang ends as EOF, failing below
    watchdog.start()
    try:
        assert follow.stdout is not None
        rows = []
        while len([r for r in rows if r.get("host")]) < 4:
            line = follow.stdout.readline()
            if not line:
                assert follow.stderr is not None
                raise AssertionError(f"`flows log --follow` ended: {follow.stderr.read()}")
            rows.append(json.loads(line))
        assert rows[0]["status"] == "started"
        seqs = [r["seq"] for r in rows]
        assert seqs == sorted(set(seqs))  # each record once, in order
        assert {r["host"] for r in rows if r.get("host")} == {host}
        follow.send_signal(signal.SIGINT)
        assert follow.wait(30) == 130
    finally:
        watchdog.cancel()
        follow.kill()
        follow.wait()


async def test_flow_events_reach_control_subscribers(hub: Hub, lab: LabInfo,
                                                     flow_file: Path) -> None:
    """Starts, errors, reloads … are events on topic `flows` (`reops events`, the bus)."""
    import asyncio

    from reops.control.client import HubClient
    from reops.control.wire import Event

    client = HubClient(hub.lab_hub.control_path)
    try:
        events = client.pieces("subscribe", topics=["flows"])
        assert await anext(events) == Event(topic="subscribed", data={})
        await asyncio.to_thread(hub.cli, "flows", "start", str(flow_file), "--inv",
                                str(lab.inventory), "--selector", next(iter(lab.hosts)),
                                "--every", "0.3", "--fail-at", "1")
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            async for item in events:
                assert isinstance(item, Event) and item.topic == "flows"
                seen.append(item.data)
                if item.data["event"] == "error":
                    break
        assert [(e["event"], e["flow"], e["version"]) for e in seen] == [
            ("started", "tick", version(flow_file)), ("error", "tick", version(flow_file))]
        assert seen[1]["detail"] == f"{flow_file}:{FAIL_LINE}: RuntimeError: tick 1 is broken"
        await events.aclose()
    finally:
        await client.close()


def test_a_flows_results_land_in_the_run_history(hub: Hub, lab: LabInfo,
                                                 flow_file: Path) -> None:
    """Every Result a flow in the hub produces is in `reops history`, as that flow's."""
    host = next(iter(lab.hosts))
    hub.cli("flows", "start", "--as", "histo", str(flow_file), "--inv", str(lab.inventory),
            "--selector", host, "--command", "echo from-flow; exit 3", "--every", "0.3")

    def rows() -> list[dict[str, Any]]:
        out = hub.cli("history", "--since", "1d", "--failed", "-o", "json").stdout
        return [r for r in json.loads(out or "[]") if r.get("flow") == "histo"]

    got = until(lambda: len(rows()) >= 2 and rows(), "the flow's Results in the history")
    assert {(r["source"], r["host"], r["op"], r["status"], r["code"]) for r in got} == {
        ("flow", host, "exec", "failed", 3)}
    assert all("from-flow" in r["out"] for r in got)
    assert all(str(flow_file) in r["command"] for r in got)
    hub.cli("flows", "stop", "histo")


BLOCKING_FLOW = '''\
import threading

from reops.flows import flow


@flow
def stuck() -> object:
    """Blocks while it builds: what a flow calling run() at start-up looks like to the hub."""
    threading.Event().wait(600)
    return None
'''


def test_flows_that_block_while_building_do_not_starve_the_hub(tmp_path: Path) -> None:
    """More blocked starts than the hub loop has executor threads: each start times out with
    its one line, and the hub still answers (its store calls need those threads)."""
    path = tmp_path / "stuck.py"
    path.write_text(BLOCKING_FLOW)
    h = Hub(tmp_path / "home", REOPS_FLOWS_START_TIMEOUT_S="0.5").start()
    try:
        for i in range(8):  # the default executor has min(32, cpus + 4) threads
            done = h.cli("flows", "start", "--as", f"stuck{i}", str(path), check=False)
            assert done.returncode == 2 and "did not return within 0.5s" in done.stderr
        assert h.cli("flows", "ls", "-o", "json").returncode == 0  # answered, not starved
        assert h.proc.poll() is None
    finally:
        h.lab_hub.stop(signal.SIGKILL, timeout=20)
