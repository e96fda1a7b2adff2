"""`--via auto`: agent where one is connected, SSH for the rest, in one Outcome."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reops.ops.shell import exec_
from reops.sources.agents_lab import start_agents, start_hub, wait_for_agents
from reops.streams.core import run
from reops.streams.source import source


def test_via_auto_mixes_agents_and_ssh(lab_factory: Callable[..., Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    info = lab_factory(hosts=3).info
    hosts = info.as_hosts()
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    with start_hub(tmp_path / "home", heartbeat_s=0.25, misses=4) as hub:
        with_agents = hosts.names[:2]
        with start_agents(with_agents, hub.bind, hub.key, hub.keys_dir,
                          workdir=tmp_path / "agents", extra=["--heartbeat", "0.25"]):
            wait_for_agents(hub.control_path, with_agents)
            outcome = run(source(hosts, exec_("echo", "hi"), via="auto"))
            agent_only = run(source(hosts, exec_("echo", "hi"), via="agent"))
    assert outcome.ok and outcome.hosts == hosts.names
    assert {r.host: r.transport for r in outcome.results} == {
        hosts.names[0]: "agent", hosts.names[1]: "agent", hosts.names[2]: "ssh"}
    assert all(r.out == "hi\n" for r in outcome.results)
    down = agent_only.failure[-1]
    assert [r.host for r in down] == [hosts.names[2]] and down[0].status == "unreachable"
