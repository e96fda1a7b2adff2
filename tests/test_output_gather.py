"""Identical outputs gathered into one block (as ClusterShell's `clubak -b`), hosts in
natural order, failed hosts named in the summary (issue 10, item 7).

Folding and ordering are checked as functions; the rest runs the real `reops` CLI against
the real sshd lab (20 hosts: web1..web10, db1..db5, cache1..cache5).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from reops.lab.fleet import LabInfo
from reops.sinks.natural import fold, natural_sorted

DEADLINE_S = 60.0


def reops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=DEADLINE_S, env={**os.environ, "COLUMNS": "250"})


def heads(stdout: str) -> list[str]:
    """The block headers (`✔ web[1-3] (3) …`), in printed order."""
    return [line for line in stdout.splitlines() if line[:1] in ("✔", "✘", "○")]


def on(lab: LabInfo, names: list[str], then: str, otherwise: str) -> str:
    """A shell command doing `then` on hosts `names` and `otherwise` on the rest."""
    cases = "|".join(f'*" {lab.hosts[n]} "*' for n in names)
    return f'case "$SSH_CONNECTION" in {cases}) {then};; *) {otherwise};; esac'


# ── folding and natural order, as functions ──────────────────────────────────────────


def test_natural_order_counts_numbers() -> None:
    assert natural_sorted(["web10", "web2", "db1", "web1", "cache10", "cache9"]) == [
        "cache9", "cache10", "db1", "web1", "web2", "web10"]


def test_fold_names_like_clustershell() -> None:
    assert fold([f"web{i}" for i in range(1, 11)]) == "web[1-10]"
    assert fold(["web2", "web5", "db1"]) == "db1,web[2,5]"
    assert fold(["web1", "web2", "web3", "web7", "db1.ams", "db2.ams"]) == \
        "db[1-2].ams,web[1-3,7]"
    assert fold(["node01", "node02", "node10"]) == "node[01-02,10]"
    assert fold(["web1", "web1", "bastion"]) == "bastion,web1"
    assert fold([f"web{i}" for i in range(1, 31)], limit=20) == "web[1-20],… +10 more"
    assert fold(["odd[1]", "x"]) == "odd[1],x"  # never folded into something ambiguous


@given(st.sets(st.integers(0, 300), min_size=1, max_size=40))
def test_fold_loses_no_host(numbers: set[int]) -> None:
    folded = fold(f"web{n}" for n in numbers)
    inside = re.fullmatch(r"web\[(.*)\]|web(\d+)", folded)
    assert inside is not None, folded
    got: set[int] = set()
    for part in (inside.group(1) or inside.group(2)).split(","):
        a, _, b = part.partition("-")
        got.update(range(int(a), int(b or a) + 1))
    assert got == numbers


# ── gathering on the lab ─────────────────────────────────────────────────────────────


def test_ten_copies_of_one_error_are_one_block(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "web*", "--",
              "echo 'E: disk full on /var' >&2; exit 2")
    assert p.returncode == 1
    assert heads(p.stdout) == [next(h for h in heads(p.stdout))]  # one block
    assert re.match(r"✘ web\[1-10\] \(10\) +exec ≤\d+\.\d+s exit 2  E: disk full on /var$",
                    heads(p.stdout)[0]), p.stdout
    assert p.stdout.count("E: disk full") == 1
    assert "10 failed (10 exit 2) · 10 hosts" in p.stdout and "failed: web[1-10]" in p.stdout


def test_status_and_exit_code_are_part_of_the_key(lab: LabInfo) -> None:
    """Same text, ok vs failed vs another exit code: three blocks, never merged."""
    cmd = on(lab, ["web2"], "echo same; exit 1", on(lab, ["web3"], "echo same; exit 5",
                                                     "echo same"))
    p = reops("exec", "-i", str(lab.inventory), "web1,web2,web3,web4", "--", cmd)
    assert p.returncode == 1
    got = [" ".join(h.split()[:2]) for h in heads(p.stdout)]
    assert got == ["✔ web[1,4]", "✘ web2", "✘ web3"], p.stdout
    assert "failed: web[2-3]" in p.stdout


def test_differing_outputs_stay_apart_in_natural_order(lab: LabInfo) -> None:
    cmd = on(lab, ["web10", "db2"], "echo B", "echo A")
    p = reops("exec", "-i", str(lab.inventory), "web2,web10,web1,db2,db1", "--", cmd)
    assert p.returncode == 0, p.stderr
    got = [h.split()[1] for h in heads(p.stdout)]
    assert got == ["db1,web[1-2]", "db2,web10"], p.stdout  # by each block's first host
    assert heads(p.stdout)[0].endswith("  A") and heads(p.stdout)[1].endswith("  B")


def test_no_gather_gives_each_host_its_block_in_natural_order(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "all", "--no-gather", "--", "echo same")
    assert p.returncode == 0, p.stderr
    got = [h.split()[1] for h in heads(p.stdout)]
    assert got == natural_sorted(lab.hosts) and got.index("web2") < got.index("web10")
    assert len(got) == 20 and p.stdout.count("  same\n") == 20


def test_stream_shows_each_host_as_it_finishes_not_gathered(lab: LabInfo) -> None:
    """--stream: the lines were already shown as they came; gathering would hold back the
    very output --stream is for, so every host keeps its own ✔/✘ row; the summary still
    names the failed hosts."""
    p = reops("exec", "-i", str(lab.inventory), "web*", "--stream", "--",
              on(lab, ["web3"], "echo same; exit 6", "echo same"))
    assert p.returncode == 1, p.stderr
    assert p.stdout.count(" │ same\n") == 10
    assert sorted(h.split()[1] for h in heads(p.stdout)) == sorted(
        f"web{i}" for i in range(1, 11))
    assert p.stdout.splitlines()[-1].endswith(" · failed: web3"), p.stdout


def test_op_views_gather_too_and_tables_keep_every_host(lab: LabInfo) -> None:
    p = reops("facts", "-i", str(lab.inventory), "web1,web2,web10", "os")
    assert p.returncode == 0, p.stderr
    assert [h.split()[1:3] for h in heads(p.stdout)] == [["web[1-2,10]", "(3)"]], p.stdout
    rows = [line.split()[0] for line in p.stdout.splitlines()
            if line.startswith("web")]
    assert rows == ["web1", "web2", "web10"], p.stdout  # the table: a row each, natural order


def test_summary_names_failed_hosts_up_to_a_limit(lab: LabInfo) -> None:
    p = reops("exec", "-i", str(lab.inventory), "all", "--",
              on(lab, ["web2", "web5", "db1"], "exit 3", "true"))
    assert p.returncode == 1
    summary = p.stdout.splitlines()[-1]
    assert "17 ok · 3 failed (3 exit 3) · 20 hosts" in summary
    assert summary.endswith(" · failed: db1,web[2,5]"), summary
    p = reops("exec", "-i", str(lab.inventory), "all", "--", "exit 9")
    assert p.stdout.splitlines()[-1].endswith(
        " · failed: cache[1-5],db[1-5],web[1-10]"), p.stdout


def test_summary_counts_the_failed_hosts_beyond_the_limit() -> None:
    import io

    import reactivex

    from reops import Host, Hosts, Result, Stream, pretty, run
    from reops.sinks.terminal import SUMMARY_NAMES

    names = [f"h{i}" for i in range(1, SUMMARY_NAMES + 11)]
    hosts = Hosts(Host(name=n, address="10.9.0.1") for n in names)
    results = [Result(host=n, op="exec", status="failed", code=1) for n in reversed(names)]

    def subscribe(observer, scheduler=None):  # type: ignore[no-untyped-def]
        for r in results:
            observer.on_next(r)
        observer.on_completed()

    buf = io.StringIO()
    run(Stream(reactivex.create(subscribe), hosts) | pretty(file=buf, progress=False))
    summary = buf.getvalue().splitlines()[-1]
    assert summary.endswith(f" · failed: h[1-{SUMMARY_NAMES}],… +10 more"), summary
