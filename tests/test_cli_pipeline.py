"""One CLI pipeline and one terminal sink: op commands run exactly like `reops exec`.

Real `reops` processes against the session lab's sshd hosts; the host that is never
reached is a real TCP listener on loopback that hangs up at once (counting its callers).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reops import run
from reops.lab.fleet import LabInfo
from reops.sinks.terminal import pretty
from reops.streams.steps import facts

#: upper bound for a command we wait for (never a pass/fail margin)
DEADLINE_S = 120.0
#: loopback address for the hang-up host (conftest: 127.0.252+ is free for tests)
HANGUP_ADDRESS = "127.0.252.7"


def reops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=DEADLINE_S)


class HangUp:
    """A TCP listener that closes every connection at once: SSH to it is `unreachable`.

    Counts connections before closing them, so when a `reops` run has ended every
    connection it made is counted (each attempt waited for this close).
    """

    def __init__(self) -> None:
        self.sock = socket.create_server((HANGUP_ADDRESS, 0), backlog=64)
        self.calls = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="hangup", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by close()
                return
            with self._lock:
                self.calls += 1
            conn.close()

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def take(self) -> int:
        """Connections counted so far, then start again from zero."""
        with self._lock:
            n, self.calls = self.calls, 0
        return n

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join()


@pytest.fixture
def hangup() -> Iterator[HangUp]:
    h = HangUp()
    try:
        yield h
    finally:
        h.close()


def test_op_command_retries_unreachable_hosts_like_exec(hangup: HangUp,
                                                        tmp_path: Path) -> None:
    """`--retry 2` gives an unreachable host three attempts, for `facts` as for `exec`."""
    inv = tmp_path / "inventory.toml"
    inv.write_text(f'[hosts.gone]\naddress = "{HANGUP_ADDRESS}"\nport = {hangup.port}\n')
    outcomes = {}
    for name, argv in (("exec", ["exec", "-i", str(inv), "gone", "--retry", "2", "-o", "json",
                                 "--", "true"]),
                       ("facts", ["facts", "-i", str(inv), "gone", "os", "--retry", "2",
                                  "-o", "json"])):
        p = reops(*argv)
        assert p.returncode == 1, (name, p.stdout, p.stderr)
        outcomes[name] = json.loads(p.stdout)
        assert hangup.take() == 3, name  # first try + 2 retries, each a real connection
    for doc in outcomes.values():
        [r] = doc["failure"]["-1"]
        assert r["status"] == "unreachable" and r["host"] == "gone"
    p = reops("facts", "-i", str(inv), "gone", "os", "--retry", "2")  # pretty: same pipeline
    assert p.returncode == 1 and "✘ gone" in p.stdout and "1 unreachable" in p.stdout
    assert hangup.take() == 3


def test_op_command_rolling_runs_batch_after_batch(lab: LabInfo) -> None:
    """`--rolling 5`: Results come batch by batch in selection order, as for `exec`."""
    names = reops("hosts", "-i", str(lab.inventory), "all", "-o", "names").stdout.split()
    assert len(names) >= 15
    batches = [set(names[i:i + 5]) for i in range(0, len(names), 5)]
    for argv in (["facts", "-i", str(lab.inventory), "all", "os"],
                 ["exec", "-i", str(lab.inventory), "all", "--", "true"]):
        where = argv.index("all") + 1
        p = reops(*argv[:where], "--rolling", "5", "-o", "jsonl", *argv[where:])
        assert p.returncode == 0, p.stderr
        order = [json.loads(line)["host"] for line in p.stdout.splitlines()]
        assert [set(order[i:i + 5]) for i in range(0, len(order), 5)] == batches, argv


def test_op_commands_and_exec_share_one_pipeline(lab: LabInfo) -> None:
    """Same Outcome shape from `facts` and `exec`; the ops module has no pipeline of its own."""
    from reops.cli import ops as cli_ops

    assert not hasattr(cli_ops, "run_step") and not hasattr(cli_ops, "show")
    docs = []
    for argv in (["exec", "-i", str(lab.inventory), "web1", "-o", "json", "--", "uname"],
                 ["facts", "-i", str(lab.inventory), "web1", "os", "-o", "json"]):
        p = reops(*argv)
        assert p.returncode == 0, p.stderr
        docs.append(json.loads(p.stdout))
    exec_doc, facts_doc = docs
    assert set(exec_doc) == set(facts_doc) == {"hosts", "successful", "failure", "run", "steps"}
    assert set(exec_doc["successful"][0]) == set(facts_doc["successful"][0])
    assert set(exec_doc["run"]) == set(facts_doc["run"])
    assert (exec_doc["run"]["pipeline"], facts_doc["run"]["pipeline"]) == ("exec", "facts")
    assert [s["op"] for s in exec_doc["steps"]] == ["exec"]
    assert [s["op"] for s in facts_doc["steps"]] == ["facts"]
    assert facts_doc["successful"][0]["data"]["os"]["kernel"] == "Linux"


def _without_timings(text: str) -> list[str]:
    """Output lines with durations (`0.12s`, `0.50 s`) and uptimes (`3h 12m`, `1d 1h`)
    blanked and spacing collapsed (column widths follow them), for comparing two runs."""
    text = re.sub(r"\d+\.\d+ ?s\b", "T", text)
    text = re.sub(r"\b\d+[dh] \d+[hm]\b", "U", text)
    return [" ".join(line.split()) for line in text.splitlines()]


def test_pretty_in_python_shows_the_ops_view_like_the_cli(lab: LabInfo) -> None:
    """`facts(hosts) | pretty()` prints what `reops facts` prints: the view is the op's."""
    buf = io.StringIO()
    hosts = lab.as_hosts().glob("web1")
    out = run(facts(hosts, "os") | pretty(file=buf, progress=False))
    assert out.ok
    os_name = out.successful[0].data.os.name
    api = _without_timings(buf.getvalue())
    assert api[0].startswith("✔ web1") and api[0].endswith(f" {' '.join(os_name.split())}")
    assert api[1].split() == ["host", "os", "kernel", "cpus", "memory", "disks", "address",
                              "uptime"]
    p = reops("facts", "-i", str(lab.inventory), "web1", "os")
    assert p.returncode == 0, p.stderr
    assert _without_timings(p.stdout) == api


def _wait_for_reader(fifo: Path, p: subprocess.Popen[str]) -> int:
    """A write end of `fifo`, opened once the remote grep holds its read end (bounded);
    kept open so the grep blocks on read instead of seeing end-of-file."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end and p.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        time.sleep(0.05)  # polling a condition with a deadline, not a pass/fail margin
    p.kill()
    raise AssertionError(f"the remote grep never opened {fifo}: {p.communicate()}")


def test_op_command_exits_143_on_sigterm_like_exec(lab: LabInfo) -> None:
    """SIGTERM while an op command's remote work hangs: the partial summary, then exit 143."""
    scratch = Path(tempfile.mkdtemp(prefix="reops-pipeline-", dir="/tmp"))
    scratch.chmod(0o777)  # the lab's login user reads the FIFO
    fifo = scratch / "never-written"
    os.mkfifo(fifo, 0o666)
    fifo.chmod(0o666)
    p = subprocess.Popen([sys.executable, "-m", "reops", "files", "grep", "-i",
                          str(lab.inventory), "web1", "x", str(fifo)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = -1
    try:
        writer = _wait_for_reader(fifo, p)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=DEADLINE_S)
    finally:
        if p.poll() is None:
            p.kill()
        if writer >= 0:
            os.close(writer)  # a grep still there now reads end-of-file and ends
        fifo.unlink()
        scratch.rmdir()
    assert p.returncode == 143, (out, err)
    assert "SIGTERM" in err and "Traceback" not in err, err
    assert "1 hosts" in out and "terminated" in out, out


def test_the_op_chooses_its_view() -> None:
    """Exact op name first, then the longest "prefix."; exec and user code keep raw output."""
    from reops.sinks import views

    assert views.view_for("pkg.installed") is not views.view_for("pkg.install")
    assert views.view_for("pkg.install") is views.CHANGE  # by the "pkg." prefix
    assert views.view_for("service.status") is not views.CHANGE
    assert views.view_for("exec") is None and views.view_for("my.own.op") is None
    assert views.view_for("pkgx.install") is None  # a prefix ends at its dot
