"""The one-shot `reops exec --via agent` (reops/cli/quick.py) against the full click path.

A real hub and real agents over CURVE; every case runs as a real `reops` process twice,
through the quick path and with REOPS_CLI_QUICK=0 (the click CLI), and must print the same
stdout (timings normalised; json/jsonl without run ids and times), the same stderr and exit
code. REOPS_CLI_QUICK_TRACE tells which path ran and what it imported.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reops.cli.quick import Plan, parse
from reops.lab.agents import LabAgents, LabHub, start_agents, start_hub, wait_for_agents

#: agents' source addresses (the hub sees them connect from there); no host listens on them
NET = "127.0.249"
#: the agents that run: name -> the address they connect from
AGENTS = {"a1": f"{NET}.1", "a2": f"{NET}.2", "a3": f"{NET}.3", "m1": f"{NET}.4"}
#: m1's inventory address is not where its agent connects from (another machine's name)
#: and gone1 has no agent at all
INVENTORY = """
[hosts.a1]
address = "{net}.1"
[hosts.a2]
address = "{net}.2"
[hosts.a3]
address = "{net}.3"
[hosts.m1]
address = "{net}.99"
[hosts.gone1]
address = "{net}.5"
"""
#: what differs between two runs of the same command
TIMES = ("started_at", "duration_s", "ended_at", "run_id")


class Fleet:
    def __init__(self, hub: LabHub, agents: LabAgents, inventory: Path, root: Path) -> None:
        self.hub = hub
        self.agents = agents
        self.inventory = inventory
        self.root = root

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("REOPS_CLI_QUICK", "REOPS_INVENTORY", "REOPS_CLI_QUICK_TRACE")}
        env.update({"REOPS_HOME": str(self.hub.home),
                    "REOPS_CONFIG": str(self.root / "none.toml")})
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("quick")
    inventory = root / "inventory.toml"
    inventory.write_text(INVENTORY.format(net=NET))
    (root / "home").mkdir(mode=0o700)  # (else every command warns it is open to others)
    with start_hub(root / "home") as hub, start_agents(
            list(AGENTS), hub.bind, hub.key, hub.keys_dir, workdir=root / "agents",
            sources=AGENTS) as agents:
        wait_for_agents(hub.control_path, list(AGENTS))
        yield Fleet(hub, agents, inventory, root)


def reops(fleet: Fleet, argv: list[str], quick: bool, tmp: Path, expect: str | None = None,
          **env: str) -> subprocess.CompletedProcess[str]:
    """A real `reops ARGV` process, the quick path allowed or not (REOPS_CLI_QUICK=0);
    asserts which path ran (`expect`; default: the quick one where allowed)."""
    trace = tmp / f"trace-{secrets.token_hex(4)}"
    extra = {"REOPS_CLI_QUICK_TRACE": str(trace), **env}
    if not quick:
        extra["REOPS_CLI_QUICK"] = "0"
    done = subprocess.run([sys.executable, "-m", "reops", *argv], capture_output=True,
                          text=True, timeout=120, env=fleet.env(**extra))
    taken = trace.read_text().split()[0]
    assert taken == (expect or ("quick" if quick else "full")), (argv, done.stderr)
    return done


def normal(text: str) -> str:
    """Pretty output without its timing figures (`exec 0.02s`, `≤0.05s`, `· 0.31 s`)."""
    return re.sub(r"\d+\.\d\d ?s\b", "T", text)


def run_covers_hosts(text: str) -> None:
    """The summary's run time is at least each host's own (`≤0.07s`, `exec 0.07s`): the run
    counts from the call, not from when the printer happened to load."""
    hosts = [float(x) for x in re.findall(r"(?:≤|exec )(\d+\.\d\d)s\b", text)]
    total = re.findall(r"· (\d+\.\d\d) s\b", text)
    if hosts and total:
        assert float(total[-1]) >= max(hosts), text


def timeless(value: Any) -> Any:
    """JSON without the fields that differ from run to run."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def same(fleet: Fleet, argv: list[str], tmp: Path, output: str = "pretty",
         **env: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` both ways; assert the same stdout, stderr and exit code; the quick run."""
    fast = reops(fleet, argv, True, tmp, **env)
    full = reops(fleet, argv, False, tmp, **env)
    assert (fast.returncode, fast.stderr) == (full.returncode, full.stderr)
    if output == "pretty":
        assert normal(fast.stdout) == normal(full.stdout)
        run_covers_hosts(fast.stdout)
        run_covers_hosts(full.stdout)
    elif output == "json":
        assert timeless(json.loads(fast.stdout)) == timeless(json.loads(full.stdout))
    else:
        def rows(text: str) -> list[Any]:
            return sorted((timeless(json.loads(x)) for x in text.splitlines()),
                          key=lambda r: r["host"])
        assert rows(fast.stdout) == rows(full.stdout)
        assert len({json.loads(x)["run_id"] for x in fast.stdout.splitlines()}) == 1
    return fast


def exec_(fleet: Fleet, *args: str) -> list[str]:
    return ["exec", "--via", "agent", "-i", str(fleet.inventory), *args]


#: fails (exit 3, 15 lines of output) on a1 only: its agent is the shell's parent
ON_A1_FAIL = ("case \"$(tr '\\0' ' ' </proc/$PPID/cmdline)\" in *'--name a1 '*) "
              "seq 1 15; exit 3;; esac; echo fine")


def test_all_ok_pretty_json_jsonl(fleet: Fleet, tmp_path: Path) -> None:
    done = same(fleet, exec_(fleet, "a*", "--", "echo", "hi"), tmp_path)
    assert done.returncode == 0 and "3 ok" in done.stdout and "a[1-3] (3)" in done.stdout
    for output in ("json", "jsonl"):
        done = same(fleet, exec_(fleet, "-o", output, "a*", "--", "echo hi"), tmp_path, output)
        assert done.returncode == 0 and '"out":"hi\\n"' in done.stdout


def test_failing_hosts_cut_lines_full_and_no_gather(fleet: Fleet, tmp_path: Path) -> None:
    done = same(fleet, exec_(fleet, "a*", "--", ON_A1_FAIL), tmp_path)
    assert done.returncode == 1
    assert "… 5 more lines" in done.stdout and "failed: a1" in done.stdout
    full = same(fleet, exec_(fleet, "--full", "a*", "--", ON_A1_FAIL), tmp_path)
    assert "more lines" not in full.stdout and "\n    1\n" in full.stdout
    for flags in (["--lines", "2", "--no-gather"], ["--lines=0", "--gather"]):
        same(fleet, exec_(fleet, *flags, "a*", "--", ON_A1_FAIL), tmp_path)
    same(fleet, exec_(fleet, "-o", "json", "a*", "--", ON_A1_FAIL), tmp_path, "json")


def test_not_connected_and_another_machine_are_unreachable(fleet: Fleet,
                                                          tmp_path: Path) -> None:
    done = same(fleet, exec_(fleet, "a1,m1,gone1", "--", "true"), tmp_path)
    assert done.returncode == 1 and "2 failed (2 unreachable)" in done.stdout
    assert "inventory says" in done.stdout + done.stderr  # m1: another machine's agent
    same(fleet, exec_(fleet, "-o", "json", "a1,m1,gone1", "--", "true"), tmp_path, "json")


def test_command_timeout(fleet: Fleet, tmp_path: Path) -> None:
    done = same(fleet, exec_(fleet, "-t", "1", "a1", "--", "sleep 5"), tmp_path)
    assert done.returncode == 1 and "1 timeout" in done.stdout


def test_hub_not_running(fleet: Fleet, tmp_path: Path) -> None:
    home = tmp_path / "nohub"
    home.mkdir(mode=0o700)
    done = same(fleet, exec_(fleet, "a1,a2", "--", "true"), tmp_path, REOPS_HOME=str(home))
    assert done.returncode == 1 and "no reops hub is running" in done.stdout


def test_broken_pipe_exits_141(fleet: Fleet, tmp_path: Path) -> None:
    codes = []
    for quick in (True, False):
        read, write = os.pipe()
        os.close(read)  # the reader left before the first line
        env = fleet.env(**({} if quick else {"REOPS_CLI_QUICK": "0"}))
        done = subprocess.run([sys.executable, "-m", "reops",
                               *exec_(fleet, "-o", "jsonl", "a*", "--", "true")],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env=env)
        os.close(write)
        codes.append((done.returncode, done.stderr))
    assert codes[0] == codes[1] == (141, "")


def running(marker: str) -> int:
    """How many processes run `sleep MARKER` right now."""
    want = f"sleep\0{marker}\0".encode()
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                n += (d / "cmdline").read_bytes() == want
            except OSError:
                continue
    return n


def until(cond: Any, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        time.sleep(0.02)


def interrupted(fleet: Fleet, quick: bool, sig: int, tmp: Path) -> tuple[int, str, str]:
    """`sleep 30` on a1,a2 (and a3, which finishes), `sig` once both sleep: the
    command's exit code and output, after the sleeps are gone from the agents."""
    marker = f"29.{secrets.randbelow(10**6):06d}"
    trace = tmp / f"trace-{marker}"
    env = fleet.env(REOPS_CLI_QUICK_TRACE=str(trace),
                    **({} if quick else {"REOPS_CLI_QUICK": "0"}))
    cmd = f"case \"$(tr '\\0' ' ' </proc/$PPID/cmdline)\" in *'--name a3 '*) exit 0;; esac; " \
          f"sleep {marker}"
    proc = subprocess.Popen([sys.executable, "-m", "reops", *exec_(fleet, "a*", "--", cmd)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        until(lambda: running(marker) == 2, 30, "both agents run the command")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    until(lambda: running(marker) == 0, 15, "the agents killed the command")
    assert trace.read_text().split()[0] == ("quick" if quick else "full")
    return proc.returncode, normal(out).replace(marker, "M"), err


@pytest.mark.parametrize(("sig", "code", "why"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143,
                                                    "terminated (SIGTERM)")])
def test_signal_cancels_the_call_on_the_agents(fleet: Fleet, tmp_path: Path, sig: int,
                                               code: int, why: str) -> None:
    fast = interrupted(fleet, True, sig, tmp_path)
    full = interrupted(fleet, False, sig, tmp_path)
    assert fast == full
    assert fast[0] == code
    assert fast[2] == f"reops: {why}: hosts not finished are reported as errors\n"
    assert "1 ok · 2 not finished · 3 hosts" in fast[1] and "a[1-2]" in fast[1]


def test_history_shows_a_quick_run_as_a_full_one(fleet: Fleet, tmp_path: Path) -> None:
    history = tmp_path / "history"
    rows = []
    for quick in (True, False):
        reops(fleet, exec_(fleet, "a1,gone1", "--", "echo recorded"), quick, tmp_path,
              REOPS_HISTORY_PATH=str(history))
        shown = subprocess.run([sys.executable, "-m", "reops", "history", "-o", "json"],
                               capture_output=True, text=True, timeout=120,
                               env=fleet.env(REOPS_HISTORY_PATH=str(history)))
        assert shown.returncode == 0, shown.stderr
        rows.append(json.loads(shown.stdout))
    first = [timeless(r) for r in rows[0]]
    assert sorted(r["host"] for r in first) == ["a1", "gone1"]
    assert {r["source"] for r in first} == {"cli"}
    both = [timeless(r) for r in rows[1]]  # the quick run's rows, then the full run's
    key = json.dumps
    assert sorted(map(key, both)) == sorted(map(key, first * 2))


@pytest.mark.parametrize("argv", [
    ["exec", "--via", "agent", "--help"],
    ["exec", "--via", "agent", "a1", "--stream", "--", "true"],  # not served: click's
    ["exec", "--via", "ssh", "a1", "--", "true"],
    ["exec", "a1", "--", "true"],
    ["exec", "--via", "agent", "-t", "0", "a1", "--", "true"],  # click refuses the value
    ["exec", "--via", "agent", "-o", "names", "a1", "--", "true"],
    ["exec", "--via", "agent", "--systems", "x", "--", "true"],
    ["exec", "--via", "agent", "-o", "json", "-o", "jsonl", "a1", "--", "true"],
    ["exec", "--via", "agent", "a1"],  # no command: click's error
    ["exec", "--via", "agent", "-f", "2", "a1", "--", "true"],
    ["--debug", "exec", "--via", "agent", "a1", "--", "true"],
    ["exec", "--via", "agent", "a1", "uname", "-a"],  # -a: click's "no such option"
])
def test_what_it_does_not_serve_is_left_to_click(argv: list[str]) -> None:
    assert parse(argv) is None


def test_what_it_serves_reads_as_click_reads_it() -> None:
    assert parse(["exec", "--via=agent", "-iinv.toml", "web*", "--output", "jsonl", "-t",
                  "2.5", "--lines", "3", "--no-gather", "--", "uname", "-a"]) == Plan(
        selector="web*", command=("uname", "-a"), inventory="inv.toml", output="jsonl",
        timeout=2.5, tail_lines=3, gather=False)
    assert parse(["exec", "all", "--via", "agent", "--full", "uptime"]) == Plan(
        selector="all", command=("uptime",), full=True)


def test_unserved_flags_and_bad_input_run_the_click_cli(fleet: Fleet, tmp_path: Path) -> None:
    """Left to click before anything is sent: its own words, its exit code, run once."""
    done = reops(fleet, exec_(fleet, "a1", "--stream", "--", "echo once"), True, tmp_path,
                 "full")
    assert done.returncode == 0 and done.stdout.count("once") == 1
    fell = reops(fleet, ["exec", "--via", "agent", "-t", "0", "a1", "--", "true"], True,
                 tmp_path, "full")
    assert fell.returncode == 2 and "Invalid value" in fell.stderr
    for argv in (exec_(fleet, "nomatch*", "--", "true"),  # no host: click's error line
                 ["exec", "--via", "agent", "-i", str(tmp_path / "missing.toml"), "a1",
                  "--", "true"]):
        fast = reops(fleet, argv, True, tmp_path, "full")  # handed over, nothing sent
        full = reops(fleet, argv, False, tmp_path)
        assert (fast.returncode, fast.stderr, fast.stdout) == (
            full.returncode, full.stderr, full.stdout)
        assert fast.returncode == 2 and fast.stderr.startswith("reops: error:")


def test_config_and_environment_apply_as_on_the_full_path(fleet: Fleet, tmp_path: Path
                                                          ) -> None:
    """config.toml's [ssh] command_timeout and max_output, and $REOPS_INVENTORY."""
    config = tmp_path / "config.toml"
    config.write_text("[ssh]\ncommand_timeout = 1\nmax_output = 64\n")
    env = {"REOPS_CONFIG": str(config), "REOPS_INVENTORY": str(fleet.inventory)}
    cut = same(fleet, ["exec", "--via", "agent", "--full", "a1", "--", "seq 1 1000"],
               tmp_path, **env)
    assert cut.returncode == 0 and "\n    1000\n" in cut.stdout and "\n    500\n" not in (
        cut.stdout)
    late = same(fleet, ["exec", "--via", "agent", "a1", "--", "sleep 5"], tmp_path, **env)
    assert late.returncode == 1 and "1 timeout" in late.stdout


def hub_killed(tmp: Path, quick: bool) -> tuple[int, str, str]:
    """A hub of its own with agent a1; `sleep` on a1 and the hub SIGKILLed once it runs:
    the command's exit code and output (the sleep is ended here, not left behind)."""
    root = tmp / ("quick" if quick else "full")
    root.mkdir()
    (root / "home").mkdir(mode=0o700)
    inventory = root / "inventory.toml"
    inventory.write_text(INVENTORY.format(net=NET))
    marker = f"29.{secrets.randbelow(10**6):06d}"
    with start_hub(root / "home") as hub, start_agents(
            ["a1"], hub.bind, hub.key, hub.keys_dir, workdir=root / "agents",
            sources=AGENTS) as agents:
        wait_for_agents(hub.control_path, ["a1"])
        fleet = Fleet(hub, agents, inventory, root)
        trace = root / "trace"
        env = fleet.env(REOPS_CLI_QUICK_TRACE=str(trace),
                        **({} if quick else {"REOPS_CLI_QUICK": "0"}))
        proc = subprocess.Popen([sys.executable, "-m", "reops",
                                 *exec_(fleet, "a1", "--", f"sleep {marker}")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            until(lambda: running(marker) == 1, 30, "the agent runs the command")
            hub.stop(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for d in Path("/proc").iterdir():  # the agent may outlive its hub's call
                if d.name.isdigit():
                    try:
                        if (d / "cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                            os.kill(int(d.name), signal.SIGKILL)
                    except OSError:
                        continue
    assert trace.read_text().split()[0] == ("quick" if quick else "full")
    return proc.returncode, normal(out).replace(marker, "M"), err


def test_the_hub_dying_mid_call_is_lost(tmp_path: Path) -> None:
    fast = hub_killed(tmp_path, True)
    assert fast == hub_killed(tmp_path, False)
    assert fast[0] == 1 and "1 failed (1 lost)" in fast[1]
    assert "the connection to the hub dropped during the call" in fast[1]
