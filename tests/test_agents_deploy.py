"""`reops agents deploy` over real SSH to a lab host.

Slow-ish (a venv and an offline pip install on the host, ~30 s): the operator's side
downloads the pyzmq and msgspec wheels once, as one would for hosts without PyPI.
"""

from __future__ import annotations

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
