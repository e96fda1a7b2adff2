"""`--via auto`: agent where one is connected, SSH for the rest, in one Outcome."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reops.lab.agents import start_agents, start_hub, wait_for_agents
from reops.ops.shell import exec_
from reops.streams.source import source
from reops.streams.stream import run


def test_via_auto_mixes_agents_and_ssh(lab_factory: Callable[..., Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    info = lab_factory(hosts=3).info
    hosts = info.as_hosts()
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    with start_hub(tmp_path / "home", heartbeat_s=0.25, misses=4) as hub:
        with_agents = hosts.names[:2]
        with start_agents(with_agents, hub.bind, hub.key, hub.keys_dir,
                          workdir=tmp_path / "agents", extra=["--heartbeat", "0.25"],
                          sources=info.hosts):
            wait_for_agents(hub.control_path, with_agents)
            outcome = run(source(hosts, exec_("echo", "hi"), via="auto"))
            agent_only = run(source(hosts, exec_("echo", "hi"), via="agent"))
    assert outcome.ok and outcome.hosts == hosts.names
    assert {r.host: r.transport for r in outcome.results} == {
        hosts.names[0]: "agent", hosts.names[1]: "agent", hosts.names[2]: "ssh"}
    assert all(r.out == "hi\n" for r in outcome.results)
    down = agent_only.failure[-1]
    assert [r.host for r in down] == [hosts.names[2]] and down[0].status == "unreachable"


def test_ops_give_the_same_typed_data_over_agents_and_ssh(
        lab_factory: Callable[..., Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from reops.ops import facts, pkg
    from reops.ops.facts import Facts

    hosts = lab_factory(hosts=1).info.as_hosts()
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    with start_hub(tmp_path / "home", heartbeat_s=0.25, misses=4) as hub, start_agents(
            hosts.names, hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "agents",
            extra=["--heartbeat", "0.25"], sources={h.name: h.address for h in hosts}):
        wait_for_agents(hub.control_path, hosts.names)
        by = {via: run(source(hosts, facts.facts("os", "hardware"), via=via))
              for via in ("agent", "ssh")}
        bash = run(source(hosts, pkg.installed("bash"), via="agent"))
    agent, ssh = by["agent"].successful[0], by["ssh"].successful[0]
    assert (agent.transport, ssh.transport) == ("agent", "ssh")
    assert isinstance(agent.data, Facts) and isinstance(ssh.data, Facts)
    assert agent.data.os == ssh.data.os and agent.data.hardware == ssh.data.hardware
    assert [p.name for p in bash.successful[0].data] == ["bash"]
