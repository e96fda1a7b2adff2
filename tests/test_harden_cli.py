"""The launcher under partial failure (issue 8): signals, settings, limits, its home.

Real `reops` processes against real sshd hosts; every wait is for an event or a condition
with a bounded deadline.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import uuid

from reops import exec_, run
from reops.lab import LabInfo

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
