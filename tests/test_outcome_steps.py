"""An Outcome keeps every step of every host, and knows which run it was (issue 10, item 9).

Real lab hosts over SSH: `ls | then(exec_)` gives two rows per host in `to_table`, jsonl and
`--save`, each with its `step` index, while `out[host]`, `out.results` and the exit code
still mean each host's last step. Every Outcome and saved row carries the run's identity.
"""

from __future__ import annotations

import getpass
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from reops import run
from reops.core.model import RunInfo
from reops.core.settings import Settings
from reops.lab.fleet import LabInfo
from reops.sinks.jsonl import jsonl
from reops.sinks.table import COLUMNS, to_table
from reops.streams.operators import then
from reops.streams.steps import exec_, ls

FAST = Settings(connect_timeout=10.0, command_timeout=60.0)
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def reops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=120)


def test_two_steps_give_two_rows_per_host(lab: LabInfo) -> None:
    hosts = lab.as_hosts().glob("web*")
    out = run(ls(hosts, "/", settings=FAST) | then(exec_, "echo second", settings=FAST))
    assert out.exit_code == 0 and len(hosts) >= 2
    # last step: what out[host], out.results and exit codes always meant
    assert {r.op for r in out.results} == {"exec"} and len(out.results) == len(hosts)
    assert out["web1"].out == "second\n"
    # every step, in order, per host
    assert [r.op for r in out.steps("web1")] == ["ls", "exec"]
    assert "etc" in out.steps("web1")[0].data
    assert len(out.all) == 2 * len(hosts)
    df = to_table(out)
    assert df.height == 2 * len(hosts)
    assert df.filter(pl.col("host") == "web1")["op"].to_list() == ["ls", "exec"]
    assert df.filter(pl.col("host") == "web1")["step"].to_list() == [0, 1]
    assert out.pipeline == "ls | exec" and set(df["pipeline"]) == {"ls | exec"}


def test_a_failed_first_step_is_the_only_step(lab: LabInfo) -> None:
    hosts = lab.as_hosts().only(["db1", "db2"])
    out = run(exec_(hosts, "exit 3", settings=FAST) | then(exec_, "echo never",
                                                           settings=FAST))
    assert out.exit_code == 1 and list(out.failure) == [3]
    assert [r.op for r in out.steps("db1")] == ["exec"] and out.steps("nosuch") == []
    assert to_table(out)["step"].to_list() == [0, 0]


def test_the_outcome_knows_its_run(lab: LabInfo) -> None:
    hosts = lab.as_hosts().only(["cache1"])
    before = time.time()
    first = run(exec_(hosts, "true", settings=FAST))
    second = run(exec_(hosts, "true", settings=FAST),
                 info=RunInfo(command="nightly check", selector="cache1"))
    a, b = first.run, second.run
    assert a is not None and b is not None
    assert UUID7.match(a.run_id) and UUID7.match(b.run_id) and a.run_id < b.run_id
    assert a.user == getpass.getuser() and a.pipeline == "exec"
    assert before <= a.started_at <= a.ended_at <= b.started_at <= b.ended_at
    assert b.command == "nightly check" and b.selector == "cache1"
    df = to_table(second)
    assert tuple(df.columns) == COLUMNS
    row = df.row(0, named=True)
    assert (row["run_id"], row["command"], row["selector"], row["user"]) == (
        b.run_id, "nightly check", "cache1", getpass.getuser())
    assert row["run_ended_at"] >= row["run_at"]


def test_jsonl_writes_every_step_with_its_index(lab: LabInfo) -> None:
    hosts = lab.as_hosts().only(["web2", "web3"])
    info = RunInfo(command="test")
    buf = io.StringIO()
    run(exec_(hosts, "echo a", settings=FAST) | then(exec_, "echo b", settings=FAST)
        | jsonl(buf, run=info), info=info)
    rows = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert sorted((r["host"], r["step"], r["out"]) for r in rows) == [
        ("web2", 0, "a\n"), ("web2", 1, "b\n"), ("web3", 0, "a\n"), ("web3", 1, "b\n")]
    assert {r["run_id"] for r in rows} == {info.run_id} and "earlier" not in rows[0]


def test_cli_json_and_save_carry_the_run(lab: LabInfo, tmp_path: Path) -> None:
    table = tmp_path / "runs.parquet"
    p = reops("exec", "-i", str(lab.inventory), "db*", "-o", "json", "--save", str(table),
              "--", "echo", "hi")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    run_ = doc["run"]
    assert UUID7.match(run_["run_id"]) and run_["selector"] == "db*"
    assert run_["command"].startswith("reops exec -i ") and run_["command"].endswith(
        "'db*' -o json --save " + str(table) + " -- echo hi")
    assert run_["user"] == getpass.getuser() and run_["ended_at"] >= run_["started_at"]
    assert len(doc["steps"]) == 5 and {s["step"] for s in doc["steps"]} == {0}
    df = pl.read_parquet(table)
    assert set(df["run_id"]) == {run_["run_id"]} and set(df["selector"]) == {"db*"}
    assert df.height == 5 and set(df["command"]) == {run_["command"]}
