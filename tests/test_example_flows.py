"""The shipped example flows and the steps they need, against real parts: the lab's sshd
hosts, its SysV `webapp` service, a real `reops hub` (bus; machines on the libvirt test
driver), real busy loops. Waits are on events or conditions with a deadline.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reops import Host, Hosts, exec_, run, service
from reops.core.model import Result
from reops.core.pyfile import import_file
from reops.lab.agents import LabHub
from reops.lab.fleet import LabInfo
from reops.streams.ssh_wait import wait_ssh
from reops.systems.provision_step import provision
from tests.conftest import LabFactory, Seen

EXAMPLES = Path(__file__).resolve().parent.parent / "flows" / "examples"
DEADLINE = 60.0


def example(name: str) -> Any:
    return import_file(str(EXAMPLES / f"{name}.py"), what="example flow")


# ── the steps ──────────────────────────────────────────────────────────────────────────


def test_wait_ssh_is_ok_once_a_lab_host_logs_in(lab: LabInfo) -> None:
    out = run(wait_ssh(lab.as_hosts().only(["web1"]), timeout=30))
    (r,) = out.results
    assert (r.host, r.op, r.status) == ("web1", "wait_ssh", "ok") and "ssh up" in r.out


def test_wait_ssh_gives_up_unreachable_with_the_last_reason(
        dead_address: tuple[str, int]) -> None:
    address, port = dead_address
    out = run(wait_ssh(Host(name="gone", address=address, port=port), timeout=1.5,
                       first_s=0.2))
    (r,) = out.results
    assert (r.op, r.status) == ("wait_ssh", "unreachable")
    assert "did not answer within 1.5 s" in r.err and "attempt(s); last: " in r.err
    tries = int(r.err.split("(")[1].split(" ")[0])
    assert tries >= 2  # it retried, with backoff, within the bound


def test_provision_a_host_that_is_no_system_fails_saying_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    (r,) = run(provision(Host(name="stranger", address="127.0.0.1"))).results
    assert (r.op, r.status) == ("provision", "failed")
    assert r.err.startswith("stranger is no system reops manages")


# ── heal: a service check fails → restart once per host per window ────────────────────


def _status(hosts: Hosts) -> dict[str, bool]:
    out = run(service.status(hosts, "webapp"))
    return {r.host: bool(r.data.active) for r in out.results}


def test_heal_restarts_a_stopped_service_once_per_window(
        lab: LabInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = lab.as_hosts().only(["web1", "web2"])
    web1 = hosts.only(["web1"])
    assert run(service.start(hosts, "webapp", sudo=True)).ok
    assert run(service.stop(web1, "webapp", sudo=True)).ok
    assert _status(hosts) == {"web1": False, "web2": True}

    module = example("heal")
    seen_down: dict[str, int] = {}
    cond = threading.Condition()
    real_down = module.down

    def counting(r: Result) -> bool:  # the flow's own check, counted per host
        verdict = bool(real_down(r))
        if verdict:
            with cond:
                seen_down[r.host] = seen_down.get(r.host, 0) + 1
                cond.notify_all()
        return verdict

    monkeypatch.setattr(module, "down", counting)
    got = Seen()
    flow = module.heal(selector="web1,web2", check_every="1s", window="1h",
                       inventory=lab.inventory)
    sub = flow.subscribe(got, got.error)
    try:
        (restart,) = got.wait(lambda xs: len(xs) >= 1, "the restart on web1")
        assert (restart.host, restart.op, restart.status) == ("web1", "service.restart", "ok")
        assert [s.op for s in restart.steps[:2]] == ["event.clock.tick", "service.status"]
        assert _status(hosts) == {"web1": True, "web2": True}

        # a second failure within the window: seen by the check, not restarted again
        with cond:
            before = seen_down.get("web1", 0)
        assert run(service.stop(web1, "webapp", sudo=True)).ok
        with cond:
            assert cond.wait_for(lambda: seen_down.get("web1", 0) >= before + 2, DEADLINE)
        assert len(got.items) == 1 and not got.errors
        assert _status(hosts) == {"web1": False, "web2": True}
        assert "web2" not in seen_down
    finally:
        sub.dispose()
        run(service.stop(hosts, "webapp", sudo=True))


# ── watch_load: a real busy loop → an alert on the bus ────────────────────────────────


@pytest.fixture
def bus_hub(tmp_path: Path) -> Iterator[LabHub]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {"REOPS_HUB_CONTROL": "", "REOPS_HUB_KEYS_DIR": "",
           "REOPS_HUB_BUS_IN": "tcp://127.0.0.1:*", "REOPS_HUB_BUS_OUT": "tcp://127.0.0.1:*",
           "REOPS_CONFIG": str(home / "none.toml")}
    with LabHub(home=home, env=env, bind="tcp://127.0.0.1:*").start() as h:
        yield h


def test_watch_load_publishes_an_alert_when_a_lab_host_is_busy(
        lab: LabInfo, bus_hub: LabHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """`reops run watch_load.py` (its own process, as a user runs it) samples db1 over SSH;
    a real busy loop per core on db1 makes it publish event.metric.crossed, which a
    `bus()` subscriber here receives."""
    env = {**os.environ, "REOPS_HOME": str(bus_hub.home), "REOPS_HUB_CONTROL": "",
           "REOPS_HUB_KEYS_DIR": "", "REOPS_CONFIG": str(bus_hub.home / "none.toml")}
    for k in ("REOPS_HOME", "REOPS_HUB_CONTROL", "REOPS_HUB_KEYS_DIR", "REOPS_CONFIG"):
        monkeypatch.setenv(k, env[k])
    from reops import bus

    db1 = lab.as_hosts().only(["db1"])
    alerts: queue.Queue[Any] = queue.Queue()
    listening = bus("event.metric.crossed").subscribe(on_next=alerts.put)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "reops", "run", str(EXAMPLES / "watch_load.py"),
         "--selector", "db1", "--condition", "cpu.busy > 90", "--lasting", "0s",
         "--every", "1", "--inventory", str(lab.inventory)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    loops = run(exec_(db1, "for i in $(seq $(nproc)); do (while :; do :; done) "
                           ">/dev/null 2>&1 & echo $!; done"))
    pids = loops.results[0].out.split()
    try:
        assert loops.ok and pids
        try:
            msg = alerts.get(timeout=DEADLINE)
        except queue.Empty:
            watcher.terminate()
            raise AssertionError(f"no alert; the flow said: {watcher.communicate()[1]}") from None
        event = msg.body.data
        assert msg.topic == "event.metric.crossed"
        assert event["key"] == "db1" and event["payload"]["condition"] == "cpu.busy > 90"
        assert event["payload"]["value"] > 90
    finally:
        run(exec_(db1, "kill " + " ".join(pids) + " 2>/dev/null; true"))
        watcher.terminate()
        watcher.wait(30)
        listening.dispose()


# ── reops run --dry-run ───────────────────────────────────────────────────────────────


def _reops(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_dry_run_feeds_recorded_events_and_runs_nothing(lab: LabInfo, tmp_path: Path) -> None:
    env = {**os.environ, "REOPS_HOME": str(tmp_path / "home"),
           "REOPS_CONFIG": str(tmp_path / "none.toml"), "REOPS_INVENTORY": str(lab.inventory)}
    assert run(service.start(lab.as_hosts().only(["web1", "web2"]), "webapp", sudo=True)).ok
    try:
        # heal over one synthetic tick: each host's restart is shown, none happens
        got = _reops("run", str(EXAMPLES / "heal.py"), "--dry-run", "--selector",
                     "web1,web2", cwd=tmp_path, env=env)
        assert got.returncode == 0, got.stderr
        rows = got.stdout.splitlines()
        assert sorted(r.split()[0] for r in rows) == ["web1", "web2"]
        assert all(" service.restart  ok  sudo " in r and "event.clock.tick -> "
                   "service.status" in r for r in rows)
        assert _status(lab.as_hosts().only(["web1", "web2"])) == {"web1": True, "web2": True}
        assert "1 event(s) -> 2 result(s), nothing ran" in got.stderr
    finally:
        run(service.stop(lab.as_hosts().only(["web1", "web2"]), "webapp", sudo=True))

    # setup over recorded vm starts (as `reops tail -o json` prints them): web1 twice
    # within the window (once_within: one setup) and web2; each step in dry-run mode
    events = tmp_path / "started.jsonl"
    line = ('{"topic": "event.libvirt.started", "type": "event", "data": {"source": '
            '"libvirt", "kind": "started", "key": "%s", "time": %d, "host": {"name": "%s", '
            '"address": "192.168.122.9"}}}\n')
    events.write_text(line % ("web1", 1, "web1") + line % ("web1", 2, "web1")
                      + line % ("web2", 3, "web2"))
    got = _reops("run", str(EXAMPLES / "setup.py"), "--dry-run", "--events", str(events),
                 "--stand-ins", "web1,web2", cwd=tmp_path, env=env)
    assert got.returncode == 1, got.stderr  # neither host is a system: provision says so
    rows = got.stdout.splitlines()
    assert len(rows) == 2 and sorted(r.split()[0] for r in rows) == ["web1", "web2"]
    assert all("is no system reops manages" in r and
               "event.libvirt.started -> wait_ssh -> deploy" in r for r in rows)
    assert "3 event(s) -> 2 result(s), nothing ran" in got.stderr
    # no agent was deployed (deploy_agent would have made ~/.reops-agent/<name>)
    assert run(exec_(lab.as_hosts().only(["web1"]), "test ! -e .reops-agent/web1")).ok

    # watch_load samples metrics itself (no on(trigger)): said at once, not an endless wait
    got = _reops("run", str(EXAMPLES / "watch_load.py"), "--dry-run", "--selector", "db1",
                 cwd=tmp_path, env=env)
    assert got.returncode == 2 and got.stderr.strip().splitlines()[-1].endswith(
        "the flow has no on(trigger) to feed events to, so a dry run has nothing to replay "
        "(and its own sources never end); --dry-run works on flows built as "
        "on(trigger) | then(...)"), got.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"topic": "x"}\n')
    got = _reops("run", str(EXAMPLES / "setup.py"), "--dry-run", "--events", str(bad),
                 cwd=tmp_path, env=env)
    assert got.returncode != 0 and got.stderr.strip().splitlines()[-1].startswith(
        f"reops: error: {bad}:1: not a trigger event")


# ── setup: a VM started in a real hub → SSH up → agent deployed → provisioned ─────────


RECIPE = '''\
"""The test Type's recipe: leaves a file saying it ran (lab hosts may share one home)."""
from reops import exec_


def provision(hosts, mark="provisioned"):
    (name,) = hosts.names
    return exec_(hosts, f"echo {mark} $(hostname) > .reops-setup-{name}")
'''


class MachinesHub:
    """A real `reops hub` process: the machines service on a libvirt test-driver node, the
    bus on free loopback ports; its CLI and Machines API pointed at it."""

    def __init__(self, home: Path) -> None:
        from systems_fixtures import node_uri

        home.mkdir(mode=0o700)
        self.home = home
        self.config = home / "config.toml"
        self.config.write_text(
            f'[hypervisors.lab]\nuri = "{node_uri(home)}"\n\n[machines]\n'
            'default_hypervisor = "lab"\nstop_timeout = 5\nip_timeout = 5\n'
            'connect_timeout = 5\n')
        self.env = {"REOPS_HUB_CONTROL": "", "REOPS_HUB_KEYS_DIR": "",
                    "REOPS_HUB_BUS_IN": "tcp://127.0.0.1:*",
                    "REOPS_HUB_BUS_OUT": "tcp://127.0.0.1:*",
                    "REOPS_HUB_SERVICES": "reops.systems.service:attach",
                    "REOPS_CONFIG": str(self.config)}
        self.lab_hub = LabHub(home=home, env=self.env, bind="tcp://127.0.0.1:*")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, "REOPS_HOME": str(self.home)}
        done = subprocess.run([sys.executable, "-m", "reops", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done


@pytest.fixture
def machines_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MachinesHub]:
    hub = MachinesHub(tmp_path / "home")
    for k, v in {**hub.env, "REOPS_HOME": str(hub.home)}.items():
        monkeypatch.setenv(k, v)
    with hub.lab_hub.start():
        try:
            yield hub
        finally:
            print(hub.lab_hub.log[-6000:])


def _wheels(where: Path) -> Path:
    """pyzmq and msgspec wheels for an offline agent install (as for hosts without PyPI)."""
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                          str(where), "pyzmq", "msgspec"], capture_output=True, text=True)
    assert got.returncode == 0, f"pip download failed: {got.stderr[-500:]}"
    return where


def _with_ghost(lab: LabInfo, dead: tuple[str, int], path: Path) -> Path:
    """The lab's inventory (paths made absolute) plus `ghost`, whose SSH never answers."""
    import json

    text = (lab.inventory.read_text()
            .replace('key = "id_ed25519"', f"key = {json.dumps(str(lab.key))}")
            .replace('known_hosts = "known_hosts"',
                     f"known_hosts = {json.dumps(str(lab.known_hosts))}"))
    path.write_text(text + f'\n[hosts.ghost]\naddress = "{dead[0]}"\nport = {dead[1]}\n')
    return path


def test_setup_flow_in_a_real_hub_sets_up_a_started_vm(
        lab_factory: LabFactory, machines_hub: MachinesHub, dead_address: tuple[str, int],
        tmp_path: Path) -> None:
    """`reops flows start setup.py` in a hub whose machines run on the libvirt test driver:
    a VM whose SSH never answers (ghost) is reported unreachable and the flow goes on; the
    next VM (web1, a lab host standing in for it) gets SSH waited for, an agent deployed
    that registers with the hub, the Type's recipe run on it, and each Result on the bus.

    web1 is a lab host with a home of its own (private_fs, as root): the agent lives in
    ~/.reops-agent/web1, and every other lab's web1 (another test session's, run at the
    same time) logs in as the same user; sharing that home, two deploys ran `python3 -m
    venv` into one directory at once and failed (ensurepip exit 1), as a real host would."""
    lab = lab_factory(hosts=1, private_fs=True).info  # web1
    from reops import bus
    from reops.control.bus import ResultBody
    from reops.control.client import HubClient
    from reops.core.runtime import get_runtime
    from reops.systems.api import HubMachines
    from reops.transports.agent import agent_list

    inventory = _with_ghost(lab, dead_address, tmp_path / "inventory.toml")
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    web1 = lab.as_hosts().only(["web1"])
    assert run(exec_(web1, "rm -f .reops-setup-web1")).ok
    control = machines_hub.lab_hub.control_path
    api = HubMachines(HubClient(control))
    call = get_runtime().call
    call(api.add_type("redis", "", f"{recipe}:provision", {"mark": "set-up-by-flow"}))
    call(api.add_type("web", "", None, {}))

    published = Seen()  # every Result the flow publishes, as ResultBody (its step index)
    listening = bus("result").subscribe(lambda m: published(m.body), published.error)

    def last_of(host: str, what: str) -> ResultBody:
        got = published.wait(lambda xs: any(b.host == host for b in xs), what,
                             timeout=DEADLINE * 3)  # a venv + offline pip install on the host
        (body,) = [b for b in got if b.host == host]
        assert isinstance(body, ResultBody)
        return body

    def create(type_: str, name: str) -> None:
        # the create job only: the hub's own provisioning job it queues reaches for the
        # test driver's 192.168.122.x address, which nothing here answers
        (job,) = call(api.create(type_, ["tiny"], None, None, name))
        assert job.op == "create"

    try:
        machines_hub.cli("flows", "start", str(EXAMPLES / "setup.py"), "--types",
                         "typed:redis", "--stand-ins", "web1,ghost", "--inventory",
                         str(inventory), "--ssh-timeout", "3",
                         "--wheels", str(_wheels(tmp_path / "wheels")))
        create("web", "w9")  # not typed:redis: never set up
        create("redis", "ghost")
        ghost = last_of("ghost", "ghost's Result")
        assert (ghost.op, ghost.status, ghost.step) == ("wait_ssh", "unreachable", 1)
        assert "ssh did not answer within 3 s" in ghost.err and "last: " in ghost.err

        create("redis", "web1")  # the flow kept running: the next VM is set up
        done = last_of("web1", "web1's Result")
        # the 4th step (the VM start, wait_ssh, deploy, provision) ran and succeeded
        assert (done.op, done.status, done.step) == ("provision:redis", "ok", 3), (
            f"step {done.step} {done.op} {done.status}: {done.err}")  # in full: why it failed
        agents = {a["name"]: a["state"] for a in agent_list(control)}
        assert agents.get("web1") == "connected"  # deployed, and registered with this hub
        mark, name = run(exec_(web1, "cat .reops-setup-web1; hostname")).results[0].out.split(
            "\n")[:2]
        assert mark == f"set-up-by-flow {name}"  # the Type's recipe ran on the lab host
        assert {b.host for b in published.items} == {"ghost", "web1"}
        # the hub's audit: each VM's firing came from its libvirt start, with its outcome
        import json

        audit = [json.loads(line) for line in
                 machines_hub.cli("flows", "log", "setup", "-o", "json").stdout.splitlines()]
        per_host = {r["host"]: (r["trigger"], r["status"], r.get("detail", ""))
                    for r in audit if r.get("host")}
        assert per_host["web1"][:2] == ("event.libvirt.started web1", "ok")
        assert per_host["ghost"][:2] == ("event.libvirt.started ghost", "unreachable")
    finally:
        listening.dispose()
        call(api.aclose())
        run(exec_(web1, "kill $(cat .reops-agent/web1/agent.pid) 2>/dev/null; "
                        "rm -rf .reops-agent/web1 .reops-agent-deploy/web1 .reops-setup-web1; "
                        "rmdir .reops-agent .reops-agent-deploy 2>/dev/null; true"))


def test_provision_of_more_hosts_than_the_loop_has_threads_finishes(
        lab: LabInfo, machines_hub: MachinesHub, tmp_path: Path) -> None:
    """Eight hosts provisioned at once, each over a new SSH connection. asyncssh opens
    every connection on the loop's default executor (cpu count + 4 = 6 threads here): a
    recipe waiting there on the loop starved it and all eight waited forever. Run in its
    own process so that a hang is a bounded failure, not a wedged test session."""
    from reops.control.client import HubClient
    from reops.core.runtime import get_runtime
    from reops.systems.api import HubMachines

    names = list(lab.hosts)[:8]
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    control = machines_hub.lab_hub.control_path
    api = HubMachines(HubClient(control))
    call = get_runtime().call
    try:
        call(api.add_type("redis", "", f"{recipe}:provision", {"mark": "many"}))
        for n in names:  # the create job, and the provisioning job it queues, which
            # fails: the test driver's 192.168.122.x address answers nothing here
            call(api.wait(call(api.create("redis", ["tiny"], None, None, n))))
    finally:
        call(api.aclose())
    script = (
        "from pathlib import Path\n"
        "from reops import inventory, run\n"
        "from reops.systems.provision_step import provision\n"
        f"hosts = inventory({str(lab.inventory)!r}).select({','.join(names)!r})\n"
        f"out = run(provision(hosts, hub=Path({str(control)!r})))\n"
        "for r in out.results:\n"
        "    print(r.host, r.op, r.status, r.err)\n")
    try:
        got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=DEADLINE * 2)
    except subprocess.TimeoutExpired:
        raise AssertionError("provisioning 8 hosts at once hung") from None
    assert got.returncode == 0, got.stderr[-2000:]
    rows = sorted(got.stdout.split("\n")[:-1])
    assert rows == sorted(f"{n} provision:redis ok " for n in names), got.stdout
    for n in names:
        mark = run(exec_(lab.as_hosts().only([n]), f"cat .reops-setup-{n}; rm .reops-setup-{n}"))
        assert mark.ok and mark.results[0].out.startswith("many "), mark.results


def test_a_recipe_that_raises_fails_its_host_saying_where(
        lab: LabInfo, machines_hub: MachinesHub, tmp_path: Path) -> None:
    """A bug in a Type's recipe is that host's failed Result (file:line), never an error
    that ends the flow for every host."""
    from reops.control.client import HubClient
    from reops.core.runtime import get_runtime
    from reops.systems.api import HubMachines

    recipe = tmp_path / "broken.py"
    recipe.write_text("def provision(hosts):\n    raise RuntimeError('no disk for redis')\n")
    control = machines_hub.lab_hub.control_path
    api = HubMachines(HubClient(control))
    call = get_runtime().call
    try:
        call(api.add_type("broken", "", str(recipe), {}))
        call(api.wait(call(api.create("broken", ["tiny"], None, None, "web2"))))
    finally:
        call(api.aclose())
    (r,) = run(provision(lab.as_hosts().only(["web2"]), hub=control)).results
    assert (r.host, r.op, r.status) == ("web2", "provision:broken", "failed")
    assert r.err == f"{recipe}:2: RuntimeError: no disk for redis"


def test_deploy_agent_whose_agent_cannot_reach_the_hub_fails_in_bounded_time(
        lab: LabInfo, machines_hub: MachinesHub, tmp_path: Path) -> None:
    """An agent that never registers (its endpoint answers nothing) is that host's failed
    `deploy` after register_timeout, saying where to look, not a step that waits forever."""
    from reops.hub.deploy_step import deploy_agent

    web2 = lab.as_hosts().only(["web2"])
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        nowhere = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    try:
        (r,) = run(deploy_agent(web2, endpoint=nowhere, wheels=_wheels(tmp_path / "w"),
                                register_timeout=3)).results
        assert (r.host, r.op, r.status) == ("web2", "deploy", "failed")
        assert r.err == ("web2: agent installed and started, but it did not register with "
                         "the hub within 3 s; see .reops-agent/web2/agent.log on the host "
                         "(hub endpoint reachable from there? its firewall?)")
    finally:
        run(exec_(web2, "kill $(cat .reops-agent/web2/agent.pid) 2>/dev/null; "
                        "rm -rf .reops-agent/web2 .reops-agent-deploy/web2; "
                        "rmdir .reops-agent .reops-agent-deploy 2>/dev/null; true"))
