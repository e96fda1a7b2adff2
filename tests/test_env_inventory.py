"""$REOPS_INVENTORY is the inventory of every entry point that has one and was given none:
the CLI's fleet and op commands, `reops run` and the shipped flows, the Python API's
`inventory()` and the REPL. Each is run from a directory with no inventory.toml, so only the
variable can lead it to the lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reops.lab.fleet import LabInfo

ROOT = Path(__file__).parent.parent


def reops_env(lab: LabInfo, inventory: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REOPS_INVENTORY"}
    env["REOPS_INVENTORY"] = str(inventory or lab.inventory)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, input=stdin,
                          timeout=120)


def reops(*args: str, cwd: Path, env: dict[str, str], stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "reops", *args], cwd, env, stdin)


def test_cli_commands_read_the_variable_which_may_name_an_ansible_file(
        lab: LabInfo, tmp_path: Path) -> None:
    """hosts, exec and an op command (facts), with $REOPS_INVENTORY naming an INI file."""
    ini = tmp_path / "hosts.ini"
    ini.write_text("[edge]\n" + "".join(
        f"{n} ansible_host={lab.address(n)} ansible_port={lab.port} ansible_user={lab.user} "
        f"ansible_ssh_private_key_file={lab.key}\n" for n in ("web1", "db2", "cache1")))
    env = reops_env(lab, ini)
    p = reops("hosts", "group:edge", "-o", "names", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["web1", "db2", "cache1"]
    kh = ("--known-hosts", str(lab.known_hosts))
    p = reops("exec", "web1,db2", *kh, "-o", "json", "--", "echo", "ok", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert sorted(r["host"] for r in json.loads(p.stdout)["successful"]) == ["db2", "web1"]
    p = reops("facts", "cache1", "os", *kh, "-o", "json", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert [r["host"] for r in json.loads(p.stdout)["successful"]] == ["cache1"]


def test_shipped_fleet_report_flow_reads_the_variable(lab: LabInfo, tmp_path: Path) -> None:
    flow = ROOT / "flows" / "examples" / "fleet_report.py"
    p = reops("run", str(flow), "--selector", "cache*", cwd=tmp_path, env=reops_env(lab))
    assert p.returncode == 0, p.stderr
    caches = [n for n in lab.hosts if n.startswith("cache")]
    assert f"fleet report: {len(caches)} hosts" in p.stdout, p.stdout


def test_python_api_inventory_without_a_path(lab: LabInfo, tmp_path: Path) -> None:
    code = "from reops import inventory\ninv = inventory()\nprint(inv.path, len(inv))\n"
    p = run([sys.executable, "-c", code], tmp_path, reops_env(lab))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(lab.inventory), str(len(lab.hosts))]


def test_repl_loads_the_variable_as_inv(lab: LabInfo, tmp_path: Path) -> None:
    env = reops_env(lab)
    env["PYTHONSTARTUP"] = ""
    p = reops("repl", cwd=tmp_path, env=env, stdin='print("N", len(inv), inv.path)\n')
    assert f"N {len(lab.hosts)} {lab.inventory}" in p.stdout + p.stderr, p.stdout + p.stderr


@pytest.mark.parametrize("args", [["hosts"], ["exec", "all", "--", "true"], ["repl"]])
def test_a_missing_variable_target_is_one_line(lab: LabInfo, tmp_path: Path,
                                               args: list[str]) -> None:
    missing = tmp_path / "nope.toml"
    p = reops(*args, cwd=tmp_path, env=reops_env(lab, missing), stdin="")
    assert p.returncode == 2
    assert f"{missing}: inventory file not found" in p.stderr
    assert "Traceback" not in p.stderr
