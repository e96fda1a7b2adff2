"""reops against its peers on a local lab of real sshd hosts; writes bench/RESULTS.md.

    .venv/bin/python bench/run.py [--sizes 10,50,200] [--repeat 5] [--quick]

What it does, in order:

1. makes bench/.venv (reused when present) with the peers pinned in bench/requirements.txt;
2. brings up a lab of max(sizes) sshd hosts on 127.0.3.1.. port 2922 (own range, so other
   labs on the box are not touched) and, for each N, runs every tool on the first N hosts,
   round-robin `--repeat` times, checking from each tool's output that it reached ALL N
   hosts (each host prints its $SSH_CONNECTION, so the server address proves the visit);
   a tool that did not is reported as failed, not timed;
3. the warm case (same command twice in one process, the second timed) against OpenSSH
   ControlMaster connections that are already up, and `reops exec` as a NEW process each
   run through a `reops hub` whose SSH pool a first command warmed (the hub's CPU counted,
   as the masters' is);
4. 10 sequential commands per host in one pipeline, reops vs a raw asyncssh loop (and the
   lock-step peers);
5. start-up time of `reops exec`; 6. events/s through partition + the table sink;
7. writes bench/RESULTS.md with medians, ratios to the raw asyncssh loop of the same run,
   client CPU seconds, and the issue's targets with PASS/MISS.

Client CPU is user+sys of every process the tool ran (getrusage(RUSAGE_CHILDREN) deltas;
this process is a child subreaper, so daemonised ssh ControlPersist masters are reaped and
counted too; the pre-started ControlMaster processes of the warm case are read from /proc).
Everything talks to loopback only, every wait is bounded, and the lab goes down at the end
even on error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MAIN_PY = Path(sys.executable)  # the reops venv's python (make bench runs us with it)
REOPS = MAIN_PY.parent / "reops"
VENV = BENCH / ".venv"
BPY = VENV / "bin" / "python"
REQUIREMENTS = BENCH / "requirements.txt"

PORT = 2922
FIRST_ADDRESS = "127.0.3.1"
#: seconds one tool run may take before it is killed (and reported as failed)
RUN_TIMEOUT = 600.0
#: seconds of runs one tool gets per N; a slow tool does fewer repeats (at least one)
TOOL_BUDGET = 60.0
#: seconds to wait for daemonised leftovers (ControlPersist masters) after a run
REAP_TIMEOUT = 15.0
SEQ_STEPS = 10
SEQ_HOSTS = 50
STARTUP_RUNS = 10
STARTUP_TARGET_MS = 150.0
EVENTS_TARGET = 200_000

ONE_COMMAND = "printenv SSH_CONNECTION"  # no shell needed: works for ansible -m command too
STEP_COMMAND = "echo s{step} $SSH_CONNECTION"
# "<client addr> <client port> <server addr> <server port>", optionally after "sK "
CONN_RE = re.compile(r"(?:\bs(\d+) )?\d+\.\d+\.\d+\.\d+ \d+ (\d+\.\d+\.\d+\.\d+) (\d+)\b")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphans of the tools (ssh ControlPersist masters) become our children, so their
    CPU time can be collected when they exit."""
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log("warning: cannot become a child subreaper; daemonised ssh masters go uncounted")


def children() -> list[int]:
    """Our direct children, from /proc."""
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == me:
            out.append(int(d))
    return out


def proc_cpu(pid: int) -> float:
    """user+sys seconds of a live process (and its reaped children), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = stat[stat.rindex(")") + 2:].split()
    # utime stime cutime cstime are fields 14-17 (1-based), i.e. f[11:15]
    return sum(int(x) for x in f[11:15]) / CLK_TCK


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


#: our children that are never leftovers: the lab's sshd processes, the ControlMasters
PROTECTED: set[int] = set()


def reap_leftovers(keep: set[int], timeout: float = REAP_TIMEOUT) -> int:
    """Wait (bounded) for our children not in `keep` to exit; kill the stubborn ones."""
    deadline = time.monotonic() + timeout
    left = [p for p in children() if p not in keep and p not in PROTECTED]
    n = len(left)
    while left:
        still = []
        for pid in left:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if not done:
                still.append(pid)
        left = still
        if left and time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            timeout = 0.0
        if left:
            time.sleep(0.05)
    return n


@dataclass
class Run:
    """One timed run of one tool."""

    wall: float
    cpu: float
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False
    extra: dict[str, float] = field(default_factory=dict)


def run_process(argv: list[str], *, env: dict[str, str] | None = None,
                stdin_path: Path | None = None, keep: set[int] | None = None,
                timeout: float = RUN_TIMEOUT) -> Run:
    """Run a whole process; wall time and CPU of it and everything it started."""
    keep = set() if keep is None else keep
    stdin = stdin_path.open("rb") if stdin_path else subprocess.DEVNULL
    c0 = children_cpu()
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin,
                         env=env, start_new_session=True, cwd=REPO)
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    wall = time.perf_counter() - t0
    if stdin_path:
        stdin.close()  # type: ignore[union-attr]
    reap_leftovers(keep)
    cpu = children_cpu() - c0
    return Run(wall, cpu, p.returncode, out.decode(errors="replace"),
               err.decode(errors="replace"), timed_out)


# -- the lab and the files each tool needs ----------------------------------------------


@dataclass
class Fleet:
    """The first N lab hosts and the files that describe them to each tool."""

    n: int
    names: list[str]
    addresses: list[str]
    port: int
    user: str
    key: str
    known_hosts: str
    dir: Path

    @property
    def targets(self) -> Path:
        return self.dir / "targets.json"

    @property
    def reops_inventory(self) -> Path:
        return self.dir / "inventory.toml"

    @property
    def ansible_inventory(self) -> Path:
        return self.dir / "ansible.ini"

    @property
    def pyinfra_inventory(self) -> Path:
        return self.dir / "pyinfra_inventory.py"

    @property
    def addresses_file(self) -> Path:
        return self.dir / "addresses.txt"

    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.targets.write_text(json.dumps({
            "names": self.names, "addresses": self.addresses, "port": self.port,
            "user": self.user, "key": self.key, "known_hosts": self.known_hosts,
        }))
        inv = ["[defaults]", f"user = {json.dumps(self.user)}", f"port = {self.port}",
               f"key = {json.dumps(self.key)}", f"known_hosts = {json.dumps(self.known_hosts)}",
               ""]
        for name, addr in zip(self.names, self.addresses, strict=True):
            inv += [f"[hosts.{name}]", f"address = {json.dumps(addr)}", ""]
        self.reops_inventory.write_text("\n".join(inv))
        ssh_common = (f"-F /dev/null -o UserKnownHostsFile={self.known_hosts} "
                      "-o StrictHostKeyChecking=yes -o BatchMode=yes")
        ini = ["[lab]"]
        ini += [f"{n} ansible_host={a}" for n, a in zip(self.names, self.addresses, strict=True)]
        ini += ["[lab:vars]", f"ansible_port={self.port}", f"ansible_user={self.user}",
                f"ansible_ssh_private_key_file={self.key}",
                f"ansible_ssh_common_args='{ssh_common}'",
                "ansible_python_interpreter=/usr/bin/python3"]
        self.ansible_inventory.write_text("\n".join(ini) + "\n")
        data = {"ssh_port": self.port, "ssh_user": self.user, "ssh_key": self.key,
                "ssh_known_hosts_file": self.known_hosts,
                "ssh_strict_host_key_checking": "yes"}
        self.pyinfra_inventory.write_text(
            f"_data = {data!r}\n"
            f"hosts = [(a, dict(_data)) for a in {self.addresses!r}]\n")
        self.addresses_file.write_text("\n".join(self.addresses) + "\n")

    def ssh_argv(self, *extra: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-i", self.key, "-p", str(self.port), "-l",
                self.user, "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", *extra]


def reached(stdout: str, port: int, step: int | None = None) -> set[str]:
    """Server addresses that printed their $SSH_CONNECTION (for `step`, when given)."""
    got = set()
    for m in CONN_RE.finditer(stdout):
        if int(m.group(3)) != port:
            continue
        if step is not None and (m.group(1) is None or int(m.group(1)) != step):
            continue
        got.add(m.group(2))
    return got


# -- tools --------------------------------------------------------------------------------


@dataclass
class Tool:
    """How to run one tool on a Fleet, and how to read its timing."""

    name: str
    argv: Callable[[Fleet, Path], list[str]]
    env: Callable[[Fleet, Path], dict[str, str]] | None = None
    stdin: Callable[[Fleet], Path] | None = None
    #: metrics reported by the process itself (warm cases): stderr JSON keys
    inner: bool = False
    step: int | None = None
    note: str = ""
    #: our children that belong to the tool's setup (ControlMasters), and their CPU
    masters: Callable[[], list[int]] | None = None


def ansible_env(fleet: Fleet, scratch: Path) -> dict[str, str]:
    run_dir = Path(tempfile.mkdtemp(prefix="a", dir=scratch))  # fresh ControlPath dir
    return {
        **os.environ,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_HOME": str(scratch / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(scratch / "ansible-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(run_dir),
        # ansible's default ssh_args, but masters linger 1 s (not 60 s): every run is cold
        "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=1s",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }


def peer_env(fleet: Fleet, scratch: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(scratch / "home")}


def xargs_argv(fleet: Fleet, *ssh_extra: str, command: str = ONE_COMMAND) -> list[str]:
    return ["xargs", "-P", str(fleet.n), "-I{}", *fleet.ssh_argv(*ssh_extra), "{}", command]


class ControlMasters:
    """OpenSSH ControlMaster connections to every host of a Fleet, started before timing."""

    def __init__(self, fleet: Fleet, scratch: Path, keep: set[int]) -> None:
        self.fleet = fleet
        self.dir = Path(tempfile.mkdtemp(prefix="cm", dir=scratch))
        self.path = str(self.dir / "%C")
        self.keep = keep
        self.pids: list[int] = []

    def start(self) -> float:
        before = set(children())
        t0 = time.perf_counter()
        argv = xargs_argv(self.fleet, "-o", f"ControlPath={self.path}", "-o",
                          "ControlMaster=yes", "-o", "ControlPersist=yes", "-f", "-N",
                          command="")[:-1]
        r = run_process(argv, stdin_path=self.fleet.addresses_file, keep=_KEEP_ALL)
        wall = time.perf_counter() - t0
        self.pids = [p for p in children() if p not in before and p not in self.keep]
        PROTECTED.update(self.pids)
        if r.rc != 0 or len(self.pids) != self.fleet.n:
            raise RuntimeError(f"ControlMasters: {len(self.pids)}/{self.fleet.n} up "
                               f"(rc {r.rc}): {r.stderr[-500:]}")
        return wall

    def cpu(self) -> float:
        return sum(proc_cpu(p) for p in self.pids)

    def stop(self) -> None:
        if not self.pids:
            return
        argv = xargs_argv(self.fleet, "-o", f"ControlPath={self.path}", "-O", "exit",
                          command="")[:-1]
        with contextlib.suppress(Exception):
            run_process(argv, stdin_path=self.fleet.addresses_file,
                        keep=self.keep | set(self.pids), timeout=60)
        PROTECTED.difference_update(self.pids)
        reap_leftovers(self.keep, timeout=10)
        self.pids = []


class WarmHub:
    """A `reops hub` (own home) whose SSH pool a first `reops exec` warms before timing;
    the timed runs are new CLI processes that send their work to it."""

    def __init__(self, fleet: Fleet, scratch: Path) -> None:
        self.fleet = fleet
        root = Path(tempfile.mkdtemp(prefix="hub", dir=scratch))
        self.env = {**os.environ, "REOPS_HOME": str(root / "home"),
                    "REOPS_CONFIG": str(root / "no-config.toml"),
                    "REOPS_HUB_BIND": "tcp://127.0.0.1:*",
                    # ControlPersist=yes keeps the masters for the whole run: so does this
                    "REOPS_IDLE_TIMEOUT": "3600"}
        for var in ("REOPS_NO_HUB", "REOPS_USE_HUB", "REOPS_HUB_CONTROL"):
            self.env.pop(var, None)
        self.control = root / "home" / "run" / "hub.sock"
        self.log = root / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def argv(self) -> list[str]:
        return [str(REOPS), "exec", "-i", str(self.fleet.reops_inventory), "all", "-o",
                "json", "--", ONE_COMMAND]

    def start(self) -> float:
        from reops.control.client import ping_sync

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(MAIN_PY), "-m", "reops.hub"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pids = [self.proc.pid]
        PROTECTED.update(self.pids)
        ping_sync(self.control, timeout=60.0, wait=True)
        t0 = time.perf_counter()
        r = run_process(self.argv(), env=self.env, keep=set(self.pids))
        wall = time.perf_counter() - t0
        if len(reached(r.stdout, self.fleet.port)) != self.fleet.n:
            raise RuntimeError(f"warming the hub: rc {r.rc}: {r.stderr[-500:]}")
        return wall

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        PROTECTED.difference_update(self.pids)
        self.pids = []


class _KeepAll(set[int]):
    """While masters start, keep every child: the new ones are the masters."""

    def __contains__(self, item: object) -> bool:
        return True


_KEEP_ALL = _KeepAll()


def cold_tools(ctl: ControlMasters | None, hub: WarmHub | None = None) -> list[Tool]:
    bpy = str(BPY)
    tools = [
        Tool("reops exec (CLI)", lambda f, s: [str(REOPS), "exec", "-i", str(f.reops_inventory),
                                              "all", "-o", "json", "--no-hub", "--",
                                              ONE_COMMAND],
             note="--no-hub: connects from the CLI process even if a hub runs"),
        Tool("raw asyncssh loop", lambda f, s: [str(MAIN_PY), str(BENCH / "raw_asyncssh.py"),
                                               "--targets", str(f.targets), "--command",
                                               ONE_COMMAND]),
        Tool("ansible -m command", lambda f, s: [
            str(VENV / "bin" / "ansible"), "all", "-i", str(f.ansible_inventory), "-m",
            "command", "-a", ONE_COMMAND, "-f", str(f.n)], env=ansible_env,
            note="forks=N, ControlPersist 1 s, no pipelining (ansible defaults)"),
        Tool("ansible -m raw", lambda f, s: [
            str(VENV / "bin" / "ansible"), "all", "-i", str(f.ansible_inventory), "-m", "raw",
            "-a", ONE_COMMAND, "-f", str(f.n)], env=ansible_env),
        Tool("pyinfra exec", lambda f, s: [
            str(VENV / "bin" / "pyinfra"), str(f.pyinfra_inventory), "exec", "--parallel",
            str(f.n), "-y", "--", ONE_COMMAND], env=peer_env),
        Tool("parallel-ssh", lambda f, s: [bpy, str(BENCH / "py_peers.py"), "pssh",
                                          "--targets", str(f.targets), "--command",
                                          ONE_COMMAND], env=peer_env,
             note="libssh2: does not verify host keys"),
        Tool("fabric ThreadingGroup", lambda f, s: [bpy, str(BENCH / "py_peers.py"), "fabric",
                                                   "--targets", str(f.targets), "--command",
                                                   ONE_COMMAND], env=peer_env),
        Tool("ssh via xargs -P N (cold)", lambda f, s: xargs_argv(f),
             stdin=lambda f: f.addresses_file),
    ]
    if ctl is not None:
        tools.append(Tool(
            "ssh via xargs -P N (warm ControlMaster)",
            lambda f, s: xargs_argv(f, "-o", f"ControlPath={ctl.path}", "-o",
                                    "ControlMaster=no"),
            stdin=lambda f: f.addresses_file, masters=lambda: ctl.pids,
            note="masters already connected; their CPU is counted"))
    if hub is not None:
        tools.append(Tool(
            WARM_HUB, lambda f, s: hub.argv(), env=lambda f, s: hub.env,
            masters=lambda: hub.pids,
            note="a new CLI process per run; the hub (started once, warmed by a first "
            "command) runs the SSH side; its CPU is counted"))
    tools += [
        Tool("reops warm 2nd run (in-process)", lambda f, s: [
            str(MAIN_PY), str(BENCH / "reops_inproc.py"), "warm", "--inventory",
            str(f.reops_inventory), "--command", ONE_COMMAND], inner=True),
        Tool("raw asyncssh warm 2nd run (in-process)", lambda f, s: [
            str(MAIN_PY), str(BENCH / "raw_asyncssh.py"), "--targets", str(f.targets),
            "--command", ONE_COMMAND, "--warm"], inner=True),
    ]
    return tools


WARM_HUB = "reops exec via warm controller (new CLI process)"


def seq_tools() -> list[Tool]:
    bpy = str(BPY)
    steps = str(SEQ_STEPS)
    return [
        Tool(f"reops pipeline ({SEQ_STEPS}x then)", lambda f, s: [
            str(MAIN_PY), str(BENCH / "reops_inproc.py"), "seq", "--inventory",
            str(f.reops_inventory), "--command", STEP_COMMAND, "--steps", steps],
            step=SEQ_STEPS),
        Tool("raw asyncssh loop", lambda f, s: [
            str(MAIN_PY), str(BENCH / "raw_asyncssh.py"), "--targets", str(f.targets),
            "--command", STEP_COMMAND, "--steps", steps], step=SEQ_STEPS),
        Tool("pyinfra deploy (10 ops)", lambda f, s: [
            str(VENV / "bin" / "pyinfra"), str(f.pyinfra_inventory),
            str(write_pyinfra_deploy(s)), "--parallel", str(f.n), "-y", "-vvv"],
            env=peer_env, step=SEQ_STEPS),
        Tool("parallel-ssh (lock-step)", lambda f, s: [
            bpy, str(BENCH / "py_peers.py"), "pssh", "--targets", str(f.targets),
            "--command", STEP_COMMAND, "--steps", steps], env=peer_env, step=SEQ_STEPS),
        Tool("fabric ThreadingGroup (lock-step)", lambda f, s: [
            bpy, str(BENCH / "py_peers.py"), "fabric", "--targets", str(f.targets),
            "--command", STEP_COMMAND, "--steps", steps], env=peer_env, step=SEQ_STEPS),
    ]


def write_pyinfra_deploy(scratch: Path) -> Path:
    p = scratch / "deploy_seq.py"
    if not p.exists():
        lines = ["from pyinfra.operations import server", ""]
        lines += [f"server.shell(name='s{i}', commands=[{STEP_COMMAND.format(step=i)!r}])"
                  for i in range(1, SEQ_STEPS + 1)]
        p.write_text("\n".join(lines) + "\n")
    return p


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Series:
    """All runs of one tool at one N."""

    tool: Tool
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    failure: str | None = None
    max_runs: int = 0

    @property
    def wall(self) -> float | None:
        return statistics.median(self.walls) if self.walls and not self.failure else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(self.cpus) if self.cpus and not self.failure else None


def measure_once(tool: Tool, fleet: Fleet, scratch: Path, keep: set[int],
                 done_runs: list[float]) -> tuple[float, float, str | None]:
    """(wall, cpu, failure) of one run, verified to have reached every host."""
    env = tool.env(fleet, scratch) if tool.env else None
    stdin = tool.stdin(fleet) if tool.stdin else None
    masters = tool.masters() if tool.masters else []
    m0 = sum(proc_cpu(p) for p in masters)
    r = run_process(tool.argv(fleet, scratch), env=env, stdin_path=stdin,
                    keep=keep | set(masters))
    m1 = sum(proc_cpu(p) for p in masters)
    got = reached(r.stdout + "\n" + r.stderr, fleet.port, tool.step)
    want = set(fleet.addresses)
    failure = None
    if r.timed_out:
        failure = f"timed out after {RUN_TIMEOUT:g} s"
    elif not want <= got:
        missed = sorted(want - got, key=fleet.addresses.index)
        names = [fleet.names[fleet.addresses.index(a)] for a in missed]
        text = r.stdout + "\n" + r.stderr
        lines = text.splitlines()
        why = next((ln.strip() for ln in lines if missed[0] in ln and "msg" in ln), "") or \
            next((ln.strip() for ln in lines if missed[0] in ln or names[0] in ln), "")
        if not why:
            why = (r.stderr.strip() or r.stdout.strip())[-200:].replace("\n", " / ")
        failure = (f"run {len(done_runs) + 1}: reached {len(want & got)}/{fleet.n} hosts "
                   f"(rc {r.rc}); missed {', '.join(names[:5])}: {why[:240]}")
    wall, cpu = r.wall, r.cpu + (m1 - m0)
    if tool.inner and failure is None:
        try:
            inner = json.loads(r.stderr.strip().splitlines()[-1])
            wall, cpu = inner["warm_wall"], inner["warm_cpu"]
        except (ValueError, IndexError, KeyError):
            failure = f"no timing line on stderr: {r.stderr[-300:]}"
    return wall, cpu, failure


def measure(tools: list[Tool], fleet: Fleet, repeat: int, scratch: Path, keep: set[int],
            label: str) -> list[Series]:
    """Round-robin: every repetition runs each tool once, so drifting load hits all."""
    series = [Series(t, max_runs=repeat) for t in tools]
    for rep in range(repeat):
        for s in series:
            if s.failure or len(s.walls) >= s.max_runs:
                continue
            wall, cpu, failure = measure_once(s.tool, fleet, scratch, keep, s.walls)
            if failure:
                s.failure = failure
                log(f"{label} N={fleet.n} {s.tool.name}: FAILED {failure}")
                continue
            s.walls.append(wall)
            s.cpus.append(cpu)
            if rep == 0:  # a slow tool gets fewer repeats, within its budget
                s.max_runs = max(1, min(repeat, int(TOOL_BUDGET // max(wall, 1e-3))))
            log(f"{label} N={fleet.n} rep {rep + 1} {s.tool.name}: wall {wall:.3f} s, "
                f"cpu {cpu:.3f} s")
    return series


def startup(scratch: Path) -> dict[str, Any]:
    """Median wall of `reops exec --help` and of importing reops.cli.main (10 runs each)."""
    cases = {
        "reops exec --help": [str(REOPS), "exec", "--help"],
        "python -c 'import reops.cli.main'": [str(MAIN_PY), "-c", "import reops.cli.main"],
        "python -c 'pass' (interpreter alone)": [str(MAIN_PY), "-c", "pass"],
    }
    out: dict[str, Any] = {}
    for name, argv in cases.items():
        walls = []
        for _ in range(STARTUP_RUNS):
            r = run_process(argv, timeout=60)
            if r.rc != 0:
                raise RuntimeError(f"{name} failed: {r.stderr[-300:]}")
            walls.append(r.wall)
        out[name] = statistics.median(walls) * 1000
        log(f"startup {name}: {out[name]:.1f} ms")
    r = run_process([str(MAIN_PY), "-X", "importtime", "-c", "import reops.cli.main"], timeout=60)
    rows = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), int(m.group(1)), len(m.group(3)), m.group(4)))
    top = sorted((r for r in rows if r[2] <= 5), reverse=True)[:12]
    out["importtime_top"] = [{"module": r[3], "cumulative_ms": r[0] / 1000,
                              "self_ms": r[1] / 1000} for r in top]
    return out


def _frame_module(frame: str) -> str:
    """'func (path/to/file.py:12)' -> a short owner: reops, asyncssh, asyncio, import, ..."""
    path = frame[frame.rfind("(") + 1:]
    for key in ("reops/", "asyncssh/", "reactivex/", "asyncio/", "cryptography/", "click/",
                "msgspec", "polars", "rich/"):
        if key in path:
            return key.rstrip("/")
    return "other"


def profile(fleet: Fleet, scratch: Path, keep: set[int]) -> dict[str, Any]:
    """py-spy (GIL samples, i.e. Python CPU) of `reops exec` and the raw loop on `fleet`.

    Samples are put in buckets: start-up imports, then by the innermost package with
    reops frames on the stack counted as reops' own work.
    """
    spy = VENV / "bin" / "py-spy"
    tools = {t.name: t for t in cold_tools(None)}
    out: dict[str, Any] = {}
    for name in ("reops exec (CLI)", "raw asyncssh loop"):
        samples: dict[str, int] = {}
        frames: dict[str, int] = {}
        total = 0
        for i in range(3):
            raw = scratch / f"profile-{i}.txt"
            r = run_process([str(spy), "record", "--gil", "--nonblocking", "-r", "400", "-f",
                             "raw", "-o", str(raw), "--", *tools[name].argv(fleet, scratch)],
                            keep=keep, timeout=300)
            if r.rc != 0 or not raw.exists():
                return {"error": f"py-spy failed (rc {r.rc}): {r.stderr[-300:]}"}
            for line in raw.read_text().splitlines():
                if not line.strip():
                    continue
                stack, _, count = line.rpartition(" ")
                n = int(count)
                total += n
                parts = [f for f in stack.split(";") if f.strip()]
                if any("_find_and_load" in f for f in parts):
                    bucket = "start-up: imports"
                elif not parts:
                    bucket = "other"
                elif any("reops/" in f for f in parts[-6:]):
                    bucket = "reops code (reops frame among the 6 innermost)"
                else:
                    bucket = _frame_module(parts[-1])
                samples[bucket] = samples.get(bucket, 0) + n
                if parts and bucket != "start-up: imports":
                    frames[parts[-1]] = frames.get(parts[-1], 0) + n
        out[name] = {
            "samples": total,
            "buckets": sorted(((k, v / total) for k, v in samples.items()),
                              key=lambda kv: -kv[1]),
            "top": sorted(((k, v / total) for k, v in frames.items()),
                          key=lambda kv: -kv[1])[:15],
        }
        log(f"profile {name}: {total} samples")
    return out


def micro(repeat: int) -> dict[str, Any]:
    r = run_process([str(MAIN_PY), str(BENCH / "micro.py"), "--events", "100000", "--repeat",
                     str(min(repeat, 3)), "--budget", "30"], timeout=600)
    if r.rc != 0:
        raise RuntimeError(f"micro.py failed: {r.stderr[-500:]}")
    res: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    log(f"micro: {res['events_per_s']:,.0f} events/s")
    return res


# -- the venv ----------------------------------------------------------------------------


def ensure_bench_venv() -> None:
    stamp = VENV / ".requirements.txt"
    want = REQUIREMENTS.read_text()
    if BPY.exists() and stamp.exists() and stamp.read_text() == want:
        return
    log(f"installing the peers into {VENV}")
    if not BPY.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True,
                       timeout=300)
    # a venv made from a venv python has no pip only when ensurepip is missing: say so
    subprocess.run([str(BPY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True,
                   timeout=600)
    subprocess.run([str(BPY), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                   check=True, timeout=1200)
    stamp.write_text(want)


def versions() -> dict[str, str]:
    r = subprocess.run([str(BPY), "-m", "pip", "list", "--format=json"], capture_output=True,
                       text=True, timeout=120)
    wanted = {"ansible-core", "pyinfra", "parallel-ssh", "fabric", "paramiko", "ssh2-python",
              "gevent"}
    got = {p["name"].lower(): p["version"] for p in json.loads(r.stdout or "[]")}
    out = {k: got[k] for k in sorted(wanted) if k in got}
    r = subprocess.run([str(MAIN_PY), "-m", "pip", "list", "--format=json"],
                       capture_output=True, text=True, timeout=120)
    got = {p["name"].lower(): p["version"] for p in json.loads(r.stdout or "[]")}
    for k in ("reops", "asyncssh", "reactivex", "polars"):
        if k in got:
            out[k] = got[k]
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
    out["openssh"] = ssh.stderr.strip()
    return out


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    git = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "reops"],
                           capture_output=True, text=True, timeout=30).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return {"reops commit": git[:100] + (f" + uncommitted changes in {', '.join(changed)}"
                                         if changed else ""),
            "kernel": platform.release(), "cpu": cpu, "cores": str(os.cpu_count()),
            "memory": mem, "python": platform.python_version(),
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


# -- the report ---------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def table(series: list[Series], base: Series, warm: bool = False) -> list[str]:
    head = ("| tool | runs | median wall s | wall ÷ raw | client CPU s | CPU ÷ raw | note |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---|"]
    for s in series:
        if s.failure:
            rows.append(f"| {s.tool.name} | {len(s.walls)} | FAILED | | | | "
                        f"{s.failure.replace('|', '/')} |")
            continue
        rows.append(f"| {s.tool.name} | {len(s.walls)} | {fmt(s.wall)} | "
                    f"{fmt(ratio(s.wall, base.wall), 2)} | {fmt(s.cpu)} | "
                    f"{fmt(ratio(s.cpu, base.cpu), 2)} | {s.tool.note} |")
    return rows


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def find(series: list[Series], name: str) -> Series:
    return next(s for s in series if s.tool.name == name)


def report(args: argparse.Namespace, info: dict[str, Any], cold: dict[int, list[Series]],
           seq: list[Series] | None, seq_n: int, start: dict[str, Any] | None,
           events: dict[str, Any] | None, took: float,
           prof: dict[str, Any] | None = None) -> str:
    big = max(cold)
    L: list[str] = ["# reops benchmark results", ""]
    L += [f"Generated by `bench/run.py --sizes {args.sizes} --repeat {args.repeat}"
          f"{' --quick' if args.quick else ''}` on {info['date']} in {took / 60:.1f} min.", ""]
    L += ["## Machine", ""]
    L += [f"- {k}: {v}" for k, v in info["machine"].items()]
    L += [f"- load average at end: {info['load_end']}", ""]
    L += ["Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), ""]
    L += ["## How", "",
          "A lab of real OpenSSH sshd hosts on loopback (one sshd per 127.0.3.x address, "
          "ed25519 host and client keys, strict known_hosts for every tool that checks host "
          "keys). Each tool runs `printenv SSH_CONNECTION` on the first N hosts; a run counts "
          "only if every one of the N server addresses appears in the tool's output. "
          "Tools run round-robin (each repetition runs every tool once), so load drifting on "
          "this shared 2-core box hits all of them alike. Wall = whole process, start-up "
          "included. Client CPU = user+sys of the tool's process tree (RUSAGE_CHILDREN "
          "deltas; ansible's ControlPersist masters are reaped and counted; the warm "
          "ControlMasters' CPU is read from /proc). The sshd side runs on the same box and "
          "is not counted. Ratios are median ÷ median of the raw asyncssh loop in the same "
          "run. A slow tool gets fewer repetitions (it has a "
          f"{TOOL_BUDGET:g} s budget per N), so its 'runs' may be below {args.repeat}.", ""]
    L += ["Warm rows: the same command twice from one Python process over the connections "
          "of the first; the second run's wall and CPU (measured in-process) are shown.", ""]
    for n, series in sorted(cold.items()):
        base = find(series, "raw asyncssh loop")
        L += [f"## N = {n} hosts", ""]
        L += table(series, base)
        L += [""]
    if seq is not None:
        L += [f"## {SEQ_STEPS} sequential commands on {seq_n} hosts (one connection per host)",
              "", "Whole process (connect + 10 commands per host). reops: "
              "`exec_(...) | then(exec_, ...)` x10 in one pipeline (each host moves on alone); "
              "raw: each host runs its 10 commands over its connection; pyinfra / "
              "parallel-ssh / fabric: 10 lock-step group runs. Ratios to the raw loop.", ""]
        L += table(seq, find(seq, "raw asyncssh loop"))
        L += [""]
    if start is not None:
        L += ["## Start-up", "", f"Median of {STARTUP_RUNS} runs each.", "",
              "| command | median ms |", "|---|---:|"]
        L += [f"| `{k}` | {v:.1f} |" for k, v in start.items() if k != "importtime_top"]
        L += ["", "Largest imports of `import reops.cli.main` (`python -X importtime`, "
              "cumulative):", "", "| module | cumulative ms | self ms |", "|---|---:|---:|"]
        L += [f"| {r['module']} | {r['cumulative_ms']:.1f} | {r['self_ms']:.1f} |"
              for r in start["importtime_top"]]
        L += [""]
    if events is not None:
        L += ["## Events through partition + table sink", "",
              f"{events['events']:,} synthetic Results, `Stream(reactivex.from_iterable(...))` "
              "→ `partition(stream, successful)`, both branches subscribed → `to_table`; "
              f"median of {events['runs']} run(s).", "",
              "| stage | events/s |", "|---|---:|",
              f"| partition + table (total) | {events['events_per_s']:,.0f} |",
              f"| partition alone | {events['partition_events_per_s']:,.0f} |",
              f"| to_table alone | {events['table_events_per_s']:,.0f} |", ""]
    # targets
    s = cold[big]
    reops_, raw = find(s, "reops exec (CLI)"), find(s, "raw asyncssh loop")
    ans, pyi = find(s, "ansible -m command"), find(s, "pyinfra exec")
    warm = find(s, "reops warm 2nd run (in-process)")
    cm = next((x for x in s if x.tool.name.endswith("(warm ControlMaster)")), None)
    rows = []

    def target(text: str, value: float | None, limit: float, higher: bool = False,
               unit: str = "×") -> None:
        ok = None if value is None else (value >= limit if higher else value <= limit)
        shown = "—" if value is None else (f"{value:,.0f}" if unit != "×" else f"{value:.2f}×")
        rows.append(f"| {text} | {shown} | {verdict(ok)} |")

    at = f"N={big}" + ("" if big == 200 else " (target is stated for N=200)")
    target(f"reops exec wall ÷ raw asyncssh, {at}: ≤ 1.1×", ratio(reops_.wall, raw.wall), 1.1)
    target(f"ansible -m command wall ÷ reops exec, {at}: ≥ 10×", ratio(ans.wall, reops_.wall),
           10, higher=True)
    target(f"reops exec client CPU ÷ raw asyncssh, {at}: ≤ 1.2×", ratio(reops_.cpu, raw.cpu),
           1.2)
    target(f"reops exec client CPU ÷ pyinfra, {at}: ≤ 0.6×", ratio(reops_.cpu, pyi.cpu), 0.6)
    if seq is not None:
        target(f"{SEQ_STEPS} commands on {seq_n} hosts, reops ÷ raw: ≤ 1.1×",
               ratio(find(seq, f"reops pipeline ({SEQ_STEPS}x then)").wall,
                     find(seq, "raw asyncssh loop").wall), 1.1)
    target(f"warm 2nd command, reops ÷ ssh ControlMaster xargs, {at}: ≤ 1.5×",
           ratio(warm.wall, cm.wall if cm else None), 1.5)
    via_hub = next((x for x in s if x.tool.name == WARM_HUB), None)
    target(f"reops exec via warm controller (new CLI) ÷ ssh ControlMaster xargs, {at}: ≤ 1.0×",
           ratio(via_hub.wall if via_hub else None, cm.wall if cm else None), 1.0)
    if start is not None:
        target("`reops exec --help` start-up ms: ≤ 150", start["reops exec --help"],
               STARTUP_TARGET_MS, unit="ms")
    if events is not None:
        target("Result events/s through partition + table: ≥ 200,000",
               events["events_per_s"], EVENTS_TARGET, higher=True, unit="ev/s")
    L += ["## Targets (issue 2)", "", "| target | measured | verdict |", "|---|---:|---|"]
    L += rows
    L += [""]
    if prof:
        L += [f"## Profile at N={big} (py-spy --gil, 3 runs each)", ""]
        if "error" in prof:
            L += [prof["error"], ""]
        for name, p in prof.items():
            if name == "error":
                continue
            L += [f"**{name}** ({p['samples']} samples)", "", "| where | share |", "|---|---:|"]
            L += [f"| {k} | {v:.1%} |" for k, v in p["buckets"]]
            L += ["", "| innermost frame (outside imports) | share |", "|---|---:|"]
            L += [f"| `{k.replace('|', '/')}` | {v:.1%} |" for k, v in p["top"]]
            L += [""]
    if args.notes and Path(args.notes).exists():
        L += [Path(args.notes).read_text().strip(), ""]
    return "\n".join(L) + "\n"


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="host counts [default: 10,50,200]")
    p.add_argument("--repeat", type=int, default=None, help="runs per tool [default: 5]")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: sizes 10, 2 repeats, unless given")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--first-address", default=FIRST_ADDRESS)
    p.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    p.add_argument("--notes", default=str(BENCH / "NOTES.md"),
                   help="a Markdown file appended to the report (analysis, profiles)")
    p.add_argument("--profile", action="store_true",
                   help="also py-spy `reops exec` and the raw loop at the largest N")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: "
                   "cold,seq,startup,micro")
    args = p.parse_args()
    args.sizes = args.sizes or ("10" if args.quick else "10,50,200")
    args.repeat = args.repeat or (2 if args.quick else 5)
    sizes = sorted({int(x) for x in args.sizes.split(",")})
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.perf_counter()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    ensure_bench_venv()
    become_subreaper()
    sys.path.insert(0, str(REPO))
    from reops.lab.fleet import Lab

    scratch = Path(tempfile.mkdtemp(prefix="reops-bench-"))
    (scratch / "home").mkdir()
    lab = Lab(scratch / "lab", hosts=max(sizes), base_port=args.port,
              first_address=args.first_address)
    info: dict[str, Any] = {"date": date, "machine": machine(), "versions": versions()}
    cold: dict[int, list[Series]] = {}
    seq: list[Series] | None = None
    seq_n = min(SEQ_HOSTS, max(sizes))
    start = events = None
    prof: dict[str, Any] | None = None
    ctl: ControlMasters | None = None
    hub: WarmHub | None = None
    try:
        log(f"lab: {max(sizes)} hosts from {args.first_address} port {args.port}")
        li = lab.up()
        # the lab's sshd (and anything else alive now) are never reaped as leftovers
        keep = {pid for pid in lab.pids.values() if pid} | set(children())
        PROTECTED.update(keep)
        names, addrs = list(li.hosts), list(li.hosts.values())

        def fleet(n: int) -> Fleet:
            f = Fleet(n, names[:n], addrs[:n], li.port, li.user, str(li.key),
                      str(li.known_hosts), scratch / f"n{n}")
            f.write()
            return f

        if "startup" not in skip:
            start = startup(scratch)
        if "micro" not in skip:
            events = micro(args.repeat)
        if "seq" not in skip:
            seq = measure(seq_tools(), fleet(seq_n), args.repeat, scratch, keep, "seq")
        if "cold" not in skip:
            for n in sizes:
                f = fleet(n)
                ctl = ControlMasters(f, scratch, keep)
                took = ctl.start()
                log(f"N={n}: {n} ControlMasters up in {took:.2f} s")
                hub = WarmHub(f, scratch)
                took = hub.start()
                log(f"N={n}: hub up, its pool warmed by a first exec in {took:.2f} s")
                cold[n] = measure(cold_tools(ctl, hub), f, args.repeat, scratch,
                                  keep | set(ctl.pids) | set(hub.pids), "cold")
                ctl.stop()
                ctl = None
                hub.stop()
                hub = None
                if args.profile and n == max(sizes):
                    prof = profile(f, scratch, keep)
    finally:
        if ctl is not None:
            ctl.stop()
        if hub is not None:
            hub.stop()
        lab.down()
        PROTECTED.clear()
        reap_leftovers(set(), timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    took = time.perf_counter() - t_start
    if not cold:
        log("no fan-out measured (--skip cold): not writing a report")
        print(json.dumps({"startup": start, "micro": events}, indent=1, default=str))
        return 0
    text = report(args, info, cold, seq, seq_n, start, events, took, prof)
    args.out.write_text(text)
    log(f"wrote {args.out} ({took / 60:.1f} min)")
    print(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
