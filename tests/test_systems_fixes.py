"""Fixes users hit with machines (issue 14, item 6), each against real parts: a real
controller hosting Machines over its control socket, libvirt's test driver, real config."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from systems_fixtures import config_toml
from test_containers import STEP, daemon, done, machines  # noqa: F401 (fixtures)
from test_containers import pytestmark as needs_lxc
from test_systems_service import HubThread

from reops.cli.systems import jobs, systems, types
from reops.systems.config import embedded_uri, load_machines_config
from reops.systems.machines import Machines

#: a bound on a command that must not wait: reaching it means it waited for something
PROMPT = 60.0


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubThread]:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("REOPS_HUB_CONTROL", str(tmp_path / "run/hub.sock"))
    with HubThread(tmp_path) as h:
        yield h


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """No hub: each command runs Machines in its own process, as in a shell."""
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    monkeypatch.setenv("REOPS_CONFIG", str(config_toml(tmp_path)))
    monkeypatch.setenv("REOPS_HUB_CONTROL", str(tmp_path / "run/none.sock"))
    return CliRunner()


def invoke_within(cli: CliRunner, cmd: object, args: list[str], limit: float) -> Result:
    """Run a click command in a thread; fail (not hang) when it takes more than `limit`."""
    out: list[Result] = []
    t = threading.Thread(target=lambda: out.append(cli.invoke(cmd, args)), daemon=True)  # type: ignore[arg-type]
    t.start()
    t.join(limit)
    assert out, f"{args} still running after {limit:g}s"
    return out[0]


def test_create_prints_each_queued_line_once_through_the_hub(hub: HubThread) -> None:
    cli = CliRunner()
    assert cli.invoke(types, ["add", "web"]).exit_code == 0
    r = cli.invoke(systems, ["create", "web", "--count", "2", "--hostname", "w"])
    assert r.exit_code == 0, r.output
    for name in ("w-1", "w-2"):
        lines = [ln for ln in r.output.splitlines() if name in ln and "job" in ln]
        assert [ln.split()[0] for ln in lines] == ["queued", "started", "succeeded"], r.output


def test_jobs_wait_on_a_finished_job_answers_at_once(hub: HubThread,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished job has no end event to come: `jobs wait` must not sit out the grace it
    gives events of jobs still running (an hour here, so waiting it out fails the test)."""
    monkeypatch.setattr("reops.systems.api.FOLLOW_GRACE", 3600.0)
    cli = CliRunner()
    assert cli.invoke(types, ["add", "web"]).exit_code == 0
    assert cli.invoke(systems, ["create", "web", "--hostname", "w1"]).exit_code == 0
    job_id = cli.invoke(jobs, ["ls"]).output.splitlines()[1].split()[0]
    r = invoke_within(cli, jobs, ["wait", job_id], PROMPT)
    assert r.exit_code == 0 and f"job {job_id} succeeded" in r.output, r.output



def test_api_wait_on_a_finished_job_answers_at_once(hub: HubThread,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API as `jobs wait`: through the hub, following job events, a job that
    finished before the wait answers from its record at once (not after FOLLOW_GRACE, an
    hour here, which `asyncio.timeout(PROMPT)` turns into a failure)."""
    import asyncio

    from reops.systems.api import connect

    monkeypatch.setattr("reops.systems.api.FOLLOW_GRACE", 3600.0)
    cli = CliRunner()
    assert cli.invoke(types, ["add", "web"]).exit_code == 0
    assert cli.invoke(systems, ["create", "web", "--hostname", "w1"]).exit_code == 0
    job_id = cli.invoke(jobs, ["ls"]).output.splitlines()[1].split()[0]

    async def wait() -> list[str]:
        api = await connect(hub=True)
        try:
            assert api.where == "hub"
            await api.follow()
            async with asyncio.timeout(PROMPT):
                done = await api.wait([await api.job(job_id)])
            return [j.state for j in done]
        finally:
            await api.aclose()

    assert asyncio.run(wait()) == ["succeeded"]



def test_a_physical_rack_keeps_the_embedded_default(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuring only a rack of physical machines: VMs still go to the embedded libvirt
    default, and `register` still finds the rack without --hypervisor."""
    cfg = tmp_path / "config.toml"
    cfg.write_text('[hypervisors.rack]\nkind = "physical"\n')
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    monkeypatch.setenv("REOPS_CONFIG", str(cfg))
    monkeypatch.setenv("REOPS_HUB_CONTROL", str(tmp_path / "run/none.sock"))
    config = load_machines_config(cfg)
    assert set(config.hypervisors) == {"rack", "local"}
    default = config.hypervisor(None)
    assert (default.name, default.kind, default.uri) == ("local", "libvirt", embedded_uri())
    cli = CliRunner()
    r = cli.invoke(systems, ["register", "box1", "--mac", "52:54:00:00:00:01"])
    assert r.exit_code == 0, r.output
    listed = json.loads(cli.invoke(systems, ["ls", "box1", "-o", "json"]).output)
    assert listed[0]["placement"]["hypervisor"] == "rack"


@pytest.mark.parametrize("selector,message", [
    ("wbe-*", "no system matches 'wbe-*' (did you mean 'web-1'?)"),
    ("typed:wbe", "no system has type 'wbe' (did you mean 'web'?)"),
    ("hyp:lb", "no system has hypervisor 'lb' (did you mean 'lab'?)"),
    ("state:runing", "no system has state 'runing' (did you mean 'running'?)"),
    ("runing", "no system named or with id 'runing' (did you mean 'running'?)"),
    ("web", "no system named or with id 'web' (did you mean 'typed:web'?)"),
])
def test_system_selectors_say_did_you_mean(local: CliRunner, selector: str,
                                           message: str) -> None:
    """As host selectors do: a typo is one line naming what is close, never an empty list."""
    cli = local
    assert cli.invoke(types, ["add", "web"]).exit_code == 0
    assert cli.invoke(systems, ["create", "web", "--hostname", "web-1"]).exit_code == 0
    r = cli.invoke(systems, ["ls", selector])
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.strip().count("\n") <= 2, r.output


def test_system_selectors_tell_typos_from_empty_selections(local: CliRunner) -> None:
    """A type with no systems yet selects nothing (exit 0); a typo of one in use is an error."""
    cli = local
    assert cli.invoke(types, ["add", "web"]).exit_code == 0
    assert cli.invoke(types, ["add", "db"]).exit_code == 0
    assert cli.invoke(systems, ["create", "web", "--hostname", "web-1"]).exit_code == 0
    for selector, hosts in [("typed:db", []), ("web*", ["web-1"]), ("state:running", ["web-1"]),
                            ("hyp:lab & typed:web", ["web-1"]), ("state:stopped", [])]:
        r = cli.invoke(systems, ["ls", selector, "-o", "json"])
        assert r.exit_code == 0, (selector, r.output)
        assert [s["machine"]["hostname"] for s in json.loads(r.output)] == hosts, selector
    r = cli.invoke(systems, ["ls", "typed:wbe & state:running"])
    assert r.exit_code == 2 and "(did you mean 'web'?)" in r.output, r.output


def test_types_ls_shows_a_types_args(local: CliRunner, tmp_path: Path) -> None:
    """The recipe's arguments are part of what a type is: `types ls` shows them."""
    cli = local
    recipe = tmp_path / "redis.py"
    recipe.write_text("def provision(hosts, port='6379', maxmem='64mb'):\n    return None\n")
    r = cli.invoke(types, ["add", "redis", "-p", str(recipe), "--arg", "port=7000",
                           "--arg", "maxmem=1gb"])
    assert r.exit_code == 0, r.output
    assert cli.invoke(types, ["add", "bare"]).exit_code == 0
    lines = cli.invoke(types, ["ls"]).output.splitlines()
    assert lines[0].split() == ["NAME", "DESCRIPTION", "PROVISION", "ARGS"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["redis"][-2:] == ["port=7000", "maxmem=1gb"], lines
    assert rows["bare"][-1] == "-", lines


@needs_lxc
async def test_a_started_event_means_booting_until_ssh_answers(
        machines: Machines) -> None:  # noqa: F811 (the fixture)
    """Issue 14 item 3: `running` is up AND reachable. A container started behind reops's
    back (virsh start, autostart) is `booting` on libvirt's STARTED event, with no address,
    not `running` before anything checked that its SSH answers (a real LXC container)."""
    import asyncio
    import time

    m = machines
    started: list[str] = []
    (await m.hypervisor_events("ct")).subscribe(
        lambda e: started.append(e.name) if e.event == "STARTED" else None)
    m.add_type("web")
    await done(m, await m.create("web", ["tiny"], hostname="ct9"))
    [s] = m.systems("ct9")
    assert s.state == "running" and s.machine.ip  # the boot saw SSH answer
    await done(m, m.submit("stop", "ct9"))
    assert m.system(s.id).state == "stopped"
    started.clear()
    await (await m.hypervisor("ct")).start(s.placement.domain)  # not through a reops job
    deadline = time.monotonic() + STEP
    while not started or m.system(s.id).state == "stopped":
        assert time.monotonic() < deadline, (started, m.system(s.id).state)
        await asyncio.sleep(0.05)
    after = m.system(s.id)
    assert (after.state, after.machine.ip) == ("booting", None)
    await done(m, m.submit("destroy", "ct9"))

