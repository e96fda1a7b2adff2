"""The launcher as a user runs it: real processes, real hosts, exit codes and JSON shape."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl

from reops.lab.fleet import LabInfo


def reops(*args: str, cwd: Path | None = None, timeout: float = 120
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def test_help_lists_every_command() -> None:
    p = reops("--help")
    assert p.returncode == 0
    for name in ("exec", "run", "flows", "hosts", "hub", "agents", "keys", "systems", "types",
                 "jobs", "events", "repl", "lab"):
        assert f"  {name} " in p.stdout


def test_exec_all_ok_exits_0_with_summary(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "all", "--", "uname", "-s")
    assert p.returncode == 0, p.stderr
    # every host ok with the same output: one gathered block naming all 20, then the summary
    lines = p.stdout.splitlines()
    assert len(lines) == 2, p.stdout
    assert re.fullmatch(r"✔ cache\[1-5\],db\[1-5\],web\[1-10\] \(20\) exec ≤\d+\.\d\ds  Linux",
                        lines[0]), lines[0]
    assert re.fullmatch(r"── 20 ok · 20 hosts · \d+\.\d\d s", lines[1]), lines[1]


def test_exec_some_failed_exits_1(lab: LabInfo) -> None:
    web3 = lab.hosts["web3"]
    p = reops("exec", "-i", str(lab.inventory), "web*", "--",
              f'case "$SSH_CONNECTION" in *" {web3} "*) exit 7;; esac')
    assert p.returncode == 1
    assert p.stdout.count("✘") == 1 and "exit 7" in p.stdout


def test_exec_json_is_the_outcome(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "group:db", "-o", "json", "--", "df", "-h", "/")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert {"hosts", "successful", "failure", "run", "steps"} == set(doc)
    assert sorted(doc["hosts"]) == sorted(h for h in lab.hosts if h.startswith("db"))
    first = doc["successful"][0]
    for field in ("host", "op", "status", "code", "out", "err", "started_at", "duration_s",
                  "transport"):
        assert field in first
    assert "Filesystem" in first["out"] and doc["failure"] == {}


def test_exec_json_failure_keys_are_exit_codes(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "cache1,cache2", "-o", "json", "--", "exit 4")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert list(doc["failure"]) == ["4"] and len(doc["failure"]["4"]) == 2


def test_exec_jsonl_one_result_per_line(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "web*", "-o", "jsonl", "--", "echo", "hi")
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == 10 and {r["out"] for r in rows} == {"hi\n"}


def test_exec_save_appends_to_parquet(lab: LabInfo, tmp_path: Path) -> None:
    table = tmp_path / "runs.parquet"
    for _ in range(2):
        p = reops("exec", "-i", str(lab.inventory), "db*", "--save", str(table), "--", "uptime")
        assert p.returncode == 0, p.stderr
    df = pl.read_parquet(table)
    assert df.height == 10 and set(df["host"]) == {f"db{i}" for i in range(1, 6)}
    assert df["run_at"].n_unique() == 2


def test_bad_selector_is_a_usage_error(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "group:nope", "--", "true")
    assert p.returncode == 2
    assert p.stderr.startswith("reops: error:") and "nope" in p.stderr
    # one error line; a selector error may add the selector with a caret under the spot
    assert "Traceback" not in p.stderr and "no group 'nope'" in p.stderr.splitlines()[0]


def test_bad_inventory_names_file_and_line(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.toml"
    inv.write_text('[hosts.web1]\naddress = "127.0.0.1"\nport = "abc"\n')
    p = reops("exec", "-i", str(inv), "all", "--", "true")
    assert p.returncode == 2
    assert f"{inv}:3:" in p.stderr and "port" in p.stderr and "Traceback" not in p.stderr


def test_missing_inventory_is_a_usage_error(tmp_path: Path) -> None:
    p = reops("exec", "-i", str(tmp_path / "none.toml"), "all", "--", "true")
    assert p.returncode == 2 and "not found" in p.stderr


def test_missing_command_is_a_usage_error(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "all")
    assert p.returncode == 2


def test_hosts_lists_without_connecting(lab: LabInfo) -> None:
    p = reops("hosts", "-i", str(lab.inventory), "tag:dc=ams & group:web", "-o", "names")
    assert p.returncode == 0
    assert p.stdout.split() == ["web1", "web3", "web5", "web7", "web9"]


def test_dry_run_prints_commands(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "web1", "--dry-run", "--sudo", "--",
              "touch", "/root/x")
    assert p.returncode == 0
    assert "sudo -n -- sh -c 'touch /root/x'" in p.stdout


def test_timeout_flag_kills_hung_command(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "db1,db2", "-t", "1", "-o", "json", "--",
              "sleep", "60")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert [r["status"] for r in doc["failure"]["-1"]] == ["timeout", "timeout"]


def test_repl_has_the_api_and_the_inventory(lab: LabInfo) -> None:
    script = 'print("N", len(inv))\nprint("OUT", run(exec_(inv.select("db1"), "echo hi")).ok)\n'
    p = subprocess.run([sys.executable, "-m", "reops", "repl", "-i", str(lab.inventory)],
                       input=script, capture_output=True, text=True, timeout=60)
    assert "N 20" in p.stdout + p.stderr and "OUT True" in p.stdout + p.stderr


def test_inventory_function_survives_submodule_import() -> None:
    p = subprocess.run([sys.executable, "-c", "import reops.core.inventory, reops\n"
                        "from reops import inventory\nprint(callable(inventory))"],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "True", p.stderr


def test_closed_stdout_ends_quietly(lab: LabInfo) -> None:
    # more output than a pipe buffers (64 KiB), so the writer is still writing when the
    # reader goes away: with less, it could finish first and rightly exit 0
    p = subprocess.Popen([sys.executable, "-m", "reops", "exec", "-i", str(lab.inventory), "all",
                          "--", "seq", "1", "50000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline()  # the reader takes one line and goes away (`| head -1`)
    p.stdout.close()
    assert p.wait(timeout=60) == 141
    assert "Traceback" not in p.stderr.read()
