"""Pretty output never alters or hides what a host printed (issue 10, items 6, 7 and 8's
dry-run label).

A property test drives the real terminal sink in-process over arbitrary text; the rest runs
the real `reops` CLI against the real sshd lab. Every wait is for an event or a condition
with a bounded deadline.
"""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st

from reops import Host, Hosts, Result, Stream, exec_, pretty, run
from reops.core.model import Event, Line
from reops.lab.fleet import LabInfo
from reops.sinks.gather import safe, split_lines, visible

#: upper bound for a condition we wait for (never a pass/fail margin)
DEADLINE_S = 60.0
#: a wide terminal, so rich's tables never wrap a row we look for
WIDE = {"COLUMNS": "250"}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: what a host may print: markup, emoji codes, brackets, escapes, controls, anything
TRICKY = ["[", "]", "[/]", "[bold]", "[link=http://e.x]", ":x:", ":thumbs_up:", "\x1b[2J",
          "\x1b]0;title\x07", "\r", "\x00", "\t", "\x9b", "\u202e", "é", "\\", " ", "a", "0",
          "\n"]
host_text = st.one_of(st.lists(st.sampled_from(TRICKY), max_size=30).map("".join),
                      st.text(max_size=200))


def reops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=DEADLINE_S, env={**os.environ, **(env or {})})


def stream_of(events: list[Event], names: list[str]) -> Stream:
    hosts = Hosts(Host(name=n, address=f"10.9.0.{i + 1}") for i, n in enumerate(names))

    def subscribe(observer, scheduler=None):  # type: ignore[no-untyped-def]
        for e in events:
            observer.on_next(e)
        observer.on_completed()

    return Stream(reactivex.create(subscribe), hosts)


# ── 6. output text is never interpreted ───────────────────────────────────────────────


@settings(max_examples=300, deadline=None)
@given(out=host_text, err=host_text, code=st.sampled_from([0, 3]))
def test_the_pretty_sink_prints_host_text_exactly(out: str, err: str, code: int) -> None:
    """What a host printed is in the output as it was, controls shown as ^X; the sink
    writes no control character of the host's to the terminal."""
    buf = io.StringIO()
    r = Result(host="h[1]:x:", op="exec", status="ok" if code == 0 else "failed", code=code,
               out=out, err=err)
    run(stream_of([r], ["h[1]:x:"]) | pretty(file=buf, progress=False, tail=None))
    printed = buf.getvalue()
    lines = [visible(x) for x in [*split_lines(out), *split_lines(err)]]
    if len(lines) == 1 and len(lines[0]) < 100:
        assert f"  {lines[0]}\n" in printed
    elif lines:
        assert "\n".join(f"    {x}" for x in lines) + "\n" in printed
    assert "h[1]:x:" in printed  # the host name too
    assert not CONTROL.search(printed), repr(printed)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(host_text.map(lambda t: t.replace("\n", "")), min_size=1, max_size=5))
def test_live_lines_print_host_text_exactly(texts: list[str]) -> None:
    buf = io.StringIO()
    events: list[Event] = [Line("web1", "out", t) for t in texts]
    events.append(Result(host="web1", op="exec", status="ok", code=0, out="\n".join(texts)))
    run(stream_of(events, ["web1"]) | pretty(file=buf, progress=False))
    printed = buf.getvalue()
    for t in texts:
        assert f"web1 │ {visible(t)}\n" in printed
    assert not CONTROL.search(printed), repr(printed)


@given(texts=st.lists(host_text, max_size=5))
def test_the_live_lines_fast_check_agrees_with_visible(texts: list[str]) -> None:
    """Live lines skip escaping when one scan of the batch finds nothing to escape."""
    assert safe(texts) == all(visible(t) == t for t in texts)


SCRIPT = (r"printf 'root:x:0:0:root:/root:/bin/bash\n[bold]b[/] [link=http://e.x]l[/link]"
          r"\n:thumbs_up: :x:\nclear\033[2Jhere\rcr nul\000end\n'")
VERBATIM = ["root:x:0:0:root:/root:/bin/bash", "[bold]b[/] [link=http://e.x]l[/link]",
            ":thumbs_up: :x:", "clear^[[2Jhere^Mcr nul^@end"]


def test_exec_prints_markup_emoji_codes_and_controls_verbatim(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "web1", "--", SCRIPT, env=WIDE)
    assert p.returncode == 0, p.stderr
    assert "\n".join(f"    {x}" for x in VERBATIM) + "\n" in p.stdout, p.stdout
    assert "\x1b" not in p.stdout and "\r" not in p.stdout and "\x00" not in p.stdout
    doc = json.loads(reops("exec", "-i", str(lab.inventory), "web1", "-o", "json", "--",
                           SCRIPT).stdout)
    assert doc["successful"][0]["out"] == (
        "root:x:0:0:root:/root:/bin/bash\n[bold]b[/] [link=http://e.x]l[/link]\n"
        ":thumbs_up: :x:\nclear\x1b[2Jhere\rcr nul\x00end\n")  # json: the exact text


def test_stream_prints_markup_emoji_codes_and_controls_verbatim(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "web1", "--stream", "--", SCRIPT, env=WIDE)
    assert p.returncode == 0, p.stderr
    for text in VERBATIM:
        assert f"web1 │ {text}\n" in p.stdout, p.stdout
    assert "\x1b" not in p.stdout and "\r" not in p.stdout


def test_files_grep_table_shows_matches_verbatim(lab: LabInfo) -> None:
    target = f"/tmp/reops-grep-{uuid.uuid4().hex}"  # written on the host: its own /tmp
    inv = str(lab.inventory)
    made = reops("exec", "-i", inv, "web1", "--",
                 f"printf 'root:x:0:0:[bold]root[/]:/root:/bin/bash\\nnobody:x:1:\\n' > {target}")
    assert made.returncode == 0, made.stdout + made.stderr
    try:
        p = reops("files", "grep", "-i", inv, "web1", "^root", target, env=WIDE)
    finally:
        reops("exec", "-i", inv, "web1", "--", f"rm -f {target}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "root:x:0:0:[bold]root[/]:/root:/bin/bash" in p.stdout, p.stdout


# ── 7. nothing hidden silently ────────────────────────────────────────────────────────


def test_cut_output_says_how_many_lines_and_how_to_see_them(lab: LabInfo) -> None:
    inv = str(lab.inventory)
    p = reops("exec", "-i", inv, "web1", "--", "seq", "1", "30")
    assert p.returncode == 0, p.stderr
    assert "    … 20 more lines (--lines N / --full)\n" in p.stdout, p.stdout
    assert "\n".join(f"    {i}" for i in range(21, 31)) in p.stdout
    assert "    20\n" not in p.stdout
    p = reops("exec", "-i", inv, "web1", "--lines", "3", "--", "seq", "1", "30")
    assert "    … 27 more lines (--lines N / --full)\n    28\n    29\n    30\n" in p.stdout
    p = reops("exec", "-i", inv, "web1", "--full", "--", "seq", "1", "30")
    assert "\n".join(f"    {i}" for i in range(1, 31)) in p.stdout and "more line" not in p.stdout


def test_the_executors_own_cut_stays_visible(lab: LabInfo) -> None:
    """max_output keeps the head and the tail; the marker in the middle is always shown."""
    p = reops("exec", "-i", str(lab.inventory), "web1", "--", "seq", "1", "5000",
              env={"REOPS_MAX_OUTPUT": "2000"})
    assert p.returncode == 0, p.stderr
    marker = re.search(r"^    … \[reops: cut (\d+) bytes of stdout; .*\] …$", p.stdout, re.M)
    assert marker is not None, p.stdout
    assert int(marker.group(1)) > 0
    assert re.search(r"^    … \d+ more lines \(--lines N / --full\)$", p.stdout, re.M)
    assert "    5000\n" in p.stdout


# ── 8. dry runs say so ────────────────────────────────────────────────────────────────


def test_dry_run_is_labelled_never_ok(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "web1,web2", "--dry-run", "--", "uptime")
    assert p.returncode == 0, p.stderr
    assert "✔" not in p.stdout and " ok" not in p.stdout, p.stdout
    assert re.search(r"^○ web\[1-2\] \(2\) +exec dry run  uptime$", p.stdout, re.M), p.stdout
    assert "── dry run: 2 hosts, nothing ran" in p.stdout
    p = reops("pkg", "install", "-i", str(lab.inventory), "web1", "nginx", "--dry-run")
    assert "✔" not in p.stdout and "○ web1" in p.stdout and "would run:" in p.stdout, p.stdout
    assert "dry run: 1 host, nothing ran" in p.stdout


# ── 7. Ctrl-C: what finished, then the hosts still running or not started ──────────────


def read_until(p: subprocess.Popen[str], done: Callable[[str], bool]) -> str:
    """Read p's stdout until `done(all read so far)` (bounded); what was read.

    Raw reads on the fd: a buffered readline would hide data from the selector."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    seen = ""
    end = time.monotonic() + DEADLINE_S
    while not done(seen):
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            p.kill()
            raise AssertionError(f"not there within {DEADLINE_S} s: {seen}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"reops ended early: {seen}\n{p.communicate()[1]}")
        seen += chunk.decode(errors="replace")
    return seen


def running(lab: LabInfo, pattern: str) -> int:
    """How many processes match `pattern` on the lab's machine (hosts see one pid space)."""
    out = run(exec_(lab.as_hosts()["web1"], f"pgrep -fc '{pattern}' || true"))
    return int(out.successful[0].out.strip() or 0)


def wait_until(what: Callable[[], bool], why: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not what():
        assert time.monotonic() < end, why
        time.sleep(0.1)  # polling a condition with a deadline, not a pass/fail margin


def _interrupt(lab: LabInfo, *flags: str) -> tuple[str, str, int]:
    """db1..db5 sleep; web2 exits 4; the rest print `fine`. SIGINT once the sleepers run."""
    nap = f"sleep 97.{os.getpid()}{uuid.uuid4().int % 10**8}"
    pattern = f"^{nap}$"  # the sleep itself, not the shell that runs it
    slow = [lab.hosts[f"db{i}"] for i in range(1, 6)]
    cases = "|".join(f'*" {a} "*' for a in slow)
    cmd = (f'case "$SSH_CONNECTION" in {cases}) {nap};; *" {lab.hosts["web2"]} "*) exit 4;; '
           f'esac; echo fine')
    p = subprocess.Popen([sys.executable, "-m", "reops", "exec", "-i", str(lab.inventory),
                          "all", *flags, "--", cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        before = ""
        if "--stream" in flags:  # every host but the sleepers has its ✔/✘ on the screen
            before = read_until(p, lambda seen: seen.count("✔") == 14 and "✘ web2" in seen)
        wait_until(lambda: running(lab, pattern) == 5, "the sleepers never all started")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=DEADLINE_S)
    finally:
        if p.poll() is None:
            p.kill()
    wait_until(lambda: running(lab, pattern) == 0, "sleepers left after Ctrl-C")
    return before + out, err, p.returncode


def test_ctrl_c_prints_what_finished_and_names_what_did_not(lab: LabInfo) -> None:
    out, err, code = _interrupt(lab, "--stream")
    assert code == 130, err
    assert "Traceback" not in err, err
    summary = out.splitlines()[-1]
    assert summary.startswith("── 14 ok · 1 failed (1 exit 4) · 5 not finished · 20 hosts"), out
    assert summary.endswith(" · interrupted · failed: web2 · not finished (running or not "
                            "started): db[1-5]"), out


def test_ctrl_c_without_stream_prints_the_gathered_blocks_first(lab: LabInfo) -> None:
    out, err, code = _interrupt(lab)
    assert code == 130, err
    *blocks, summary = out.splitlines()
    assert summary.endswith("not finished (running or not started): db[1-5]") or (
        re.search(r"not finished \(running or not started\): [^·]*db\[1-5\]", summary)), out
    assert "interrupted" in summary and "20 hosts" in summary, out
    # every host that finished is in a block, in natural order, none of the sleepers
    finished = [b for b in blocks if b.startswith(("✔", "✘"))]
    assert finished and not any("db" in b.split()[1] for b in finished), out


def test_hosts_table_shows_names_and_tags_verbatim(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.toml"
    inv.write_text('[hosts.web1]\naddress = "127.0.0.1"\n'
                   'tags = { note = "[bold]x[/] root:x:0:0:" }\n')
    p = reops("hosts", "-i", str(inv), env=WIDE)
    assert p.returncode == 0, p.stderr
    assert "note=[bold]x[/] root:x:0:0:" in p.stdout, p.stdout
