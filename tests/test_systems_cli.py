"""`reops types|systems|jobs` through click, each command its own Machines (as in a shell)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from systems_fixtures import config_toml

from reops.cli.systems import jobs, systems, types


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    monkeypatch.setenv("REOPS_CONFIG", str(config_toml(tmp_path)))
    return CliRunner()


RECIPE = """
from reops import exec_

def provision(hosts, port="6379"):
    # dry run: the test driver's machines have made-up addresses, nothing to reach
    return exec_(hosts, f"echo port {port}", dry_run=True)
"""


def test_types_and_systems_round_trip(cli: CliRunner, tmp_path: Path) -> None:
    recipe = tmp_path / "redis.py"
    recipe.write_text(RECIPE)
    missing = cli.invoke(types, ["add", "redis", "-p", str(tmp_path / "nope.py")])
    assert missing.exit_code == 2 and "no such recipe file" in missing.output
    r = cli.invoke(types, ["add", "redis", "-d", "redis server", "-p", str(recipe),
                           "--arg", "port=7000"])
    assert r.exit_code == 0, r.output
    assert f"redis  redis server  {recipe}" in cli.invoke(types, ["ls"]).output

    r = cli.invoke(systems, ["create", "redis", "--preset", "small", "--preset", "debian-12",
                             "--count", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.count("succeeded   create") == 2
    assert r.output.count("succeeded   provision") == 2  # the create waits follow them
    listed = json.loads(cli.invoke(systems, ["ls", "typed:redis", "-o", "json"]).output)
    assert [s["state"] for s in listed] == ["running", "running"]
    assert all(s["machine"]["ip"] for s in listed)

    r = cli.invoke(jobs, ["ls"])
    assert r.exit_code == 0 and r.output.count("create") == 2
    assert r.output.count("  provision  ") == 2
    job_id = r.output.splitlines()[1].split()[0]
    shown = json.loads(cli.invoke(jobs, ["show", job_id]).output)
    assert shown["state"] == "succeeded" and shown["id"].startswith(job_id)
    assert shown["result"]["provision"] == f"{recipe} (queued)"
    prov = json.loads(cli.invoke(jobs, ["show", shown["followed_by"]]).output)
    assert prov["result"]["provisioned"] is True  # the type's recipe ran, with its --arg
    assert "echo port 7000" in prov["result"]["out"]
    r = cli.invoke(jobs, ["wait", job_id])
    assert r.exit_code == 0 and "succeeded" in r.output

    r = cli.invoke(systems, ["destroy", "typed:redis", "--force"])
    assert r.exit_code == 0, r.output
    assert "HOSTNAME" in cli.invoke(systems, ["ls"]).output
    assert "redis" not in cli.invoke(systems, ["ls"]).output.split("\n", 1)[1]


@pytest.mark.parametrize("args,message", [
    (["create", "nope"], "unknown type 'nope' (known: redis)"),
    (["create", "redis", "--preset", "smal"], "unknown preset 'smal'"),
    (["create", "redis", "--hypervisor", "far"], "hypervisor 'far'"),
    (["stop", "typed:redis", "--force"], "no system matches 'typed:redis'"),
    (["ls", "cpus=2"], "unknown field 'cpus'"),
])
def test_bad_input_exits_2_with_one_line(cli: CliRunner, args: list[str], message: str) -> None:
    cli.invoke(types, ["add", "redis"])
    r = cli.invoke(systems, args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "unknown field" in message or r.output.strip().count("\n") == 0
    assert json.loads(cli.invoke(systems, ["ls", "-o", "json"]).output) == []


def test_failed_jobs_exit_1(cli: CliRunner) -> None:
    cli.invoke(types, ["add", "redis"])
    assert cli.invoke(systems, ["create", "redis", "--preset", "tiny",
                                "--hostname", "c1"]).exit_code == 0
    # a fresh process sees a fresh test-driver node: the domain is gone, so stop fails
    r = cli.invoke(systems, ["stop", "c1", "--force"])
    assert r.exit_code == 1 and "failed" in r.output
    assert cli.invoke(systems, ["sync"]).exit_code == 0
    assert "missing" in cli.invoke(systems, ["ls", "c1"]).output


def test_destructive_commands_confirm_on_a_tty(cli: CliRunner,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cli.invoke(types, ["add", "redis"])
    assert cli.invoke(systems, ["create", "redis", "--hostname", "keep"]).exit_code == 0
    monkeypatch.setattr("reops.cli.systems._interactive", lambda: True)
    r = cli.invoke(systems, ["destroy", "keep"], input="n\n")
    assert "destroy 1 system(s): keep?" in r.output and r.exit_code == 1  # Abort
    assert "keep" in cli.invoke(systems, ["ls"]).output
    assert "destroy" not in cli.invoke(jobs, ["ls"]).output  # nothing was queued
    r = cli.invoke(systems, ["destroy", "keep"], input="y\n")
    assert r.exit_code == 0 and "succeeded   destroy" in r.output
