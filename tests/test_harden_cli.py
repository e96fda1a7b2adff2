"""The launcher under partial failure (issue 8): signals, settings, limits, its home.

Real `reops` processes against real sshd hosts; every wait is for an event or a condition
with a bounded deadline.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from reops import exec_, run
from reops.lab.fleet import LabInfo

#: upper bound for a condition we wait for (never a pass/fail margin)
DEADLINE_S = 60.0


def reops_popen(*args: str, env: dict[str, str] | None = None, **kw: object
                ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "reops", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **kw)  # type: ignore[call-overload]


def read_until(p: subprocess.Popen[str], want: int, needle: str) -> str:
    """Read p's stdout until `needle` was seen `want` times (bounded); what was read.

    Raw reads on the fd: a buffered readline would hide data from the selector.
    """
    assert p.stdout is not None
    fd = p.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    seen = ""
    end = time.monotonic() + DEADLINE_S
    while seen.count(needle) < want:
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            p.kill()
            raise AssertionError(f"no {needle!r} x{want} within {DEADLINE_S} s: {seen}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"reops ended early: {seen}\n{p.communicate()[1]}")
        seen += chunk.decode(errors="replace")
    return seen


def wait_gone(lab: LabInfo, pattern: str) -> str:
    """Wait (bounded) until no process on the lab host matches `pattern`; what is left."""
    host = lab.as_hosts()["web1"]
    end = time.monotonic() + DEADLINE_S
    left = "?"
    while time.monotonic() < end:
        left = run(exec_(host, f"pgrep -fa '{pattern}' || true")).successful[0].out
        if not left:
            return ""
        time.sleep(0.2)  # polling a condition with a deadline, not a pass/fail margin
    return left


def test_sigterm_kills_remote_commands_and_exits_143(lab: LabInfo) -> None:
    tag = uuid.uuid4().hex
    nap = f"sleep 120.{os.getpid()}{tag[:6].translate(str.maketrans('abcdef', '123456'))}"
    marker = f"/tmp/reops-term-{tag}"
    cmd = f'echo started; {nap}; echo done >> {marker}-$(echo "$SSH_CONNECTION" | cut -d" " -f3)'
    p = reops_popen("exec", "-i", str(lab.inventory), "web1,web2,web3", "--stream", "--", cmd)
    try:
        before = read_until(p, 3, "started")  # every remote command has started
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=DEADLINE_S)
        out = before + out
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert "Traceback" not in err and "SIGTERM" in err, err
    assert "3 hosts" in out and "terminated" in out, out  # the partial outcome's summary
    pattern = f"[s]{nap[1:]}"
    assert wait_gone(lab, pattern) == "", "remote commands still running after SIGTERM"
    written = run(exec_(lab.as_hosts()["web1"], f"ls {marker}-* 2>/dev/null | wc -l"))
    assert written.successful[0].out.strip() == "0"


def reops_run(*args: str, env: dict[str, str] | None = None,
              preexec_fn: Callable[[], None] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=DEADLINE_S, env={**os.environ, **(env or {})},
                          preexec_fn=preexec_fn)


def test_zero_forks_from_env_is_a_usage_error_naming_the_variable(lab: LabInfo,
                                                                  tmp_path: Path) -> None:
    p = reops_run("exec", "-i", str(lab.inventory), "web1", "--", "true",
                  env={"REOPS_FORKS": "0", "REOPS_HOME": str(tmp_path / "home")})
    assert p.returncode == 2, p.stderr
    [line] = p.stderr.strip().splitlines()  # one line: where it came from, what is accepted
    assert "REOPS_FORKS" in line and ">= 1" in line, line


def test_bad_config_file_value_names_file_table_and_key(lab: LabInfo, tmp_path: Path
                                                        ) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[ssh]\nconnect_timeout = 0\n")
    p = reops_run("exec", "-i", str(lab.inventory), "web1", "--", "true",
                  env={"REOPS_CONFIG": str(config), "REOPS_HOME": str(tmp_path / "home")})
    assert p.returncode == 2, p.stderr
    [line] = p.stderr.strip().splitlines()
    assert f"{config}: [ssh] connect_timeout = 0" in line and "> 0" in line, line


def _soft_nofile(limit: int) -> Callable[[], None]:
    def lower() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return lower


def _hard_nofile(limit: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return lower


def open_files_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) 'Max open files' from /proc/<pid>/limits."""
    for row in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if row.startswith("Max open files"):
            soft, hard = row.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' row")


def test_cli_raises_the_soft_open_file_limit_to_the_hard_one(lab: LabInfo) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = 256
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip(f"hard open-file limit {hard} leaves nothing to raise")
    nap = f"sleep 120.{os.getpid()}7"
    p = reops_popen("exec", "-i", str(lab.inventory), "web1", "--stream", "--",
                    f"echo started; {nap}", preexec_fn=_soft_nofile(low))
    try:
        read_until(p, 1, "started")  # reops is up and running the command
        soft_now, hard_now = open_files_limits(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=DEADLINE_S)
    assert hard_now == hard and soft_now > low and soft_now == min(
        hard, int(Path("/proc/sys/fs/nr_open").read_text())), (soft_now, hard_now)
    assert p.returncode == 143


def test_forks_stay_below_the_open_file_limit_with_a_note(lab: LabInfo) -> None:
    p = reops_run("exec", "-i", str(lab.inventory), "web1,web2", "--", "true",
                  preexec_fn=_hard_nofile(128))
    assert p.returncode == 0, p.stderr
    assert "reops: note: forks 256 lowered to 32: the open-file limit (ulimit -n) is 128" \
        in p.stderr, p.stderr


def test_reops_home_is_made_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first thing made under home (here the key store) must not leave home 0755."""
    from reops.core.settings import home
    from reops.hub.keystore import KeyStore

    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "fresh" / "home"))
    old = os.umask(0o022)  # the usual umask: what mkdir(parents=True) would give home
    try:
        KeyStore(home() / "keys")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh" / "home").stat().st_mode) == 0o700


def test_an_open_reops_home_gets_a_warning_and_is_left_alone(tmp_path: Path) -> None:
    open_home = tmp_path / "home"
    open_home.mkdir()
    open_home.chmod(0o755)
    code = "from reops.core.settings import home; home(); home()"
    p = subprocess.run([sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=DEADLINE_S,
                       env={**os.environ, "REOPS_HOME": str(open_home)})
    assert p.returncode == 0, p.stderr
    [warning] = p.stderr.splitlines()  # once, however often home() is asked for
    assert str(open_home) in warning and f"chmod 700 {open_home}" in warning
    assert stat.S_IMODE(open_home.stat().st_mode) == 0o755


def test_cli_retry_never_reruns_a_command_that_started(lab: LabInfo) -> None:
    """`--retry` re-runs only hosts never reached: a failing command ran once."""
    marker = f"/tmp/reops-cli-retry-{uuid.uuid4().hex}"
    p = reops_run("exec", "-i", str(lab.inventory), "web1,web2", "--retry", "2", "-o", "json",
                  "--", f'echo x >> {marker}-$(echo "$SSH_CONNECTION" | cut -d" " -f3); exit 1')
    assert p.returncode == 1, p.stderr
    hosts = lab.as_hosts()
    files = " ".join(f"{marker}-{hosts[n].address}" for n in ("web1", "web2"))
    counts = run(exec_(hosts["web1"], f"cat {files} | wc -l; rm -f {files}"))
    assert counts.successful[0].out.strip() == "2"  # once per host, not 3 times


def test_settings_errors_name_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Every way a setting arrives is checked: file, variable, and code (`configure`)."""
    from reops.core.settings import ConfigError, Settings, load_settings

    config = tmp_path / "config.toml"
    config.write_text('[ssh]\nhost_key_checking = "maybe"\n')
    monkeypatch.setenv("REOPS_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"\[ssh\] host_key_checking = 'maybe': .*'strict'"):
        load_settings()
    config.write_text("[ssh\n")
    with pytest.raises(ConfigError, match=f"{config}: not valid TOML"):
        load_settings()
    config.write_text("[ssh]\nforks = 10\n")
    monkeypatch.setenv("REOPS_COMMAND_TIMEOUT", "-5")  # the variable wins, and is named
    with pytest.raises(ConfigError, match=r"^REOPS_COMMAND_TIMEOUT='-5': command_timeout"):
        load_settings()
    monkeypatch.delenv("REOPS_COMMAND_TIMEOUT")
    assert load_settings().forks == 10
    with pytest.raises(ConfigError, match=r"^forks=0: forks must be `int` >= 1"):
        Settings().with_(forks=0)


FLOW = '''
from reops import exec_, inventory, pretty, run
from reops.flows import flow


@flow
def nap(inv: str, cmd: str) -> object:
    """Run CMD on web1 and web2, streaming its lines."""
    return run(exec_(inventory(inv).select("web1,web2"), cmd, lines=True) | pretty())
'''


def test_sigterm_to_a_saved_flow_kills_its_remote_commands_and_exits_143(
        lab: LabInfo, tmp_path: Path) -> None:
    """`reops run` takes the same SIGTERM path as `reops exec`."""
    tag = uuid.uuid4().hex[:6].translate(str.maketrans("abcdef", "123456"))
    nap = f"sleep 130.{os.getpid()}{tag}"
    flow = tmp_path / "napflow.py"
    flow.write_text(FLOW)
    p = reops_popen("run", str(flow), "--inv", str(lab.inventory), "--cmd",
                    f"echo started; {nap}")
    try:
        read_until(p, 2, "started")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=DEADLINE_S)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert "Traceback" not in err, err
    assert wait_gone(lab, f"[s]{nap[1:]}") == "", "remote commands still running after SIGTERM"
