"""The terminal's live sink (`reops metrics --every`): drawn off the loop, latest frame wins.

Real samples from the session lab's sshd hosts; the slow terminal is a file whose write
blocks until the test lets it go.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from reops.core.model import Result
from reops.lab.fleet import LabInfo
from reops.sinks.terminal import live
from reops.sinks.views import metrics_table
from reops.streams.collect import collect

#: upper bound for a condition we wait for (never a pass/fail margin)
DEADLINE_S = 60.0


class StuckTerminal(io.StringIO):
    """A terminal that takes no output until `release` is set (a frozen ssh session)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.release.wait(DEADLINE_S)
        return super().write(s)

    def isatty(self) -> bool:
        return True


def test_a_stuck_terminal_never_stalls_the_samples(lab: LabInfo) -> None:
    """While the live table cannot be drawn, samples keep coming; the last frame follows."""
    hosts = lab.as_hosts().glob("web1")
    term = StuckTerminal()
    seen: list[Result] = []
    more = threading.Condition()

    def on_next(e: Any) -> None:
        if isinstance(e, Result):
            with more:
                seen.append(e)
                more.notify_all()

    def render(latest: Mapping[str, Result]) -> Any:
        return metrics_table(hosts.names, latest, "every 0.1 s")

    sub = (collect(hosts, ["load"], 0.1) | live(render, file=term)).subscribe(on_next)
    try:
        assert term.entered.wait(DEADLINE_S), "the live sink never drew"
        with more:  # the drawing thread is stuck in write(); the loop is not
            assert more.wait_for(lambda: len(seen) >= 3, DEADLINE_S), len(seen)
        assert not term.release.is_set() and term.getvalue() == ""
    finally:
        term.release.set()
        sub.dispose()
    assert all(r.ok for r in seen), [r.err for r in seen]
    assert "web1" in term.getvalue() and "load1" in term.getvalue()


def test_metrics_every_pretty_draws_a_table_and_ends_after_count(lab: LabInfo) -> None:
    """Not a terminal: the last frame is printed once the samples are in."""
    p = subprocess.run([sys.executable, "-m", "reops", "metrics", "-i", str(lab.inventory),
                        "web1,web2", "load", "--every", "0.2", "--count", "2"],
                       capture_output=True, text=True, timeout=DEADLINE_S)
    assert p.returncode == 0, p.stderr
    assert "load1" in p.stdout and "every 0.2 s" in p.stdout, p.stdout
    assert {"web1", "web2"} <= {line.split()[0] for line in p.stdout.splitlines() if line}
