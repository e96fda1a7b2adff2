"""The run history: runs from the CLI, a Python script and a flow land in the parquet
dataset and are queryable; filters; day pruning; damaged files skipped; schema evolution;
opt-out; a failing write never changes a run's exit code. Real lab hosts, real processes.

Every test has its own history directory (conftest's REOPS_HISTORY_PATH)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import reactivex

from reops.core.model import Hosts, Result, RunInfo
from reops.lab.fleet import LabInfo
from reops.sinks import history as h
from reops.sinks import history_files as hf
from reops.streams.stream import Stream, run


def reops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, env=env or dict(os.environ), timeout=120)


def root() -> Path:
    return Path(os.environ["REOPS_HISTORY_PATH"])


def rows(**kw: object) -> pl.DataFrame:
    return h.history(**kw).sort("started_at", "host").collect()  # type: ignore[arg-type]


def result(host: str, op: str = "exec", status: str = "ok", code: int = 0, **kw: object
           ) -> Result:
    return Result(host=host, op=op, status=status, code=code,  # type: ignore[arg-type]
                  started_at=kw.pop("started_at", datetime.now(UTC).timestamp()),  # type: ignore[arg-type]
                  **kw)  # type: ignore[arg-type]


def test_cli_runs_land_and_reops_history_filters_them(lab: LabInfo) -> None:
    web = ",".join(list(lab.hosts)[:2])
    ok = reops("exec", "-i", str(lab.inventory), web, "--", "echo hello-history")
    assert ok.returncode == 0, ok.stderr
    bad = reops("exec", "-i", str(lab.inventory), web, "--", "echo oops >&2; exit 3")
    assert bad.returncode == 1, bad.stderr

    shown = reops("history", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    got = json.loads(shown.stdout)
    assert len(got) == 4
    assert {r["source"] for r in got} == {"cli"}
    assert all(r["command"].startswith("reops exec") for r in got)
    assert sorted(r["out"] for r in got if r["status"] == "ok") == ["hello-history\n"] * 2

    failed = json.loads(reops("history", "--failed", "-o", "json").stdout)
    assert [(r["status"], r["code"], r["err"]) for r in failed] == [("failed", 3, "oops\n")] * 2
    first = next(iter(lab.hosts))
    one = json.loads(reops("history", "--host", first, "-o", "json").stdout)
    assert {r["host"] for r in one} == {first} and len(one) == 2

    table = reops("history", "--failed")
    assert table.returncode == 0
    assert "failed" in table.stdout and "oops" in table.stdout and "hello" not in table.stdout


def test_reops_history_bad_since_is_one_line_exit_2() -> None:
    got = reops("history", "--since", "yesterday")
    assert got.returncode == 2
    assert got.stderr.count("\n") == 1 and "--since" in got.stderr and "Traceback" not in got.stderr


def test_a_python_script_run_lands_with_source_python(lab: LabInfo, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        from reops import inventory, exec_, then, run
        hosts = inventory({str(lab.inventory)!r}).select({next(iter(lab.hosts))!r})
        out = run(exec_(hosts, "echo one") | then(exec_, "echo two"))
        assert out.ok
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = rows(since="1h")  # written at exit by the script's own process
    assert got["source"].to_list() == ["python", "python"]
    assert got.sort("step")["out"].to_list() == ["one\n", "two\n"]
    assert got["step"].sort().to_list() == [0, 1]
    assert set(got["pipeline"]) == {"exec | exec"}
    assert str(script) in got["command"][0]


def test_flow_record_caps_output_and_data_and_is_queryable() -> None:
    big = "x" * 10_000 + "THE END"
    info = RunInfo(command="flow heal", pipeline="check | restart")
    h.record([result("web1", "service.restart", out=big, data={"n": 1}),
              result("db1", "metrics", status="failed", code=2, err="e" * 50_000,
                     data={"samples": ["v" * 100] * 400})],
             info, flow="heal")
    assert h.flush()
    got = rows()
    assert got["source"].to_list() == ["flow", "flow"]
    assert got["flow"].to_list() == ["heal", "heal"]
    assert got["run_id"].unique().to_list() == [info.run_id]
    web = got.filter(pl.col("host") == "web1").row(0, named=True)
    assert web["out_truncated"] and web["out"].endswith("THE END")
    assert len(web["out"].encode()) < 4096 + 200
    assert json.loads(web["data"]) == {"n": 1}
    db = got.filter(pl.col("host") == "db1").row(0, named=True)
    assert db["err_truncated"] and not db["out_truncated"]
    assert json.loads(db["data"]) == {"_truncated": len(json.dumps(
        {"samples": ["v" * 100] * 400}, separators=(",", ":")))}
    assert got.schema["started_at"] == pl.Datetime("us", "UTC")
    assert got.schema["step"] == pl.Int32 and got.schema["day"] == pl.Date


def test_filters_failed_host_and_op_globs() -> None:
    h.record([result("web1", "pkg.install"), result("web2", "pkg.install", "failed", 1),
              result("db1", "service.restart", "timeout", -1), result("web10", "exec")],
             RunInfo())
    assert h.flush()
    assert sorted(rows(failed=True)["host"]) == ["db1", "web2"]
    assert sorted(rows(host="web?")["host"]) == ["web1", "web2"]
    assert sorted(rows(host="web*")["host"]) == ["web1", "web10", "web2"]
    assert sorted(rows(op="pkg.*")["host"]) == ["web1", "web2"]
    assert sorted(rows(host="db1,web1")["host"]) == ["db1", "web1"]
    assert rows(op="pkg.", host="web1").is_empty()  # globs match whole names
    assert rows(failed=True, op="pkg.*")["host"].to_list() == ["web2"]


def _fake_parquet(path: Path) -> None:
    """Valid magic bytes at both ends and a plausible footer length, garbage inside: it
    passes a cheap check and fails any real read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1" + os.urandom(64) + (16).to_bytes(4, "little") + b"PAR1")


def test_since_reads_only_the_days_it_needs(capfd: pytest.CaptureFixture[str]) -> None:
    h.record([result("web1")], RunInfo())
    assert h.flush()
    old = [root() / "day=2020-01-01" / "a-0.parquet", root() / "day=2020-01-02" / "b-0.parquet"]
    for p in old:
        _fake_parquet(p)
    with pytest.raises(pl.exceptions.PolarsError):  # they really are unreadable
        pl.read_parquet(old[0])
    assert rows(since="1d")["host"].to_list() == ["web1"]
    assert "2020-01-0" not in capfd.readouterr().err  # not even looked at
    assert rows(since=None)["host"].to_list() == ["web1"]  # in range: reported, skipped
    err = capfd.readouterr().err
    assert all(str(p) in err for p in old)


def test_a_damaged_or_partial_file_in_range_is_reported_and_skipped(
        capfd: pytest.CaptureFixture[str]) -> None:
    h.record([result("web1"), result("web2")], RunInfo())
    assert h.flush()
    day = next(root().glob("day=*"))
    good = next(day.glob("*.parquet"))
    partial = day / "partial-0.parquet"
    partial.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = day / "garbage-0.parquet"
    garbage.write_text("not parquet at all")
    _fake_parquet(day / "fake-0.parquet")
    got = rows()
    assert sorted(got["host"]) == ["web1", "web2"]
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 3
    for p in (partial, garbage, day / "fake-0.parquet"):
        [line] = [x for x in lines if str(p) in x]
        assert "skipped" in line and "delete it" in line


def test_files_of_an_older_schema_read_with_new_ones() -> None:
    day = root() / f"day={datetime.now(UTC).date().isoformat()}"
    day.mkdir(parents=True)
    full = {**h.schema()}
    old_cols = [c for c in hf.COLUMNS if c not in ("data", "out_truncated", "flow")]
    pl.DataFrame({
        "run_id": ["old"], "source": ["cli"], "command": ["reops exec"], "pipeline": ["exec"],
        "user": ["u"], "host": ["old1"], "op": ["exec"], "step": [0], "status": ["ok"],
        "code": [0], "started_at": [datetime.now(UTC) - timedelta(minutes=5)],
        "duration_s": [0.1], "transport": ["ssh"], "changed": [None], "out": ["o"],
        "err": [""], "err_truncated": [False],
        "an_old_column_since_dropped": [1],
    }, schema={**{c: full[c] for c in old_cols}, "an_old_column_since_dropped": pl.Int64}
    ).write_parquet(day / "old-0.parquet")
    h.record([result("new1", data={"k": 1})], RunInfo())
    assert h.flush()
    got = rows()
    assert got["host"].to_list() == ["old1", "new1"]
    assert got["data"].to_list() == [None, '{"k":1}']
    assert got["out_truncated"].to_list() == [None, False]
    assert list(got.columns) == [*hf.COLUMNS, "day"]


def test_endless_runs_are_recorded_result_by_result() -> None:
    events = [result("web1", "tick"), result("web1", "tick", "failed", 1),
              result("web2", "tick")]
    endless = Stream(reactivex.from_iterable(events), Hosts(), replay=False)
    out = run(endless)
    assert len(out.results) == 2  # the Outcome keeps each host's last Result only
    assert h.flush()
    got = rows()
    assert len(got) == 3 and got["status"].to_list().count("failed") == 1
    assert got["source"].unique().to_list() == ["python"]


def test_set_source_labels_later_runs() -> None:
    h.set_source("repl")
    try:
        run(Stream(reactivex.from_iterable([result("web1")]), Hosts(), replay=True))
    finally:
        h._source = None
    assert h.flush()
    assert rows()["source"].to_list() == ["repl"]
    with pytest.raises(ValueError, match="one of"):
        h.set_source("notebook")  # type: ignore[arg-type]


def test_opt_out_by_config_and_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[history]\nenabled = false\n")
    monkeypatch.setenv("REOPS_CONFIG", str(config))
    h.record([result("web1")], RunInfo())
    assert h.flush()
    assert not root().exists() or not list(root().rglob("*.parquet"))
    monkeypatch.delenv("REOPS_CONFIG")
    monkeypatch.setenv("REOPS_HISTORY", "0")
    h.record([result("web1")], RunInfo())
    assert h.flush()
    assert not root().exists() or not list(root().rglob("*.parquet"))
    monkeypatch.delenv("REOPS_HISTORY")
    h.record([result("web1")], RunInfo())
    assert h.flush()
    assert len(list(root().rglob("*.parquet"))) == 1


def test_cli_opt_out_by_env(lab: LabInfo) -> None:
    env = {**os.environ, "REOPS_HISTORY": "0"}
    done = reops("exec", "-i", str(lab.inventory), next(iter(lab.hosts)), "--", "true", env=env)
    assert done.returncode == 0, done.stderr
    assert not list(root().rglob("*.parquet"))


def test_a_failing_history_write_keeps_the_exit_code(lab: LabInfo, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**os.environ, "REOPS_HISTORY_PATH": str(blocker / "history")}
    host = next(iter(lab.hosts))
    for command, code in (("true", 0), ("exit 7", 1)):
        done = reops("exec", "-i", str(lab.inventory), host, "--", command, env=env)
        assert done.returncode == code, done.stderr
        warnings = [x for x in done.stderr.splitlines() if "run history not written" in x]
        assert len(warnings) == 1 and str(blocker) in warnings[0]
        assert "Traceback" not in done.stderr


def test_old_days_are_removed_on_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REOPS_HISTORY_KEEP", "30d")
    old = root() / "day=2001-01-01"
    recent = root() / f"day={(datetime.now(UTC) - timedelta(days=3)).date().isoformat()}"
    for d in (old, recent):
        d.mkdir(parents=True)
        (d / "x-0.parquet").write_bytes(b"")
    h._writer._pruned.clear()
    h.record([result("web1")], RunInfo())
    assert h.flush()
    assert not old.exists() and recent.exists()


def test_bad_keep_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REOPS_HISTORY_KEEP", "forever")
    with pytest.raises(ValueError, match=r"\[history\] keep"):
        h.settings()


def test_default_path_is_under_reops_home(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REOPS_HISTORY_PATH")
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    assert h.settings().root == tmp_path / "home" / "history"


def test_import_reops_loads_neither_the_history_nor_polars() -> None:
    code = ("import sys, reops; from reops.core import hooks; "
            "assert hooks.active(); "
            "assert 'reops.sinks.history' not in sys.modules and 'polars' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_compacting_a_closed_day_keeps_every_row_once(monkeypatch: pytest.MonkeyPatch) -> None:
    then = (datetime.now(UTC) - timedelta(days=3)).timestamp()
    for n in range(3):
        h.record([result(f"web{n}", started_at=then + n)], RunInfo())
    assert h.flush()
    day = next(root().glob("day=*"))
    assert len(list(day.glob("*.parquet"))) == 3
    assert h.compact(root()) == 1
    assert len(list(day.glob("*.parquet"))) == 4  # the merged file; the others for a while
    assert sorted(rows(since=None)["host"]) == ["web0", "web1", "web2"]
    monkeypatch.setattr(hf, "COMPACT_GRACE_S", 0.0)
    h.record([result("late", started_at=then + 9)], RunInfo())  # a run that ended late
    assert h.flush()
    assert h.compact(root()) == 1  # the merged file and the late one merge again
    assert h.compact(root()) == 0  # nothing left to merge: what was merged is removed
    [only] = day.glob("*.parquet")
    assert only.name.startswith("compact-")
    assert sorted(rows(since=None)["host"]) == ["late", "web0", "web1", "web2"]


def test_the_run_that_just_finished_is_in_the_answer() -> None:
    run(Stream(reactivex.from_iterable([result("web7")]), Hosts()))
    assert rows()["host"].to_list() == ["web7"]  # no flush(): history() writes what waits


def test_a_forked_child_neither_hangs_nor_records(tmp_path: Path) -> None:
    """polars is not fork-safe once loaded: a child forked after a recorded run skips
    recording instead of queueing for a writer thread it does not have (and waiting for
    it at exit)."""
    script = tmp_path / "fork.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from reops.core.model import Result, RunInfo
        from reops.sinks import history as h
        h.record([Result(host="parent", op="exec", status="ok", code=0)], RunInfo())
        assert h.flush()
        pid = os.fork()
        if pid == 0:
            h.record([Result(host="child", op="exec", status="ok", code=0)], RunInfo())
            sys.exit(0 if h.flush(0) else 9)  # nothing waits for a thread that is not here
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert rows(since=None)["host"].to_list() == ["parent"]


def test_ctrl_c_still_interrupts_while_the_history_loads_polars(lab: LabInfo,
                                                                tmp_path: Path) -> None:
    """The first write imports polars in the writer thread, maybe while the next run()
    waits; polars' SIGINT handler (SA_RESTART) must not make that wait deaf to Ctrl-C."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(textwrap.dedent(f"""
        import threading
        from reops import inventory, exec_, run
        from reops.sinks.history import flush
        hosts = inventory({str(lab.inventory)!r}).select({next(iter(lab.hosts))!r})
        run(exec_(hosts, "true"))
        threading.Thread(target=lambda: print("written", flush(), flush=True)).start()
        out = run(exec_(hosts, "sleep 60"))
        print("interrupted", out.interrupted, flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "written True"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)  # a bound, far below the 60 s sleep
    finally:
        proc.kill()
    assert "interrupted True" in out, err


def test_a_bad_history_config_warns_once_and_runs_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[history]\nkeep = "ever"\n')
    monkeypatch.setenv("REOPS_CONFIG", str(config))
    for _ in range(2):
        out = run(Stream(reactivex.from_iterable([result("web1")]), Hosts()))
        assert out.ok
    [line] = [x for x in capfd.readouterr().err.splitlines() if "history" in x]
    assert str(config) in line and "keep" in line and "unaffected" in line
    monkeypatch.setenv("REOPS_HISTORY", "0")  # off wins over a broken config
    assert not h.settings().enabled


def _once(df: pl.DataFrame) -> set[tuple[str, str]]:
    """The (run_id, host) pairs of `df`, asserting none is there twice."""
    pairs = list(zip(df["run_id"], df["host"], strict=True))
    assert len(pairs) == len(set(pairs)), "a row was read twice"
    return set(pairs)


def test_a_busy_open_day_is_compacted_as_runs_land(monkeypatch: pytest.MonkeyPatch) -> None:
    """Today is compacted too, by the writer as it goes: 60 runs leave a few files (tiers
    of merged files), not 60, and every row is there once."""
    monkeypatch.setenv("REOPS_HISTORY_COMPACT_FILES", "4")
    sent: set[tuple[str, str]] = set()
    for n in range(60):
        info = RunInfo()
        h.record([result(f"web{n}"), result(f"db{n}", "pkg.install", "failed", 1)], info)
        assert h.flush()  # one file per run, as separate commands would write
        sent |= {(info.run_id, f"web{n}"), (info.run_id, f"db{n}")}
    opened = h.files(root(), datetime.now(UTC).date())
    assert len(opened) <= 4 + 2 * (hf.COMPACT_FANIN - 1), [p.name for p in opened]
    assert any("-l2." in p.name for p in opened)  # merged files merged again: tiers
    assert _once(rows(since="1d")) == sent
    assert len(rows(since="1d", failed=True)) == 60


def test_a_query_compacts_a_day_of_many_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written where nothing compacted them (a writer with a high compact_files,
    or spools of short commands) are merged by the first query that reads them."""
    monkeypatch.setenv("REOPS_HISTORY_COMPACT_FILES", "1000")
    for n in range(12):
        h.record([result(f"web{n}")], RunInfo())
        assert h.flush()
    assert len(h.files(root())) == 12
    monkeypatch.setenv("REOPS_HISTORY_COMPACT_FILES", "4")
    assert sorted(rows(since="1d")["host"]) == sorted(f"web{n}" for n in range(12))
    assert len(h.files(root())) == 1  # the query merged them; the next one opens one file
    assert len(_once(rows(since="1d"))) == 12


_APPENDER = """
import sys
import polars  # loaded: the writer writes parquet and compacts as it goes
from reops.core.model import Result, RunInfo
from reops.sinks import history as h
tag, runs = sys.argv[1], int(sys.argv[2])
for n in range(runs):
    info = RunInfo()
    h.record([Result(host=f"{tag}-{n}-{k}", op="exec", status="ok", code=0)
              for k in range(3)], info)
    assert h.flush()
    print(info.run_id, flush=True)
"""


def test_open_day_compaction_under_concurrent_writers_keeps_every_row_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes append runs to today (each compacting as it goes) while this one
    compacts the same day and queries it: no query ever reads a row twice, and in the
    end every row is there exactly once, though merged-away files were removed."""
    script = tmp_path / "append.py"
    script.write_text(_APPENDER)
    env = {**os.environ, "REOPS_HISTORY_COMPACT_FILES": "3"}
    runs = 40
    procs = [subprocess.Popen([sys.executable, str(script), tag, str(runs)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    monkeypatch.setattr(hf, "COMPACT_GRACE_S", 0.0)  # what this one merges away goes at once
    merges = queries = 0
    try:
        while any(p.poll() is None for p in procs):
            merges += h.compact_open(root(), small_files=2)
            _once(h.history("1d", path=root()).select("run_id", "host").collect())
            queries += 1
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    run_ids = {tag: out.split() for tag, (out, _) in zip("ab", outs, strict=True)}
    sent = {(rid, f"{tag}-{n}-{k}") for tag, ids in run_ids.items()
            for n, rid in enumerate(ids) for k in range(3)}
    assert len(sent) == 2 * runs * 3
    h.compact_open(root(), small_files=2)
    assert _once(rows(since="1d")) == sent
    assert queries > 0 and merges > 0
    assert len(h.files(root())) < 2 * runs  # compacted: far fewer files than runs
