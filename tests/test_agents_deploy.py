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

from reops.config import Settings
from reops.hub.deploy import deploy
from reops.ops.shell import exec_
from reops.sources.agents_lab import start_hub, wait_for_agents
from reops.streams.core import run
from reops.streams.source import source


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
            outcome = deploy(hosts, endpoint=hub.bind, settings=hub.settings, wheels=wheels,
                             ssh_settings=Settings())
            assert outcome.ok, outcome.failed
            wait_for_agents(hub.control_path, [name], timeout=30)
            via_agent = run(source(hosts, exec_("id", "-un"), via="agent"))
            assert via_agent.ok and via_agent.results[0].transport == "agent"
        finally:
            run(source(hosts, exec_(f"kill $(cat .reops-agent/{name}/agent.pid); "
                                    f"rm -rf .reops-agent/{name} .reops-agent-deploy/{name}; "
                                    "rmdir .reops-agent .reops-agent-deploy 2>/dev/null; true"),
                       via="ssh"))
