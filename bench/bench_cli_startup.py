"""Whole-process `reops exec` on a lab with agents: what a user waits for at the prompt.

    .venv/bin/python bench/bench_cli_startup.py [--hosts 50] [--repeat 10] [--baseline REV]

Issue 13 item 6: `reops exec --via agent -- true` on 50 agents in ≤ 0.12 s whole process,
and an idle agent in ≤ 20 MB RSS (the lab's agents run in this venv, whose editable
installs add ~2 MB at interpreter start-up — shown as `this_venv_bare_python`; a deployed
agent's own venv does not: `bench/bench_agents.py --rss --agent-python VENV/bin/python`).

Times each command as a fresh process (p50/p95/min of `--repeat` runs after one warm-up),
with its CPU time (user+sys, steadier than wall time on a busy box), against
`python -c pass` (the interpreter's own floor):

  exec --help            the launcher and click, nothing of a run
  exec --via agent       through the hub to 50 connected agents: the one-shot path
                         (reops/cli/quick.py: no click, asyncio, reactivex, rich)
  exec --via agent (full path)  the same through the click CLI (REOPS_CLI_QUICK=0),
                         so one run gives the ratio
  exec (hub's SSH pool)  over SSH, borrowing the running hub's warm connections
  exec --no-hub          over SSH from the process itself (asyncssh, 50 handshakes)

`--baseline REV` also times the same commands with the `reops` package of git revision REV
(extracted to a temp dir and put first on PYTHONPATH) in the same lab, in the same run.
The processes use compiled bytecode (a private PYTHONPYCACHEPREFIX, warmed up), as an
installed reops does, even where PYTHONDONTWRITEBYTECODE is set.

It brings up its own lab (`reops lab up --agents`, own $REOPS_HOME and history, hub on a
free port, hosts on 127.0.253.x) and takes it down at the end, even on error. Prints one
JSON object: per command and tree its timings, the agents' idle RSS, the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
REOPS = str(Path(sys.executable).with_name("reops"))
FIRST_ADDRESS = "127.0.253.1"
AGENT_EXEC = [PYTHON, "-m", "reops", "exec", "--via", "agent", "all", "--", "true"]
TARGET_AGENT_S = 0.120
TARGET_RSS_MB = 20.0


def summary(times: list[float], cpu: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(ordered[math.ceil(len(ordered) * 0.95) - 1] * 1000, 1),
            "min_ms": round(ordered[0] * 1000, 1),
            "cpu_p50_ms": round(statistics.median(cpu) * 1000, 1)}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(argv: list[str], env: dict[str, str], repeat: int, cwd: Path) -> dict[str, float]:
    """`argv` once to warm up (bytecode), then `repeat` timed fresh processes."""
    times: list[float] = []
    cpu: list[float] = []
    for n in range(repeat + 1):
        c0, t0 = children_cpu(), time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=120)
        t1, c1 = time.perf_counter(), children_cpu()
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr[-500:]}")
        if n:
            times.append(t1 - t0)
            cpu.append(c1 - c0)
    return summary(times, cpu)


def extract(rev: str, into: Path) -> Path:
    """The `reops` package (and reops_agent) of git revision `rev`, in `into`."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", rev, "reops", "agent/reops_agent"],
                       stdout=f, check=True, timeout=120)
    with tarfile.open(archive) as t:
        t.extractall(into, filter="data")
    archive.unlink()
    return into


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def interpreter_rss_mb(python: str, env: dict[str, str]) -> float:
    """RSS of a bare `python` of this venv: its start-up hooks (this repo's editable
    installs add ~2 MB that a host's agent venv, holding only reops-agent, does not pay)."""
    code = ("print([x for x in open('/proc/self/status') "
            "if x.startswith('VmRSS')][0].split()[1])")
    done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return int(done.stdout) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--port", type=int, default=2953)
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="also time the reops package of this git revision")
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    home = scratch / "home"
    home.mkdir(mode=0o700)
    root = scratch / "lab"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env.update({"REOPS_HOME": str(home), "REOPS_HUB_BIND": "tcp://127.0.0.1:*",
                "REOPS_HISTORY_PATH": str(scratch / "history"),
                "PYTHONPYCACHEPREFIX": str(scratch / "pyc")})
    try:
        subprocess.run([REOPS, "lab", "up", "--hosts", str(a.hosts), "--dir", str(root),
                        "--port", str(a.port), "--first-address", FIRST_ADDRESS,
                        "--agents", "--no-names", "--shared-fs"],
                       env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)
        env["REOPS_INVENTORY"] = str(root / "inventory.toml")
        trees: dict[str, tuple[dict[str, str], Path]] = {"current": (env, scratch)}
        if a.baseline:
            old = extract(a.baseline, scratch / "baseline")
            pythonpath = f"{old}{os.pathsep}{old / 'agent'}"
            trees[f"baseline {a.baseline}"] = ({**env, "PYTHONPATH": pythonpath}, old)
        full_path = {"REOPS_CLI_QUICK": "0"}
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([PYTHON, "-c", "pass"], {}),
            "reops exec --help": ([PYTHON, "-m", "reops", "exec", "--help"], {}),
            "reops exec --via agent all -- true": (AGENT_EXEC, {}),
            "reops exec --via agent all -- true (full path)": (AGENT_EXEC, full_path),
            "reops exec all -- true (hub's SSH pool)": ([PYTHON, "-m", "reops", "exec", "all",
                                                         "--", "true"], {}),
            "reops exec --no-hub all -- true": ([PYTHON, "-m", "reops", "exec", "--no-hub",
                                                 "all", "--", "true"], {}),
        }
        results: dict[str, dict[str, dict[str, float]]] = {}
        for label, (argv, extra) in commands.items():
            for tree, (tree_env, cwd) in trees.items():
                if label == "python -c pass" and tree != "current":
                    continue
                results.setdefault(label, {})[tree] = timed(argv, {**tree_env, **extra},
                                                            a.repeat, cwd)
        agents = json.loads((root / "agents" / "agents.json").read_text())
        rss = [m for rec in agents.values() if (m := rss_mb(rec["pid"])) is not None]
        quick = results["reops exec --via agent all -- true"]["current"]
        full = results["reops exec --via agent all -- true (full path)"]["current"]
        bare = results["python -c pass"]["current"]
        agent_p50 = quick["p50_ms"] / 1000
        print(json.dumps({
            "hosts": a.hosts, "repeat": a.repeat, "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "whole_process": results,
            "exec_via_agent_quick_vs_full": {
                "wall_p50_ms": [quick["p50_ms"], full["p50_ms"]],
                "cpu_p50_ms": [quick["cpu_p50_ms"], full["cpu_p50_ms"]],
                "full_over_quick_wall": round(full["p50_ms"] / quick["p50_ms"], 2),
                "quick_over_python_c_pass_wall": round(quick["p50_ms"] / bare["p50_ms"], 2)},
            "agent_idle_rss_mb": {"p50": round(statistics.median(rss), 1),
                                  "max": round(max(rss), 1), "agents": len(rss),
                                  "this_venv_bare_python": round(interpreter_rss_mb(
                                      PYTHON, env), 1)},
            "targets": {
                f"exec --via agent p50 <= {TARGET_AGENT_S * 1000:.0f} ms":
                    "PASS" if agent_p50 <= TARGET_AGENT_S else "MISS",
                f"agent idle RSS <= {TARGET_RSS_MB:.0f} MB":
                    "PASS" if statistics.median(rss) <= TARGET_RSS_MB else "MISS",
            },
        }, indent=2))
    finally:
        subprocess.run([REOPS, "lab", "down", "--dir", str(root)], env=env, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
