"""A quick CLI: what `reops` imports on its way, so start-up cannot regress silently.

Pass/fail on WHAT a real `reops` process imports (its `sys.modules`, or `-X importtime`),
never on time; the figures are in bench/bench_cli_startup.py. And the run history's cheap
path: a short command records its rows as a msgpack spool (polars is never imported for
it), which the next query folds into parquet, nothing lost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from reops.lab.agents import start_agents, start_hub, wait_for_agents
from reops.lab.fleet import LabInfo

#: what `reops CMD --help` must not load: the heavy machinery of a run
HEAVY = ("polars", "pyarrow", "asyncssh", "rich.console", "rich.table", "reactivex",
         "asyncio", "zmq", "reops.streams.stream", "reops.sinks.history")


def loaded_by(argv: list[str], env: dict[str, str] | None = None,
              stdout: list[str] | None = None) -> set[str]:
    """The modules a `reops ARGV` process holds when it exits (it prints its sys.modules
    from an atexit hook, after click has exited); its output is appended to `stdout`."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write('MODULES ' + ' '.join(sys.modules) "
            "+ '\\n'))\n"
            "from reops.cli.main import main\n"
            f"sys.argv = ['reops', *{argv!r}]\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env or dict(os.environ))
    [line] = [x for x in done.stderr.splitlines() if x.startswith("MODULES ")]
    if stdout is not None:
        stdout.append(done.stdout)
    return set(line.split()[1:])


def imported(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_help_imports_none_of_a_runs_machinery() -> None:
    for argv in (["--help"], ["exec", "--help"], ["hosts", "--help"]):
        modules = loaded_by(argv)
        assert "click" in modules  # the probe saw the process
        heavy = sorted(m for m in HEAVY if imported(modules, m))
        assert heavy == [], f"reops {' '.join(argv)} imports {heavy}"


def test_exec_never_imports_polars_nor_unused_operators_and_sinks(lab: LabInfo) -> None:
    """A plain `reops exec` (pretty output, no --retry/--rolling/--save/-o jsonl) loads
    neither polars (not even for the run history) nor the operators and sinks it does not
    use."""
    host = next(iter(lab.hosts))
    modules = loaded_by(["exec", "-i", str(lab.inventory), host, "--", "true"])
    assert "reops.sinks.terminal" in modules  # it did run and print
    for name in ("polars", "reops.streams.operators", "reops.sinks.jsonl", "reops.sinks.table"):
        assert not imported(modules, name), f"reops exec imports {name}"


#: what `reops exec --via agent` must not load: the agent's own code (the control client
#: speaks the hub's protocol, not the agent's), SSH, the store, the hub, the run-history
#: table machinery, and the operators and sinks it does not use
VIA_AGENT_NEVER = ("reops_agent", "asyncssh", "reops.transports.ssh", "reops.hub",
                   "reops.store", "polars", "pyarrow", "reops.streams.operators",
                   "reops.sinks.jsonl", "reops.sinks.table")


def test_exec_via_agent_imports_only_the_control_client(lab: LabInfo, tmp_path: Path) -> None:
    """A real `reops exec --via agent` through a real hub to two real agents (connected
    from their lab hosts' addresses): it runs on both, and what it imported stays lean."""
    hosts = list(lab.hosts)[:2]
    env = {**os.environ, "REOPS_HOME": str(tmp_path / "home"),
           "REOPS_CONFIG": str(tmp_path / "none.toml")}
    with start_hub(tmp_path / "home") as hub, start_agents(
            hosts, hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "agents",
            sources=lab.hosts):
        wait_for_agents(hub.control_path, hosts)
        out: list[str] = []
        modules = loaded_by(["exec", "-i", str(lab.inventory), ",".join(hosts), "--via",
                             "agent", "--", "echo via-agent"], env=env, stdout=out)
    assert "2 ok" in out[0], out  # it did run, on both agents
    assert "reops.transports.agent" in modules and "reops.control.client" in modules
    held = sorted(m for m in VIA_AGENT_NEVER if imported(modules, m))
    assert held == [], f"reops exec --via agent imports {held}"


#: what the one-shot `reops exec --via agent` (reops/cli/quick.py) must not load: its
#: whole point is a process that is mostly the interpreter's own start-up
QUICK_NEVER = ("click", "asyncio", "reactivex", "rich", "polars", "pyarrow", "asyncssh",
               "reops_agent", "reops.streams", "reops.hub", "reops.store",
               "reops.transports.agent", "reops.control.client", "reops.sinks.terminal")


def test_the_quick_agent_exec_loads_no_click_asyncio_reactivex_rich(lab: LabInfo,
                                                                     tmp_path: Path) -> None:
    """The `reops` command itself (its launcher, as installed) on `exec --via agent`: it
    runs on both agents through a real hub, and loads none of the full CLI's machinery."""
    hosts = list(lab.hosts)[:2]
    trace = tmp_path / "trace"
    env = {**os.environ, "REOPS_HOME": str(tmp_path / "home"),
           "REOPS_CONFIG": str(tmp_path / "none.toml"), "REOPS_CLI_QUICK_TRACE": str(trace)}
    env.pop("REOPS_CLI_QUICK", None)
    with start_hub(tmp_path / "home") as hub, start_agents(
            hosts, hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "agents",
            sources=lab.hosts):
        wait_for_agents(hub.control_path, hosts)
        done = subprocess.run([sys.executable, "-m", "reops", "exec", "-i",
                               str(lab.inventory), ",".join(hosts), "--via", "agent", "--",
                               "echo quick"], capture_output=True, text=True, timeout=120,
                              env=env)
    assert done.returncode == 0 and "2 ok" in done.stdout, done.stderr
    path, *listed = trace.read_text().split()
    modules = set(listed)
    assert path == "quick" and "reops.cli.quick" in modules and "zmq" in modules
    held = sorted(m for m in QUICK_NEVER if imported(modules, m))
    assert held == [], f"the quick reops exec --via agent imports {held}"


def test_a_cli_run_is_spooled_then_folded_into_parquet_by_the_query(lab: LabInfo) -> None:
    hosts = ",".join(list(lab.hosts)[:3])
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "reops", "exec", "-i",
                           str(lab.inventory), hosts, "--", "echo spooled"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"\| +polars$", done.stderr, re.M)  # not even in the writer thread
    root = Path(os.environ["REOPS_HISTORY_PATH"])
    [spool] = root.glob("day=*/*.spool")
    assert not list(root.rglob("*.parquet"))

    shown = subprocess.run([sys.executable, "-m", "reops", "history", "-o", "json"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert sorted(r["host"] for r in rows) == sorted(hosts.split(","))
    assert {(r["out"], r["source"], r["step"]) for r in rows} == {("spooled\n", "cli", 0)}
    assert not spool.exists()  # folded: the same name as parquet, the spool gone
    assert [p.name for p in root.rglob("*.parquet")] == [spool.name[:-6] + ".parquet"]
    again = json.loads(subprocess.run([sys.executable, "-m", "reops", "history", "-o", "json"],
                                      capture_output=True, text=True, timeout=120).stdout)
    assert sorted(r["host"] for r in again) == sorted(r["host"] for r in rows)  # not doubled


def test_a_damaged_spool_is_one_line_and_the_other_rows_stay(lab: LabInfo) -> None:
    host = next(iter(lab.hosts))
    done = subprocess.run([sys.executable, "-m", "reops", "exec", "-i", str(lab.inventory),
                           host, "--", "true"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    root = Path(os.environ["REOPS_HISTORY_PATH"])
    [good] = root.glob("day=*/*.spool")
    bad = good.with_name("broken-0.spool")
    bad.write_bytes(good.read_bytes()[:20])  # a spool cut short
    shown = subprocess.run([sys.executable, "-m", "reops", "history", "-o", "json"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert [r["host"] for r in json.loads(shown.stdout)] == [host]
    warnings = [x for x in shown.stderr.splitlines() if "warning" in x]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "Traceback" not in shown.stderr
    assert bad.exists()  # left for the user, as the line says


#: what the agent's entry point must not import: asyncio (~7 MB: the agent is a zmq.Poller
#: loop with threads), and what only a call needs (subprocess for shell, system for facts,
#: metrics and files, hashlib/OpenSSL for uploads and shipped code, tempfile & co for
#: uploads), nor the heavier helpers it replaced (dataclasses, logging, pathlib)
AGENT_IDLE_NEVER = ("asyncio", "zmq.asyncio", "ssl", "hashlib", "subprocess", "selectors",
                    "reops_agent.system", "tempfile", "secrets", "shutil", "lzma",
                    "dataclasses", "logging", "pathlib", "socket")


def test_an_idle_agent_loads_no_upload_machinery_and_uploads_still_work(
        tmp_path: Path) -> None:
    """What an idle agent holds is what its entry point imports: no asyncio, nothing only
    a call needs (imported by the first call; a real agent runs them in test_agents_live).
    The lazily imported upload path works."""
    # (what the agent adds to the interpreter's start-up: this venv's editable-install hooks
    # import pathlib and inspect before any agent code runs; a deployed agent has none)
    probe = ("import sys\nbefore = set(sys.modules)\nimport reops_agent.cli\n"
             "print(' '.join(set(sys.modules) - before))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    modules = set(done.stdout.split())
    assert "reops_agent.agent" in modules and "zmq" in modules and "msgspec" in modules
    held = sorted(m for m in AGENT_IDLE_NEVER if imported(modules, m))
    assert held == [], f"an idle agent imports {held}"

    import hashlib

    from reops_agent.system import Uploads

    uploads = Uploads()
    target = tmp_path / "d" / "up.bin"
    token = uploads.begin(str(target))["token"]
    uploads.append(token, 0, b"hello ")
    uploads.append(token, 6, b"agent")
    done_ = uploads.commit(token, 11, hashlib.sha256(b"hello agent").hexdigest(), mode=0o600)
    assert done_["changed"] and target.read_bytes() == b"hello agent"
