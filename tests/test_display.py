"""Rich and HTML display of Result, Outcome, Hosts and Systems (issue 12, part 2).

Rendered for real: rich through `Console(record=True)` (what a terminal, the REPL and
`rich.print` show), HTML through `_repr_html_` (what Jupyter shows). Host-printed text must
never become markup or run in a notebook; many hosts are cut with `… N more hosts`,
failures first, so a failure is never the row left out.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys

import msgspec
import polars as pl
from rich.console import Console

from reops.core.model import Host, Hosts, Outcome, Result, RunInfo
from reops.sinks.table import to_table
from reops.store.model import Machine, Placement, System
from reops.systems.display import Systems

SCRIPT = "<script>alert('pwned')</script>"


def render(value: object, width: int = 120) -> str:
    console = Console(record=True, width=width, color_system=None, force_terminal=False)
    console.print(value)
    return console.export_text()


def res(host: str, status: str = "ok", code: int = 0, out: str = "", err: str = "",
        **kw: object) -> Result:
    return Result(host=host, op="exec", status=status, code=code, out=out,  # type: ignore[arg-type]
                  err=err, duration_s=0.25, **kw)  # type: ignore[arg-type]


def every_status() -> Outcome:
    return Outcome.of([
        res("web1", out="up 3 days\nsecond line"),
        res("web2", out="up 4 days"),
        res("db1", "failed", 3, out="", err="disk full\nsecond err line"),
        res("db2", "unreachable", -1, err="connection refused (127.0.0.9:22)"),
        res("db3", "timeout", -1, err="killed after 5 s"),
        res("cache1", "lost", -1, err="connection lost mid-command"),
        res("cache2", "error", -1, err="bad template"),
    ])


def row_of(text: str, host: str) -> str:
    """The rendered line that names `host` as a row (its own column)."""
    for line in text.splitlines():
        if re.search(rf"(^|\s){re.escape(host)}\s", line):
            return line
    raise AssertionError(f"no row for {host} in:\n{text}")


def test_outcome_in_a_terminal_marks_each_host_and_counts_every_status() -> None:
    text = render(every_status())
    assert "✔" in row_of(text, "web1") and "up 3 days" in row_of(text, "web1")
    assert "second line" not in text  # a first line, not the whole output
    assert "✘" in row_of(text, "db1") and "exit 3" in row_of(text, "db1")
    assert "disk full" in row_of(text, "db1") and "second err line" not in text
    for host, word in [("db2", "unreachable"), ("db3", "timeout"), ("cache1", "lost"),
                       ("cache2", "error")]:
        assert "✘" in row_of(text, host) and word in row_of(text, host)
    assert "0.25s" in row_of(text, "web2")
    assert ("── 2 ok · 5 failed (1 error, 1 exit 3, 1 lost, 1 timeout, 1 unreachable)"
            " · 7 hosts") in text


def test_outcome_repr_stays_short_and_ipython_gets_the_view() -> None:
    out = every_status()
    assert repr(out).startswith("Outcome(")

    class Printer:  # IPython's pretty printer protocol: p.text(...)
        def __init__(self) -> None:
            self.text_out = ""

        def text(self, s: str) -> None:
            self.text_out += s

    p = Printer()
    out._repr_pretty_(p, False)
    assert "── 2 ok · 5 failed" in p.text_out and "\x1b[" not in p.text_out


def test_many_hosts_are_cut_failures_first() -> None:
    results = [res(f"web{i}", out=f"fine {i}") for i in range(1, 61)]
    results += [res("db9", "failed", 2, err="boom"), res("db10", "unreachable", -1)]
    out = Outcome.of(results)
    text = render(out)
    assert "… 42 more hosts" in text
    assert "db9" in text and "db10" in text  # failures are never the rows left out
    assert "web1 " in text and "web60" not in text
    shown = [line for line in text.splitlines() if line.startswith(("✔", "✘"))]
    assert len(shown) == 20
    assert "60 ok · 2 failed (1 exit 2, 1 unreachable) · 62 hosts" in text
    page = out._repr_html_()
    assert "… 42 more hosts" in page and page.count("<tr>") == 20 + 2  # head + rows + more


def test_interrupted_outcome_names_hosts_not_finished() -> None:
    out = Outcome.of([res("web1")], hosts=["web1", "web2", "web3"])
    out.interrupted = True
    text = render(out)
    assert "not finished" in row_of(text, "web2")
    assert "1 ok · 2 not finished · 3 hosts" in text and "interrupted" in text


def test_html_escapes_everything_a_host_printed() -> None:
    out = Outcome.of([
        res("web1", out=f"{SCRIPT}\n<b>bold</b>"),
        res("db1", "failed", 1, err=f"{SCRIPT} & \"quotes\""),
        res("<img src=x onerror=alert(1)>", out="x"),
    ])
    for page in (out._repr_html_(), out["db1"]._repr_html_(), out["web1"]._repr_html_()):
        assert "<script" not in page and "<img" not in page and "<b>" not in page
    page = out._repr_html_()
    assert html.escape(SCRIPT, quote=True) in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "✔" in page and "✘" in page and "exit 1" in page
    assert "2 ok" in page and "1 failed (1 exit 1)" in page


def test_control_characters_are_shown_never_sent_to_the_terminal() -> None:
    out = Outcome.of([res("web1", "failed", 1, err="\x1b[2Jcleared\x07")])
    text = render(out)
    assert "\x1b" not in text and "\\x1b[2Jcleared\\x07" in text
    assert "\x1b" not in out._repr_html_()


def test_markup_in_host_text_is_not_read_as_rich_markup() -> None:
    out = Outcome.of([res("web1", out="[bold red]not markup[/] :smile:")])
    assert "[bold red]not markup[/] :smile:" in render(out)


def test_a_result_shows_its_last_lines() -> None:
    r = res("db1", "failed", 2, out="\n".join(f"line {i}" for i in range(1, 31)),
            err="the end")
    text = render(r)
    assert text.splitlines()[0].startswith("✘ db1 exec 0.25s exit 2")
    assert "… 11 more lines" in text and "line 30" in text and "the end" in text
    assert "line 10\n" not in text
    assert "the end" in r._repr_html_()


def test_dry_runs_read_as_dry_runs_not_ok() -> None:
    r = res("web1", data={"dry_run": "uptime"})
    out = Outcome.of([r])
    assert "○" in row_of(render(out), "web1") and "dry run" in render(out)
    assert "✔" not in render(out)


def test_pipeline_steps_show_in_the_row() -> None:
    first = Result(host="web1", op="ls", status="ok", code=0, duration_s=0.5)
    second = Result(host="web1", op="exec", status="ok", code=0, duration_s=0.25).after(first)
    text = render(Outcome.of([second]))
    assert "Outcome: ls | exec" in text and "ls | exec" in row_of(text, "web1")
    assert "0.75s" in row_of(text, "web1")  # the host's steps together


def test_hosts_show_as_a_table_cut_past_20() -> None:
    hosts = Hosts(Host(name=f"web{i}", address=f"127.0.9.{i}", port=2222, user="deploy",
                       groups=("web",), tags={"dc": "ams"}) for i in range(1, 26))
    text = render(hosts)
    assert "25 hosts" in text and "… 5 more hosts" in text
    assert "deploy@127.0.9.1:2222" in row_of(text, "web1") and "dc=ams" in text
    assert repr(hosts).startswith("Hosts(web1, web2")  # unchanged
    page = Hosts([Host(name="<b>x</b>", address="a")])._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>" not in page


def system(i: int, state: str = "running") -> System:
    return System(id=f"{i:02d}" + "ab" * 19, type="redis",
                  machine=Machine(hostname=f"vm{i}", domain="lab", ip=f"10.0.0.{i}"),
                  placement=Placement(hypervisor="local"), state=state)  # type: ignore[arg-type]


def test_systems_show_as_a_table() -> None:
    systems = Systems([system(i) for i in range(1, 23)] + [system(99, "stopped")])
    text = render(systems)
    assert "23 systems (22 running · 1 stopped)" in text
    assert "vm1.lab" in text and "10.0.0.1" in text and "redis" in text
    assert "… 3 more" in text and "vm99" not in text
    assert repr(systems).startswith("Systems(vm1, vm2")
    evil = Systems([msgspec.structs.replace(system(1), type=SCRIPT)])
    assert "<script" not in evil._repr_html_() and "&lt;script&gt;" in evil._repr_html_()
    assert isinstance(systems, list) and systems[0].hostname == "vm1"


def test_outcome_table_is_the_saved_table() -> None:
    out = every_status()
    out.run = RunInfo(command="reops exec", selector="all", started_at=1_700_000_000.0,
                      ended_at=1_700_000_002.0)
    df = out.table()
    assert isinstance(df, pl.DataFrame)
    assert df.equals(to_table(out))
    assert df["host"].to_list() == out.hosts
    assert df.filter(pl.col("status") != "ok")["host"].to_list() == [
        "db1", "db2", "db3", "cache1", "cache2"]
    assert set(df["command"].to_list()) == {"reops exec"}


def test_import_reops_loads_neither_rich_nor_polars() -> None:
    code = ("import sys, reops; from reops import Outcome, Result, Hosts; "
            "print(sorted(m for m in ('rich', 'polars') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
