"""`reops repl` under a real pseudo-terminal (pexpect), against the session's sshd lab.

Every wait is an `expect` on what the terminal shows, with a deadline; never a sleep.
What is matched is the screen's text with its escape sequences removed (colours, cursor
moves), so a test reads what a user sees.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from reops.control.client import request_sync
from reops.lab.agents import start_hub
from reops.lab.fleet import LabInfo

REOPS = str(Path(sys.executable).with_name("reops"))
#: colours, cursor moves, modes: what a terminal acts on but never shows
ANSI = re.compile(r"\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
#: the bound on anything the REPL is expected to do (generous: a shared 2-core machine)
DEADLINE = 60.0


class Term:
    """A REPL on a pseudo-terminal, read as text: `expect` waits for a regex in what was
    shown since the last match (escape sequences removed)."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.raw = ""
        self.pos = 0  # in the cleaned text: where the next expect starts looking

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw).replace("\r", "")

    def expect(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.text, self.pos)
            if found is not None:
                self.pos = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not shown in {timeout:.0f} s; screen since "
                                     f"the last match:\n{self.text[self.pos:][-3000:]}")
            try:
                self.raw += self.child.read_nonblocking(65536, timeout=min(left, 1.0))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                raise AssertionError(f"the REPL exited waiting for {pattern!r}:\n"
                                     f"{self.text[self.pos:][-3000:]}") from None

    def since(self, start: int) -> str:
        return self.text[start:self.pos]

    def prompt(self) -> None:
        self.expect(r">>> ?")

    def run(self, line: str) -> None:
        """Type a command and press Enter (completion menus are closed first)."""
        self.child.send(line)
        self.child.send("\r")


def spawn(inventory: Path, home: Path) -> Term:
    env = {**os.environ, "REOPS_HOME": str(home), "TERM": "xterm", "NO_COLOR": "1",
           "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "160", "LINES": "50"}
    child = pexpect.spawn(REOPS, ["repl", "-i", str(inventory)], env=env, encoding="utf-8",
                          dimensions=(50, 160), timeout=DEADLINE)
    term = Term(child)
    term.expect(r"reops \S+ — live operations")
    term.prompt()
    return term


@pytest.fixture
def repl(lab: LabInfo, tmp_path: Path) -> Iterator[Term]:
    term = spawn(lab.inventory, tmp_path / "home")
    try:
        yield term
    finally:
        term.child.terminate(force=True)


def test_top_level_await_returns_an_outcome_kept_as_r(repl: Term, lab: LabInfo) -> None:
    host = next(iter(lab.hosts))
    repl.run(f'out = await exec_(inv.select("{host}"), "echo from-$(hostname)-ok")')
    repl.prompt()
    repl.run('print("R:", type(out).__name__, _r is out, out.interrupted, '
             'out.successful[0].out.strip().endswith("-ok"), len(out.results))')
    repl.expect(r"R: Outcome True False True 1")
    repl.run("out")  # shown with rich: the Outcome's own view (✔ per host)
    repl.expect(rf"✔\s+{host}\b")


def complete(term: Term, typed: str, shown: str) -> None:
    """Type `typed`, wait for the completion menu to offer `shown` (ptpython completes
    while typing), then TAB: the first entry is taken at once (no race with what is typed
    next, as there would be with a completion TAB itself had to start)."""
    term.child.send(typed)
    term.expect(shown)
    term.child.send("\t")


def test_tab_completes_a_lab_host_name_and_a_selector_word(repl: Term, lab: LabInfo) -> None:
    names = list(lab.hosts)
    # no Python completer knows host names: only the inventory's
    complete(repl, 'inv["ca', r"cache2")
    repl.run('"].name')
    host = next(n for n in names if n.startswith("ca"))  # the menu's first entry
    repl.expect(rf"'{host}'")
    complete(repl, 'len(inv.select("web1 , group:d', r"group:db")  # a word after an operator
    repl.run('"))')
    db = sum(1 for n in names if n.startswith("db"))
    repl.expect(rf"(?m)^{db + 1}$")


def test_background_stream_prints_above_the_line_being_typed(repl: Term, lab: LabInfo) -> None:
    host = next(iter(lab.hosts))
    repl.run(f'sub = (on(every("0.3s"), hosts=inv.select("{host}")) | then(exec_, "true"))'
             '.subscribe(lambda e: print("TICK", e.host) if isinstance(e, Result) else None)')
    repl.expect(rf"TICK {host}")
    repl.child.send('typed = "the line being typed')  # no Enter: the prompt holds it
    for _ in range(3):  # the stream goes on printing while the line is open
        repl.expect(rf"TICK {host}")
    repl.run(' stays whole"')
    repl.run("sub.dispose(); print('TYPED:', typed)")
    repl.expect(r"TYPED: the line being typed stays whole")


def test_ctrl_c_stops_the_foreground_pipeline_not_the_session(repl: Term, lab: LabInfo) -> None:
    web = [n for n in lab.hosts][:3]
    sel = ",".join(web)
    repl.run(f'bg = (on(every("0.3s"), hosts=inv.select("{web[0]}")) | then(exec_, "true"))'
             '.subscribe(lambda e: print("BG", e.host) if isinstance(e, Result) else None)')
    repl.expect(r"BG ")
    repl.run('pl.DataFrame({"shown": [1, 2]})')  # polars used: its SIGINT handler is in
    repl.expect(r"shown")
    repl.run(f'out = run(exec_(inv.select("{sel}"), "sleep 300") | pretty())')
    repl.expect(r"hosts .*0/3")  # the progress bar: the command runs remotely
    repl.child.sendintr()
    repl.expect(r"interrupted", timeout=30)  # sleep 300 would need 300 s
    repl.expect(r"interrupted before this host finished")  # the partial Outcome, shown
    start = repl.pos
    repl.run("print('STATE:', out.interrupted, _r is out)")
    repl.expect(r"STATE: True True")
    # one more foreground command: by its end, the interrupted bar would have redrawn
    repl.run(f'run(exec_(inv.select("{web[0]}"), "sleep 1")).successful[0].host')
    repl.expect(rf"'{web[0]}'")
    assert "0/3" not in repl.since(start), "the interrupted pipeline's bar came back"
    for _ in range(2):  # the background subscription survived the Ctrl-C
        repl.expect(r"BG ")
    # an awaited pipeline: Ctrl-C cancels it, the session stays
    repl.run(f'out2 = await (exec_(inv.select("{sel}"), "sleep 300") | pretty())')
    repl.expect(r"hosts .*0/3")
    repl.child.sendintr()
    repl.expect(r"interrupted", timeout=30)
    repl.expect(r"interrupted before this host finished")  # its partial Outcome, shown
    repl.run("print('AWAITED:', out2.interrupted, _r is out2)")
    repl.expect(r"AWAITED: True True")
    start = repl.pos
    repl.run(f'run(exec_(inv.select("{web[0]}"), "sleep 1")).successful[0].host')
    repl.expect(rf"'{web[0]}'")
    assert "0/3" not in repl.since(start), "the cancelled pipeline's bar came back"
    repl.expect(r"BG ")  # still running
    repl.run("bg.dispose(); print('ALIVE')")
    repl.expect(r"ALIVE")


def test_ctrl_c_interrupts_a_script_after_polars_was_used(lab: LabInfo) -> None:
    """The plain-script case: polars' SIGINT handler (SA_RESTART) made the wait in
    `run()` deaf to Ctrl-C until the pipeline ended."""
    host = next(iter(lab.hosts))
    script = (
        "import polars as pl\n"
        "from reops import exec_, inventory, pretty, run\n"
        'print(pl.DataFrame({"a": [1]}))\n'
        f'out = run(exec_(inventory({str(lab.inventory)!r}).select("{host}"), '
        '"echo started; exec sleep 300", lines=True) | pretty())\n'
        'print("INTERRUPTED", out.interrupted)\n'
    )
    child = pexpect.spawn(sys.executable, ["-c", script], encoding="utf-8",
                          timeout=DEADLINE, env={**os.environ, "NO_COLOR": "1"})
    try:
        term = Term(child)
        term.expect(r"started")  # the remote command runs
        child.kill(signal.SIGINT)
        term.expect(r"INTERRUPTED True", timeout=30)  # sleep 300 would need 300 s
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.terminate(force=True)


def test_history_is_kept_across_sessions(lab: LabInfo, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = spawn(lab.inventory, home)
    try:
        first.run("kept_from_session_one = 41 + 1")
        first.run("exit()")  # (typed ahead: Ctrl-D would need the prompt to be up)
        first.child.expect(pexpect.EOF)
    finally:
        first.child.terminate(force=True)
    assert "kept_from_session_one" in (home / "repl_history").read_text()
    second = spawn(lab.inventory, home)
    try:
        second.child.send("\x1b[A\x1b[A")  # Up, Up: the line before the first's exit()
        second.run("")
        second.run("print('VALUE', kept_from_session_one)")
        second.expect(r"VALUE 42")
    finally:
        second.child.terminate(force=True)


TICKER = '''from reops import every
from reops.flows import flow


@flow
def ticker(period: str = "1s") -> object:
    """Tick forever: a flow that keeps running in the hub."""
    return every(period)
'''


def test_flows_started_from_the_repl_run_in_the_hub_and_outlive_it(
        lab: LabInfo, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    flow_file = tmp_path / "ticker.py"
    flow_file.write_text(TICKER)
    without = spawn(lab.inventory, home)  # no hub yet: the banner says so; flows: one line
    try:
        assert "hub: none running" in without.text
        without.run("flows.ls()")
        without.expect(r"reops: error: no reops hub is running \(control socket .*hub\.sock\)")
        without.prompt()
        assert "Traceback" not in without.since(0)
    finally:
        without.child.terminate(force=True)
    with start_hub(home) as hub:
        assert hub.proc is not None
        term = spawn(lab.inventory, home)
        try:
            assert f"hub: pid {hub.proc.pid} · 0 agents connected · 0 flows running" in term.text
            term.run(f'flows.start({str(flow_file)!r}, period="0.5s")["name"]')
            term.expect(r"'ticker'")
            term.run('[(f["name"], f["state"]) for f in flows.ls()]')
            term.expect(r"\[\('ticker', 'running'\)\]")
            complete(term, 'print("LOG", flows.log("ti', r"ticker")  # the hub's flows
            term.run('")[0]["status"])')
            term.expect(r"LOG started")  # the audit's first record: the REPL's start
            term.run("exit()")
            term.child.expect(pexpect.EOF)
        finally:
            term.child.terminate(force=True)
        rows = request_sync(hub.control_path, "flows.ls")  # the REPL is gone; the flow is not
        assert [(r["name"], r["state"]) for r in rows] == [("ticker", "running")]
        request_sync(hub.control_path, "flows.stop", {"name": "ticker"})


def test_runs_in_the_repl_land_in_the_history_as_the_repls(repl: Term, lab: LabInfo) -> None:
    host = next(iter(lab.hosts))
    repl.run(f'out = await exec_(inv.select("{host}"), "echo one")')
    repl.prompt()
    repl.run(f'out = run(exec_(inv.select("{host}"), "echo two"))')
    repl.prompt()
    repl.run(f'h = history("1h", host="{host}").collect(); '
             'print("H:", sorted(set(h["source"])), sorted(h["out"].str.strip_chars()))')
    repl.expect(r"H: \['repl'\] \['one', 'two'\]")
