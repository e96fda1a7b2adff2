"""How a `--check` run reads in the terminal (issue 10, items 6-8): per block of hosts
`would change` / `no change` (never `changed`: nothing changed), each diff whole and
verbatim with controls made visible, and ONE summary line
`check: 3 would change · 17 no change · 0 errors`; `-o json` stays the Outcome.

The lab tests run the real `reops` CLI against the real sshd lab; /opt is each lab host's
own overlay, so hosts can hold different files at the same path.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import uuid

import pytest

from reops.core.model import Outcome, Result
from reops.lab.fleet import LabInfo
from reops.sinks import check_view
from reops.sinks.terminal import Printer

T = r"\d+\.\d\d"  # a duration


def reops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def opt_dir(lab: LabInfo) -> str:
    """A fresh directory under /opt on every lab host (per-host overlays; needs sudo)."""
    if lab.become_pass_file is None:
        pytest.skip("the lab's sudo users need root")
    path = f"/opt/reops-check-view-{uuid.uuid4().hex[:8]}"
    p = reops("exec", "-i", str(lab.inventory), "all", "--sudo", "--",
              f"mkdir {path} && chmod 777 {path}")
    assert p.returncode == 0, p.stdout + p.stderr
    return path


def test_check_says_would_change_no_change_with_the_diffs_and_one_summary(
        lab: LabInfo, opt_dir: str, tmp_path: object) -> None:
    inv, conf = str(lab.inventory), f"{opt_dir}/app.conf"
    src = f"{tmp_path}/app.conf.tmpl"
    with open(src, "w") as f:
        f.write("listen = $port\n")
    assert reops("exec", "-i", inv, "all", "--", f"printf 'listen = 2\\n' > {conf}"
                 ).returncode == 0
    assert reops("exec", "-i", inv, "web[1-3]", "--", f"printf 'listen = 1\\n' > {conf}"
                 ).returncode == 0

    p = reops("files", "template", "-i", inv, "all", src, conf, "--vars", "port=2", "--check")
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert re.fullmatch(rf"✔ cache\[1-5\],db\[1-5\],web\[4-10\] \(17\) files\.template ≤{T}s "
                        r"no change", lines[0]), lines
    for i, web in enumerate(("web1", "web2", "web3")):
        block = lines[1 + 6 * i: 7 + 6 * i]
        assert re.fullmatch(rf"✔ {web} +files\.template {T}s would change", block[0]), block
        assert block[1:] == [f"    --- {web}:{conf} (now)", f"    +++ {web}:{conf} (wanted)",
                             "    @@ -1 +1 @@", "    -listen = 1", "    +listen = 2"]
    assert re.fullmatch(rf"── check: 3 would change · 17 no change · 0 errors · 20 hosts · {T} s",
                        lines[19]), lines
    assert len(lines) == 20 and "changed" not in p.stdout
    assert p.stdout.count("check:") == 1  # printed once: by the terminal sink, not the CLI

    # -o json: the Outcome alone (no pretty lines, no summary), the same answers
    p = reops("files", "template", "-i", inv, "all", src, conf, "--vars", "port=2", "--check",
              "-o", "json")
    assert p.returncode == 1 and p.stderr == ""
    doc = json.loads(p.stdout)
    assert sorted(h for h, c in doc["check"].items() if c["changes"]) == ["web1", "web2", "web3"]
    # nothing was written
    p = reops("exec", "-i", inv, "web[1-3]", "--", f"cat {conf}")
    assert p.stdout.splitlines()[0].endswith("  listen = 1"), p.stdout


def test_identical_answers_gather_and_a_long_diff_is_not_cut(
        lab: LabInfo, opt_dir: str, tmp_path: object) -> None:
    inv = str(lab.inventory)
    p = reops("exec", "-i", inv, "all", "--check", "--", "touch", f"{opt_dir}/ran")
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.fullmatch(
        rf"✔ cache\[1-5\],db\[1-5\],web\[1-10\] \(20\) exec ≤{T}s would change  "
        rf"exec: would run \(cannot be checked\)\n"
        rf"── check: 20 would change · 0 no change · 0 errors · 20 hosts · {T} s\n", p.stdout)

    src = f"{tmp_path}/long.tmpl"
    with open(src, "w") as f:
        f.write("".join(f"line {i}\n" for i in range(30)))
    p = reops("files", "template", "-i", inv, "db1", src, f"{opt_dir}/long.conf", "--check")
    assert p.returncode == 1, p.stdout + p.stderr
    body = p.stdout.splitlines()[1:-1]
    assert body[:4] == [f"    would create db1:{opt_dir}/long.conf", "    --- /dev/null",
                        f"    +++ db1:{opt_dir}/long.conf (wanted)", "    @@ -0,0 +1,30 @@"]
    assert body[4:] == [f"    +line {i}" for i in range(30)]  # all 30, no "… N more lines"


def test_a_diff_with_terminal_controls_shows_them_escaped(
        lab: LabInfo, opt_dir: str, tmp_path: object) -> None:
    src = f"{tmp_path}/evil.tmpl"
    with open(src, "w") as f:
        f.write("a\x1b[2J\x1b]0;owned\x07b\rc\u202ed\n")
    conf = f"{opt_dir}/evil.conf"
    p = reops("files", "template", "-i", str(lab.inventory), "web1", src, conf, "--check")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "\x1b" not in p.stdout and "\r" not in p.stdout and "\u202e" not in p.stdout
    lines = p.stdout.splitlines()  # (the diff splits lines at \r, as difflib does)
    assert lines[-3:-1] == ["    +a^[[2J^[]0;owned^Gb", "    +c<U+202E>d"], lines
    # -o json keeps the exact text
    p = reops("files", "template", "-i", str(lab.inventory), "web1", src, conf, "--check",
              "-o", "json")
    diff = json.loads(p.stdout)["check"]["web1"]["diff"]
    assert diff.endswith("\n+a\x1b[2J\x1b]0;owned\x07b\n+c\u202ed"), repr(diff)


def test_hosts_that_cannot_answer_are_errors(lab: LabInfo) -> None:
    p = reops("service", "start", "-i", str(lab.inventory), "web[1-2]", "reops-no-such-unit",
              "--check")
    assert p.returncode == 2, p.stdout + p.stderr
    last = p.stdout.splitlines()[-1]
    assert re.fullmatch(rf"── check: 0 would change · 0 no change · 2 errors · 2 hosts · {T} s"
                        r" · failed: web\[1-2\]", last), p.stdout


def _check_result(host: str, changes: bool | None, diff: str = "") -> Result:
    if changes is None:
        return Result(host=host, op="files.template", status="failed", code=2,
                      err="cannot read\x1b[2J it\n")
    return Result(host=host, op="files.template", status="ok", code=0, changed=changes,
                  out=diff or "no change", data={"check": {"changes": changes, "diff": diff}})


EVIL = "web\x1b[2J9"
RESULTS = [_check_result(f"web{i}", True, "+x\x1b[31m\n") for i in (1, 2, 3, 10)] + [
    _check_result(f"db{i}", False) for i in range(1, 6)] + [
    _check_result(EVIL, None), _check_result("cache1", None)]


def test_check_view_of_an_outcome_folds_and_escapes() -> None:
    """`check_view.blocks/summary` (for code holding an Outcome): host lists folded in
    natural order, names and diffs with controls made visible."""
    out = Outcome.of(RESULTS)
    assert check_view.summary(out) == ("check: 4 would change · 5 no change · 2 errors · "
                                       "errors: cache1,web^[[2J9")
    assert check_view.blocks(out).splitlines() == [
        "cache1,web^[[2J9 (2): error: cannot read^[[2J it",
        "db[1-5] (5): no change",
        "web[1-3,10] (4): would change",
        "+x^[[31m",
    ]
    assert check_view.lines(out, EVIL) == ["web^[[2J9: cannot read^[[2J it"]
    assert check_view.lines(out, "web10") == ["web10: would change", "+x^[[31m"]


def test_terminal_sink_of_a_check_run_escapes_host_names() -> None:
    buf = io.StringIO()
    p = Printer(file=buf, progress=False, check=True, hosts=[r.host for r in RESULTS])
    for r in RESULTS:
        p.result(r)
    p.flush()
    p.summary()
    text = buf.getvalue()
    assert "\x1b" not in text
    rows = [re.sub(r"\d+\.\d\d", "T", " ".join(x.split())) for x in text.splitlines()]
    assert rows == [
        "✘ cache1,web^[[2J9 (2) files.template ≤Ts exit 2 cannot read^[[2J it",
        "✔ db[1-5] (5) files.template ≤Ts no change",
        "✔ web[1-3,10] (4) files.template ≤Ts would change +x^[[31m",
        "── check: 4 would change · 5 no change · 2 errors · 11 hosts · T s · failed: "
        "cache1,web^[[2J9",
    ]
