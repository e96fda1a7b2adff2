"""sudo with a password: right → root, wrong → a clear failure at once, and the password
on no command line, in no output.

Real parts: the lab's `reops-lab-pw` login, whose sudo (the machine's real sudo) needs the
lab's random password (`info.become_pass_file`), asked every time, one try.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from reops import run
from reops.core.model import Host, Hosts, Outcome
from reops.core.secrets import Secret, SecretError, from_file
from reops.core.settings import ConfigError, Settings, load_settings
from reops.lab.fleet import LabInfo
from reops.ops.base import Op
from reops.ops.shell import exec_
from reops.streams.source import source

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab has sudo only as root")

FAST = Settings(connect_timeout=30.0, command_timeout=120.0)
#: how long to wait for a condition (a bound, never a pass/fail timing)
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def password(lab: LabInfo) -> str:
    assert lab.become_pass_file is not None
    return lab.become_pass_file.read_text().strip()


def pw_hosts(lab: LabInfo, *names: str) -> Hosts:
    """Lab hosts logging in as the user whose sudo needs the password."""
    assert lab.become_user is not None
    return Hosts(msgspec.structs.replace(h, user=lab.become_user) for h in lab.as_hosts()
                 if not names or h.name in names)


def on(hosts: Hosts, op: Op, secret: Secret | None) -> Outcome:
    return run(source(hosts, op, via="ssh", settings=FAST.with_(become_pass=secret)))


def reops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


# -- over SSH on the lab ------------------------------------------------------------------

def test_right_password_gives_root_and_keeps_the_ops_stdin(lab: LabInfo, password: str
                                                          ) -> None:
    out = on(pw_hosts(lab, "web1", "web2"), exec_("id -u; cat", sudo=True, stdin="data\n"),
             Secret(password))
    assert out.ok, out.results
    assert [r.out for r in out.results] == ["0\ndata\n", "0\ndata\n"]


def test_without_a_password_sudo_n_fails_at_once(lab: LabInfo) -> None:
    out = on(pw_hosts(lab, "web1"), exec_("id -u", sudo=True), None)
    [r] = out.results
    assert r.status == "failed" and "a password is required" in r.err


def test_wrong_password_is_a_clear_failure(lab: LabInfo) -> None:
    out = on(pw_hosts(lab, "web1", "db1"), exec_("id -u; cat", sudo=True, stdin="x\ny\nz\n"),
             Secret("not-the-password"))
    assert {r.host: (r.status, r.err) for r in out.results} == {
        "web1": ("failed", "sudo: incorrect password on web1\n"),
        "db1": ("failed", "sudo: incorrect password on db1\n"),
    }


def test_passwordless_sudo_never_feeds_the_password_to_the_command(lab: LabInfo,
                                                                   password: str) -> None:
    web1 = Hosts(h for h in lab.as_hosts() if h.name == "web1")
    out = on(web1, exec_("id -u; cat", sudo=True, stdin="in\n"), Secret(password))
    assert [r.out for r in out.results] == ["0\nin\n"]


def test_become_user_with_a_password(lab: LabInfo, password: str) -> None:
    out = on(pw_hosts(lab, "web1"), exec_("id -un", become_user=lab.user), Secret(password))
    assert [r.out for r in out.results] == [f"{lab.user}\n"]


def _cmdlines() -> Iterator[tuple[int, bytes]]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(entry.name), Path(f"/proc/{entry.name}/cmdline").read_bytes()


def test_the_password_is_in_no_process_argv(lab: LabInfo, password: str) -> None:
    """While a command runs under sudo on the lab, scan every process's argv."""
    marker = f"{os.getpid() % 1000 + 1000}.{time.monotonic_ns() % 997}"  # a unique sleep
    done: list[Outcome] = []
    worker = threading.Thread(target=lambda: done.append(
        on(pw_hosts(lab, "web1"), exec_(f"sleep {marker}", sudo=True), Secret(password))))
    worker.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        sleeper = None
        while sleeper is None and time.monotonic() < deadline:
            sleeper = next((pid for pid, argv in _cmdlines()
                            if argv == f"sleep\0{marker}\0".encode()), None)
        assert sleeper is not None, "the command never started under sudo"
        assert Path(f"/proc/{sleeper}/status").read_text().count("Uid:\t0\t") == 1
        leaks = [(pid, argv) for pid, argv in _cmdlines() if password.encode() in argv]
        assert leaks == []
    finally:
        for pid, argv in _cmdlines():
            if argv == f"sleep\0{marker}\0".encode():
                os.kill(pid, 9)
        worker.join(DEADLINE_S)
    [r] = done[0].results
    assert password not in r.out + r.err


# -- the CLI --------------------------------------------------------------------------------

def test_cli_become_pass_file_and_json_output(lab: LabInfo, password: str,
                                              tmp_path: Path) -> None:
    inv = lab.root / "inventory-become.toml"
    assert lab.become_pass_file is not None
    p = reops("exec", "-i", str(inv), "web1,db1", "--sudo", "--no-hub",
              "--become-pass-file", str(lab.become_pass_file), "-o", "json", "--", "id", "-u")
    assert p.returncode == 0, p.stderr
    assert password not in p.stdout + p.stderr
    outcome = msgspec.json.decode(p.stdout)
    assert sorted(r["out"] for r in outcome["successful"]) == ["0\n", "0\n"]
    jsonl = reops("exec", "-i", str(inv), "web1", "--sudo", "--no-hub", "-o", "jsonl",
                  "--", "id", "-u", env={"REOPS_BECOME_PASS": password})
    assert jsonl.returncode == 0, jsonl.stderr
    assert '"out":"0\\n"' in jsonl.stdout and password not in jsonl.stdout + jsonl.stderr
    table = tmp_path / "runs.parquet"
    saved = reops("exec", "-i", str(inv), "web1", "--sudo", "--no-hub", "--save", str(table),
                  "--", "id", "-u", env={"REOPS_BECOME_PASS": password})
    assert saved.returncode == 0, saved.stderr
    assert password.encode() not in table.read_bytes()


def test_cli_wrong_password_and_dry_run(lab: LabInfo, password: str) -> None:
    inv = str(lab.root / "inventory-become.toml")
    wrong = reops("exec", "-i", inv, "web1", "--sudo", "--no-hub", "--", "id", "-u",
                  env={"REOPS_BECOME_PASS": "nope"})
    assert wrong.returncode == 1
    assert "sudo: incorrect password on web1" in wrong.stdout + wrong.stderr
    dry = reops("exec", "-i", inv, "all", "--sudo", "--dry-run", "-o", "json", "--", "id",
                env={"REOPS_BECOME_PASS": password})
    assert dry.returncode == 0, dry.stderr
    assert "sudo -k -S -p ''" in dry.stdout and password not in dry.stdout + dry.stderr


def test_cli_become_pass_file_open_to_others_is_refused(lab: LabInfo, tmp_path: Path) -> None:
    loose = tmp_path / "pass"
    loose.write_text("secret-in-a-loose-file\n")
    loose.chmod(0o644)
    p = reops("exec", "-i", str(lab.inventory), "web1", "--sudo", "--no-hub",
              "--become-pass-file", str(loose), "--", "true")
    assert p.returncode == 2
    assert f"{loose}: the become-password file is open to group/others" in p.stderr
    assert "secret-in-a-loose-file" not in p.stdout + p.stderr
    assert "Traceback" not in p.stderr


def _read_until(fd: int, seen: bytearray, wanted: bytes | None = None) -> None:
    """Read the pty into `seen` until `wanted` shows (None: until the other side closes)."""
    deadline = time.monotonic() + DEADLINE_S
    while wanted is None or wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {wanted!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            if not chunk:
                assert wanted is None, f"closed before {wanted!r}: {bytes(seen)!r}"
                return
            seen += chunk


def test_ask_become_pass_prompts_once_without_echo(lab: LabInfo, password: str) -> None:
    """On a real terminal (a pty that is the process's controlling tty)."""
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "reops", "exec", "-i", str(lab.root / "inventory-become.toml"),
         "web1", "--sudo", "--no-hub", "--ask-become-pass", "-o", "jsonl", "--", "id", "-u"],
        stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_tty, close_fds=True)
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, seen, b"sudo password")
        os.write(master, password.encode() + b"\n")
        _read_until(master, seen)
        assert proc.wait(DEADLINE_S) == 0
        assert seen.count(b"sudo password") == 1 and b'"status":"ok"' in seen
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        os.close(master)
    assert password.encode() not in bytes(seen)


# -- the Secret and where it may show -------------------------------------------------------

def test_secret_never_shows() -> None:
    s = Secret("hunter2")
    assert (repr(s), str(s), f"{s}", f"{s!r}") == ("***", "***", "***", "***")
    settings = Settings(become_pass=s)
    assert "hunter2" not in repr(settings) and "***" in repr(settings)
    op = exec_("id", sudo=True).with_become_pass(s)
    assert "hunter2" not in repr(op)
    assert "hunter2" not in op.command_for(Host(name="h1", address="10.0.0.1"))
    assert op.stdin == "hunter2\n"  # the one place it goes: sudo's stdin
    with pytest.raises(TypeError):
        msgspec.json.encode(settings)  # never written out in clear by accident


def test_become_pass_only_touches_privileged_shell_ops() -> None:
    s = Secret("pw")
    assert exec_("id").with_become_pass(s).stdin is None
    assert exec_("id", sudo=True).with_become_pass(None).command_for(
        Host(name="h", address="10.0.0.1")).startswith("sudo -n ")
    with pytest.raises(ValueError, match="line break"):
        exec_("id", sudo=True).with_become_pass(Secret("a\nb"))


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("REOPS_BECOME_PASS", "from-env")
    assert load_settings().become_pass == Secret("from-env")
    monkeypatch.delenv("REOPS_BECOME_PASS")
    assert load_settings().become_pass is None
    good = tmp_path / "pw"
    good.write_text("from-file\nignored\n")
    good.chmod(0o600)
    assert from_file(good) == Secret("from-file")
    with pytest.raises(SecretError, match="no such become-password file"):
        from_file(tmp_path / "missing")
    bad = tmp_path / "bad.toml"
    bad.write_text("[ssh]\nbecome_pass = 123456\n")
    monkeypatch.setenv("REOPS_CONFIG", str(bad))
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(e.value).startswith(f"{bad}: [ssh] become_pass: become_pass ")
    assert "123456" not in str(e.value)
