"""`reops agents deploy` over real SSH to a lab host.

Slow-ish (a venv and an offline pip install on the host, ~30 s): the operator's side
downloads the pyzmq and msgspec wheels once, as one would for hosts without PyPI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reops.control.identity import connect_from
from reops.core.model import Host
from reops.core.settings import Settings
from reops.hub.deploy import Registrations, _steps, deploy
from reops.lab.agents import start_hub, wait_for_agents
from reops.ops.shell import exec_
from reops.streams.source import source
from reops.streams.stream import run
from reops.transports.agent import agent_list


def test_deploy_over_ssh(lab_factory: Callable[..., Any], tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                          str(wheels), "pyzmq", "msgspec"], capture_output=True)
    assert got.returncode == 0, f"pip download failed: {got.stderr.decode()[-500:]}"
    hosts = lab_factory(hosts=1).info.as_hosts()
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    name = hosts.names[0]
    with start_hub(tmp_path / "home", heartbeat_s=0.5) as hub:
        try:
            # the agent connects from its lab host's own address, as from its own machine
            endpoint = connect_from(hosts[name].address, hub.bind)
            outcome = deploy(hosts, endpoint=endpoint, settings=hub.settings, wheels=wheels,
                             ssh_settings=Settings())
            assert outcome.ok, outcome.failed
            # "ok" means registered: the agent is connected now, not at some point later
            listed = {a["name"]: a["state"] for a in agent_list(hub.control_path)}
            assert listed.get(name) == "connected"
            wait_for_agents(hub.control_path, [name], timeout=30)
            via_agent = run(source(hosts, exec_("id", "-un"), via="agent"))
            assert via_agent.ok and via_agent.results[0].transport == "agent"
        finally:
            run(source(hosts, exec_(f"kill $(cat .reops-agent/{name}/agent.pid); "
                                    f"rm -rf .reops-agent/{name} .reops-agent-deploy/{name}; "
                                    "rmdir .reops-agent .reops-agent-deploy 2>/dev/null; true"),
                       via="ssh"))


# ── the plan of commands (what runs on each host), without a network ────────────────

KEY = "rq:%s$HOME%n" + "x" * 28  # a z85 key can hold % and $: both mean something to systemd


def _plan(tmp_path: Path, *, offline: bool, sudo: bool,
          endpoint: str = "tcp://10.0.0.1:7720") -> dict[str, Any]:
    wheel = tmp_path / "reops_agent-0.1.0-py3-none-any.whl"
    ops = _steps(Host(name="web1", address="10.0.0.11"), wheels=[wheel], endpoint=endpoint,
                 hub_key=KEY, public="P" * 40, secret="S" * 40, offline=offline,
                 allow_code=False, sudo=sudo, timeout=60)
    return {op.name: op for op in ops}


@pytest.mark.parametrize("offline", [True, False])
def test_agent_is_installed_from_its_wheel_never_an_index(tmp_path: Path,
                                                          offline: bool) -> None:
    install = _plan(tmp_path, offline=offline, sudo=False)["deploy:install"].command
    pips = [c for c in install.split("&&") if "pip install" in c]
    agent_pip = [c for c in pips if "reops_agent-0.1.0-py3-none-any.whl" in c]
    assert len(agent_pip) == 1 and "--no-index" in agent_pip[0]
    assert ".reops-agent-deploy/web1/reops_agent-0.1.0-py3-none-any.whl" in agent_pip[0]
    assert not any("reops-agent" in c.split() for c in pips)  # never asked for by name
    if not offline:  # only its dependencies come from the host's index
        [deps] = [c for c in pips if c not in agent_pip]
        assert "pyzmq" in deps and "msgspec" in deps


def test_systemd_unit_escapes_specifiers(tmp_path: Path) -> None:
    plan = _plan(tmp_path, offline=True, sudo=True, endpoint="tcp://[fe80::1%eth0]:7720")
    unit = plan["deploy:start"].stdin or ""
    [exec_start] = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert "[fe80::1%%eth0]" in exec_start  # % is a systemd specifier, even inside quotes
    assert KEY not in unit
    assert "--hub-key /opt/reops-agent/keys/hub.key" in exec_start  # the key is in a file
    assert "hub.key" in plan["deploy:key"].command and KEY in plan["deploy:key"].command


async def test_registrations_without_a_hub(tmp_path: Path) -> None:
    waits = Registrations(tmp_path / "run" / "hub.sock")
    await waits.start()
    assert not waits.running
    await waits.close()


# ── the agent wheel: built once per source, shared, bounded ────────────────────────────

#: a `pip` module put first on PYTHONPATH, so `python -m pip` runs it: it notes each
#: `pip wheel` (and its pid), then hangs (FAKE_PIP_HANG) or hands over to the real pip
FAKE_PIP = '''\
import os, runpy, sys, time
if "wheel" in sys.argv:
    with open(os.environ["FAKE_PIP_LOG"], "a") as log:
        log.write(f"{os.getpid()} {' '.join(sys.argv[1:])}\\n")
    if os.environ.get("FAKE_PIP_HANG"):
        time.sleep(3600)
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
for name in [m for m in sys.modules if m == "pip" or m.startswith("pip.")]:
    del sys.modules[name]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
'''


def _fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, hang: bool) -> Path:
    """Shadow pip for this test's `pip wheel` runs; the log file lists each one."""
    shim = tmp_path / "fake-pip"
    (shim / "pip").mkdir(parents=True)
    (shim / "pip" / "__init__.py").write_text("")
    (shim / "pip" / "__main__.py").write_text(FAKE_PIP)
    log = tmp_path / "pip-wheel.log"
    log.write_text("")
    monkeypatch.setenv("PYTHONPATH", str(shim))
    monkeypatch.setenv("FAKE_PIP_LOG", str(log))
    if hang:
        monkeypatch.setenv("FAKE_PIP_HANG", "1")
    return log


def test_deploying_to_several_hosts_at_once_builds_the_agent_wheel_once(
        lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three hosts deployed at once (each on its own thread, as the deploy_agent step does)
    share ONE `pip wheel` of the agent's source: the others wait for it, then read the
    cache (<reops home>/agent-wheels/<source hash>); a later deploy builds nothing."""
    from reops.hub import deploy as deploy_module
    from reops.hub.deploy_step import deploy_agent

    wheels = tmp_path / "wheels"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                          str(wheels), "pyzmq", "msgspec"], capture_output=True)
    assert got.returncode == 0, f"pip download failed: {got.stderr.decode()[-500:]}"
    home = tmp_path / "home"
    monkeypatch.setenv("REOPS_HOME", str(home))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    log = _fake_pip(tmp_path, monkeypatch, hang=False)
    names = sorted(lab.hosts)[:3]
    hosts = lab.as_hosts().only(names)
    before = deploy_module.builds
    with start_hub(home, heartbeat_s=0.5) as hub:
        try:
            out = run(deploy_agent(hosts, hub=hub.control_path, wheels=wheels))
            assert out.ok, out.failed
            assert len(log.read_text().splitlines()) == 1, log.read_text()
            assert deploy_module.builds - before == 1
            cached = list((home / "agent-wheels").glob("*/reops_agent-*.whl"))
            assert len(cached) == 1, cached
            # the same source again: the cached wheel, no build
            again = run(deploy_agent(hosts.only(names[:1]), hub=hub.control_path,
                                     wheels=wheels))
            assert again.ok, again.failed
            assert len(log.read_text().splitlines()) == 1, log.read_text()
        finally:
            run(source(hosts, exec_("; ".join(
                f"kill $(cat .reops-agent/{n}/agent.pid) 2>/dev/null; "
                f"rm -rf .reops-agent/{n} .reops-agent-deploy/{n}" for n in names)
                + "; rmdir .reops-agent .reops-agent-deploy 2>/dev/null; true"), via="ssh"))


def test_an_agent_build_that_hangs_fails_each_host_in_bounded_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pip wheel` that never ends (a real hanging process) is killed after build_timeout;
    every host is a failed deploy saying so in one line, and the build ran once, not per
    host. No host is contacted: there is nothing to install."""
    from reops.core.model import Hosts
    from reops.hub.deploy_step import deploy_agent

    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    log = _fake_pip(tmp_path, monkeypatch, hang=True)
    hosts = Hosts([Host(name=f"h{i}", address="localhost") for i in range(4)])
    out = run(deploy_agent(hosts, endpoint="tcp://127.0.0.1:9", build_timeout=2))
    src = Path(__import__("reops_agent").__file__).resolve().parent.parent
    assert sorted((r.host, r.status) for r in out.results) == [
        (f"h{i}", "failed") for i in range(4)]
    for r in out.results:
        assert r.err == (f"{r.host}: building the reops-agent wheel (pip wheel {src}) did not "
                         "finish within 2 s; pass --wheels (wheels=) with a reops_agent "
                         "wheel, or raise REOPS_AGENT_BUILD_TIMEOUT")
    runs = log.read_text().splitlines()
    assert len(runs) == 1, runs
    pid = int(runs[0].split()[0])
    try:  # killed, not left hanging (reaped by reops: no such process at all)
        os.kill(pid, 0)
        raise AssertionError(f"the hung pip wheel (pid {pid}) is still running")
    except ProcessLookupError:
        pass
    assert not list((tmp_path / "home" / "agent-wheels").glob("*/*.whl"))  # nothing cached
