"""Partial failure in pipelines (issue 8): what `retry` re-runs, on real sshd hosts.

A remote command runs at most once per step: `retry` re-runs only hosts never reached
unless the caller asks for more with `when=`.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import reactivex
from reactivex import operators as ops

from reops import (
    Host,
    Hosts,
    Line,
    Result,
    Settings,
    Stream,
    exec_,
    failed,
    pretty,
    retry,
    run,
    unreachable,
)
from reops.core.model import Event
from reops.lab.fleet import Lab, LabInfo

#: upper bound for a condition we wait for (never a pass/fail margin)
DEADLINE_S = 60.0


def marker_cmd(tag: str, then_: str = "") -> str:
    """Append a line to a per-host marker file on the host, then `then_`."""
    return (f'echo x >> /tmp/reops-harden-{tag}-$(echo "$SSH_CONNECTION" | cut -d" " -f3)'
            + (f"; {then_}" if then_ else ""))


def runs_per_host(tag: str, info: LabInfo, names: list[str]) -> dict[str, int]:
    """How many times the command really ran on each host, read on the host (and cleaned)."""
    any_host = info.as_hosts()[names[0]]
    files = " ".join(f"/tmp/reops-harden-{tag}-{info.hosts[n]}" for n in names)
    out = run(exec_(any_host, f"for f in {files}; do if [ -e $f ]; then wc -l < $f; "
                    f"else echo 0; fi; done; rm -f {files}"))
    assert out.ok, out.failed[0].err
    return dict(zip(names, map(int, out.successful[0].out.split()), strict=True))


def test_retry_does_not_rerun_a_failing_command_by_default(lab: LabInfo) -> None:
    hosts = lab.as_hosts().glob("web*")
    once, again = uuid.uuid4().hex, uuid.uuid4().hex
    out = run(exec_(hosts, marker_cmd(once, "exit 1")) | retry(2))
    assert list(out.failure) == [1] and len(out.failure[1]) == len(hosts)
    assert set(runs_per_host(once, lab, hosts.names).values()) == {1}
    # asked for: failed hosts run again, up to the limit
    out = run(exec_(hosts, marker_cmd(again, "exit 1")) | retry(2, when=failed))
    assert list(out.failure) == [1]
    assert set(runs_per_host(again, lab, hosts.names).values()) == {3}


def test_retry_reaches_a_host_whose_sshd_came_back(lab_factory: Callable[..., Lab]) -> None:
    fleet = lab_factory(hosts=2)
    info = fleet.info
    up_name, down_name = list(info.hosts)
    fleet.stop_host(down_name)
    seen: list[tuple[str, str]] = []
    tag = uuid.uuid4().hex

    def bring_back(e: Event) -> None:
        """The down host's first attempt failed to connect: start its sshd before retry."""
        if isinstance(e, Result):
            seen.append((e.host, e.status))
            if e.host == down_name and unreachable(e):
                fleet.start_host(down_name)

    out = run(exec_(info.as_hosts(), marker_cmd(tag)) | ops.do_action(bring_back)
              | retry(1))
    assert out.ok, [r.err for r in out.failed]
    assert sorted(seen) == sorted([(up_name, "ok"), (down_name, "unreachable"),
                                   (down_name, "ok")])
    assert runs_per_host(tag, info, [up_name, down_name]) == {up_name: 1, down_name: 1}



def test_shared_stream_keeps_no_lines_after_delivering_them() -> None:
    """A host printing a lot must not cost a copy per shared stream: only Results replay."""
    n = 100_000

    def subscribe(observer, scheduler=None):  # type: ignore[no-untyped-def]
        for i in range(n):
            observer.on_next(Line(host="a", stream="out", text=str(i)))
        observer.on_next(Result(host="a", op="t", status="ok", code=0))
        observer.on_completed()

    hosts = Hosts([Host(name="a", address="127.0.0.1")])
    shared = Stream(reactivex.create(subscribe), hosts)
    got: list[Event] = []
    shared.subscribe(got.append)
    assert len(got) == n + 1  # the live subscriber saw every line
    buffered = shared._once._events  # type: ignore[union-attr]
    assert [type(e) for e in buffered] == [Result]
    late: list[Event] = []  # a late branch (partition) still gets the Result
    shared.subscribe(late.append)
    assert [type(e) for e in late] == [Result]


class GateFile(io.StringIO):
    """A terminal that blocks every write until released, logging when writes happen."""

    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.order.append("write-entered")
        self.entered.set()
        assert self.release.wait(DEADLINE_S), "gate never released"
        self.order.append("write-returned")
        return super().write(s)

    def isatty(self) -> bool:
        return False


def test_slow_terminal_does_not_hold_back_another_hosts_result(lab: LabInfo) -> None:
    hosts = lab.as_hosts().glob("web1") | lab.as_hosts().glob("web2")
    flag = f"/tmp/reops-harden-flag-{uuid.uuid4().hex}"
    total_lines = 30_000
    # web1 floods output; web2 answers only once the terminal is already stuck
    cmd = (f'case "$SSH_CONNECTION" in *" {hosts["web1"].address} "*) seq 1 {total_lines};; '
           f'*) while [ ! -e {flag} ]; do sleep 0.05; done; echo b;; esac')
    order: list[str] = []
    gate = GateFile(order)
    web2_done, finished = threading.Event(), threading.Event()
    errors: list[Exception] = []

    def record(e: Event) -> None:
        if isinstance(e, Result):
            order.append(f"result-{e.host}")
            if e.host == "web2":
                web2_done.set()

    stream = (exec_(hosts, cmd, lines=True, settings=Settings(command_timeout=DEADLINE_S))
              | pretty(file=gate, progress=False, max_lines=100) | ops.do_action(record))
    sub = stream.subscribe(on_error=lambda e: (errors.append(e), finished.set()),
                           on_completed=finished.set)
    try:
        assert gate.entered.wait(DEADLINE_S), "the terminal never got a write"
        Path(flag).touch()  # lab hosts share this machine's /tmp
        assert web2_done.wait(DEADLINE_S), "web2's Result waited for the stuck terminal"
        # event order: web2's Result went on while the terminal's first write was stuck
        assert "write-returned" not in order[:order.index("result-web2")]
    finally:
        gate.release.set()
        Path(flag).unlink(missing_ok=True)
    assert finished.wait(DEADLINE_S) and not errors, errors
    sub.dispose()
    text = gate.getvalue()
    assert "✔ web1" in text and "✔ web2" in text and "2 ok" in text  # no Result dropped
    shown = sum(1 for row in text.splitlines() if re.match(r"\s*web[12] │ \w+$", row))
    not_shown = sum(int(m) for m in re.findall(r"… (\d+) lines not shown \(slow terminal\)",
                                               text))
    # every line (web1's and web2's "b") is either shown or counted as not shown
    assert not_shown > 0 and shown + not_shown == total_lines + 1, text
