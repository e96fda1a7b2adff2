"""`reops exec` through a running hub's warm SSH pool: real hub process, real sshd lab.

Each CLI call here is a NEW process, as a user's would be; the hub keeps the connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reops.control.client import ping_sync, request_sync
from reops.lab.fleet import LabInfo

#: bound on waiting for a condition (never a pass/fail timing)
DEADLINE_S = 60.0


class Hub:
    """A `reops hub` process with its own home; CLI calls get the same environment."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.control = self.home / "run" / "hub.sock"
        self.env = {**os.environ, "REOPS_HOME": str(self.home),
                    "REOPS_CONFIG": str(root / "no-config.toml"),
                    "REOPS_HUB_BIND": "tcp://127.0.0.1:*"}
        for var in ("REOPS_NO_HUB", "REOPS_USE_HUB", "REOPS_HUB_CONTROL"):
            self.env.pop(var, None)
        self.log = root / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Hub:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "reops.hub"],
                                         env={**self.env, **(env or {})},
                                         stdout=out, stderr=subprocess.STDOUT)
        ping_sync(self.control, timeout=DEADLINE_S, wait=True)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pool(self) -> dict[str, Any]:
        info: dict[str, Any] = request_sync(self.control, "ssh.pool", timeout=DEADLINE_S)
        return info

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                              text=True, env={**self.env, **(env or {})}, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "reops", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path).start()
    try:
        yield h
    finally:
        h.stop()


def results(proc: subprocess.CompletedProcess[str] | tuple[str, str]) -> dict[str, Any]:
    """host -> Result (as a dict) from `-o json` output."""
    out = proc[0] if isinstance(proc, tuple) else proc.stdout
    outcome = json.loads(out)
    found = {r["host"]: r for r in outcome["successful"]}
    for rs in outcome["failure"].values():
        found.update({r["host"]: r for r in rs})
    return found


def remote_pids(marker: str) -> list[int]:
    """Pids of this machine's processes whose command line is exactly `sleep <marker>`
    (the lab's sshd hosts run on this machine)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", marker.encode()]:
                pids.append(int(d.name))
    return pids


def wait_for(cond: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_second_exec_reuses_the_hubs_connections(hub: Hub, lab: LabInfo) -> None:
    inv = str(lab.inventory)
    first = hub.cli("exec", "-i", inv, "-o", "json", "all", "--", "echo $SSH_CONNECTION")
    assert first.returncode == 0, first.stderr
    assert hub.pool()["connections"] == len(lab.hosts)
    second = hub.cli("exec", "-i", inv, "-o", "json", "all", "--", "echo $SSH_CONNECTION")
    assert second.returncode == 0, second.stderr
    a, b = results(first), results(second)
    assert sorted(a) == sorted(lab.hosts)
    # the client end (address, port) names the TCP connection: the same on both runs
    assert {h: r["out"] for h, r in a.items()} == {h: r["out"] for h, r in b.items()}
    assert hub.pool()["connections"] == len(lab.hosts)
    assert hub.pool()["requests"] == 2 * len(lab.hosts)

    # --no-hub (and REOPS_NO_HUB=1) connect from the CLI process: new connections
    for how in (("--no-hub",), ()):
        env = {} if how else {"REOPS_NO_HUB": "1"}
        direct = hub.cli("exec", "-i", inv, "-o", "json", *how, "all", "--",
                         "echo $SSH_CONNECTION", env=env)
        assert direct.returncode == 0, direct.stderr
        c = results(direct)
        assert all(c[h]["out"] != a[h]["out"] for h in lab.hosts)
    assert hub.pool()["requests"] == 2 * len(lab.hosts)


def comparable(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in ("started_at", "duration_s")}


def test_same_results_as_direct_ops_parsers_and_output_cap(hub: Hub, lab: LabInfo) -> None:
    inv = str(lab.inventory)
    # a failing host, stderr, a cut output (the CLI's max_output travels with the request)
    cmd = ("head -c 5000 /dev/zero | tr '\\0' x; echo; echo oops >&2; "
           f"case \" $SSH_CONNECTION \" in *\" {lab.hosts['web3']} \"*) exit 3;; esac")
    env = {"REOPS_MAX_OUTPUT": "1000"}
    via_hub = hub.cli("exec", "-i", inv, "-o", "json", "web*", "--", cmd, env=env)
    direct = hub.cli("exec", "--no-hub", "-i", inv, "-o", "json", "web*", "--", cmd, env=env)
    assert via_hub.returncode == direct.returncode == 1
    h, d = results(via_hub), results(direct)
    assert {k: comparable(v) for k, v in h.items()} == {k: comparable(v) for k, v in d.items()}
    assert len(h["web1"]["out"]) < 1500  # cut to the CLI's cap, not the hub's default
    assert h["web3"]["status"] == "failed"
    # an op command: its parser runs in the CLI on the hub's raw output
    facts_hub = hub.cli("facts", "-i", inv, "-o", "json", "db1")
    facts_direct = hub.cli("facts", "--no-hub", "-i", inv, "-o", "json", "db1")
    assert facts_hub.returncode == 0, facts_hub.stderr
    fh, fd = results(facts_hub)["db1"], results(facts_direct)["db1"]
    assert isinstance(fh["data"], dict) and fh["data"]
    assert set(fh["data"]) == set(fd["data"])


def test_stream_lines_arrive_in_order_per_host(hub: Hub, lab: LabInfo) -> None:
    done = hub.cli("exec", "-i", str(lab.inventory), "--stream", "all", "--",
                   "for i in $(seq 1 300); do echo line$i; done")
    assert done.returncode == 0, done.stderr
    seen: dict[str, list[int]] = {}
    for m in re.finditer(r"^\s*(\S+)\s*│\s*line(\d+)\s*$", done.stdout, re.M):
        seen.setdefault(m.group(1), []).append(int(m.group(2)))
    assert sorted(seen) == sorted(lab.hosts)
    assert all(nums == list(range(1, 301)) for nums in seen.values())
    assert hub.pool()["requests"] == len(lab.hosts)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_cancels_only_that_request(hub: Hub, lab: LabInfo, sig: int, code: int
                                          ) -> None:
    inv = str(lab.inventory)
    n = len(lab.hosts)
    other = hub.popen("exec", "-i", inv, "-o", "json", "all", "--",
                      "sleep 6.125; echo other-done")
    victim = hub.popen("exec", "-i", inv, "-o", "json", "all", "--", "sleep 600.25")
    try:
        wait_for(lambda: len(remote_pids("600.25")) == n, "the victim's commands to start")
        wait_for(lambda: len(remote_pids("6.125")) == n, "the other commands to start")
        victim.send_signal(sig)
        out, err = victim.communicate(timeout=DEADLINE_S)
        assert victim.returncode == code, err
        interrupted = results((out, err))  # the per-host summary: every host, none ok
        assert sorted(interrupted) == sorted(lab.hosts)
        assert all(r["status"] != "ok" for r in interrupted.values())
        wait_for(lambda: not remote_pids("600.25"), "the hub to kill the victim's commands")
        assert other.poll() is None  # still running, untouched
        other_out, other_err = other.communicate(timeout=DEADLINE_S)
        assert other.returncode == 0, other_err
        assert all(r["out"] == "other-done\n" for r in results((other_out, "")).values())
    finally:
        for p in (victim, other):
            if p.poll() is None:
                p.kill()
                p.wait()
        kill_pids(remote_pids("600.25"))


def test_retry_and_rolling_work_through_the_hub(hub: Hub, lab: LabInfo) -> None:
    done = hub.cli("exec", "-i", str(lab.inventory), "-o", "json", "--rolling", "7",
                   "--retry", "2", "all", "--", "echo $SSH_CONNECTION")
    assert done.returncode == 0, done.stderr
    got = results(done)
    assert sorted(got) == sorted(lab.hosts)
    assert all(lab.hosts[h] in r["out"].split() for h, r in got.items())
    assert hub.pool()["requests"] == len(lab.hosts)  # every host went through the hub


def test_hub_killed_mid_command_reports_lost_and_never_reruns(hub: Hub, lab: LabInfo
                                                                ) -> None:
    n = len(lab.hosts)
    cli = hub.popen("exec", "-i", str(lab.inventory), "-o", "json", "all", "--",
                    "sleep 600.5")
    try:
        wait_for(lambda: len(remote_pids("600.5")) == n, "the commands to start")
        assert hub.proc is not None
        hub.proc.kill()  # SIGKILL: no goodbye on the control socket
        out, err = cli.communicate(timeout=DEADLINE_S)  # returns: no hang
        assert cli.returncode == 1, err
        got = results((out, err))
        assert sorted(got) == sorted(lab.hosts)
        assert {r["status"] for r in got.values()} == {"lost"}
        assert "may have run" in got["web1"]["err"]
        # not re-run anywhere (direct SSH would have started a second copy)
        assert len(remote_pids("600.5")) == n
        # the next command finds no hub (a stale socket file): direct SSH, at once
        after = hub.cli("exec", "-i", str(lab.inventory), "-o", "json", "web1", "--", "true")
        assert after.returncode == 0, after.stderr
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        kill_pids(remote_pids("600.5"))


def test_a_wedged_hub_fails_hosts_at_once_instead_of_hanging(hub: Hub, lab: LabInfo) -> None:
    """A hub that accepts connections but never answers (SIGSTOP): hosts unreachable."""
    assert hub.proc is not None
    hub.proc.send_signal(signal.SIGSTOP)
    try:
        done = hub.cli("exec", "-i", str(lab.inventory), "-o", "json", "web*", "--", "true")
    finally:
        hub.proc.send_signal(signal.SIGCONT)
    assert done.returncode == 1, done.stderr
    got = results(done)
    assert {r["status"] for r in got.values()} == {"unreachable"}
    assert "does not answer" in got["web1"]["err"]


def test_keyless_login_through_the_hub_says_whose_agent(hub: Hub, lab: LabInfo,
                                                        tmp_path: Path) -> None:
    """The hub logs in with its own ssh-agent; a CLI whose agent holds the key is told so."""
    text = lab.inventory.read_text()
    assert 'key = "id_ed25519"' in text
    keyless = lab.inventory.parent / "inventory-keyless-warm.toml"
    keyless.write_text(text.replace('key = "id_ed25519"', ""))
    agent = subprocess.run(["ssh-agent", "-s", "-a", str(tmp_path / "agent.sock")],
                           capture_output=True, text=True, check=True)
    pid = int(re.search(r"SSH_AGENT_PID=(\d+)", agent.stdout).group(1))  # type: ignore[union-attr]
    try:
        env = {"SSH_AUTH_SOCK": str(tmp_path / "agent.sock")}
        subprocess.run(["ssh-add", str(lab.key)], env={**os.environ, **env}, check=True,
                       capture_output=True)
        direct = hub.cli("exec", "--no-hub", "-i", str(keyless), "-o", "json", "web1",
                         "--", "true", env=env)
        assert direct.returncode == 0, direct.stdout + direct.stderr
        via = hub.cli("exec", "-i", str(keyless), "-o", "json", "web1", "--", "true", env=env)
        r = results(via)["web1"]
        assert r["status"] == "unreachable"
        assert "the hub logs in with its own ssh-agent" in r["err"]
        assert "--no-hub" in r["err"]
    finally:
        os.kill(pid, signal.SIGTERM)
        keyless.unlink(missing_ok=True)
