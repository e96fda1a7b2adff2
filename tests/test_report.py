"""`reops report` / `report()`: rendered from a generated run history (tests/history_data.py).

What is proved: every plot is on the page; the header's numbers are those polars computes on
the same data; host output in the failures table is escaped, never markup; an empty period
gives a valid page saying "no runs"; the CLI writes the page from the history dataset and
rejects a bad --since in one line; and the page opens in headless Chromium — with no network
(own network namespace when root, a dead proxy, no name resolution) — where plotly's inlined
JS draws every plot (its `main-svg` inside each plot div) and a screenshot is a valid PNG.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from history_data import generate, scan_history, write_history

from reops.sinks.report import METRICS, report, write_report

END = datetime(2026, 11, 20, 12, tzinfo=UTC)
PLOTS = ("failures-host", "failures-op", "durations-op", "slowest-hosts",
         *(m[0] for m in METRICS))
TITLES = ("Failures per host over time", "Failures per op over time",
          "Duration percentiles per op", "Slowest hosts (top 20 by p95)", "CPU busy over time",
          "Memory used over time", "Load over time", "Latest failures")
CHROMIUM = shutil.which("chromium")
CHROMIUM_S = 120


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A week of history (20,000 Results on 24 hosts) written as the parquet dataset."""
    root = tmp_path_factory.mktemp("history")
    return write_history(generate(20_000, days=7, end=END), root)


@pytest.fixture(scope="module")
def page(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return report(scan_history(dataset), tmp_path_factory.mktemp("out") / "report.html")


def section(text: str, sid: str) -> str:
    """The HTML of <section id=sid> … </section>."""
    m = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def stat(text: str, name: str) -> str:
    m = re.search(rf'<div class="card" id="stat-{name}"><div class="v">([^<]*)</div>', text)
    assert m, f"no header number {name}"
    return m.group(1)


def test_every_plot_is_on_the_page_with_plotly_inlined_once(page: Path) -> None:
    text = page.read_text()
    for sid in PLOTS:
        body = section(text, sid)
        assert f'id="plot-{sid}"' in body and "Plotly.newPlot" in body, sid
    for title in TITLES:
        assert f"<h2>{title}</h2>" in text
    from plotly.offline import get_plotlyjs

    assert text.count(get_plotlyjs()[-2000:]) == 1  # the library once, not once per plot
    # plots carry aggregated series, not rows: the page is about the size of plotly.js
    assert page.stat().st_size < len(get_plotlyjs()) + 600_000


def test_header_numbers_match_polars(dataset: Path, page: Path) -> None:
    text = page.read_text()
    want = scan_history(dataset).select(
        runs=pl.col("run_id").n_unique(), results=pl.len(), hosts=pl.col("host").n_unique(),
        failures=(pl.col("status") != "ok").sum(), first=pl.col("started_at").min(),
        last=pl.col("started_at").max()).collect().row(0, named=True)
    assert stat(text, "runs") == f"{want['runs']:,}"
    assert stat(text, "results") == f"{want['results']:,}" == "20,000"
    assert stat(text, "hosts") == f"{want['hosts']:,}" == "24"
    assert stat(text, "failures") == f"{want['failures']:,}"
    assert stat(text, "failure-rate") == f"{100 * want['failures'] / want['results']:.1f}%"
    period = re.search(r'<p class="period" id="period">([^<]*)</p>', text)
    assert period and period.group(1) == (f"{want['first']:%Y-%m-%d %H:%M:%S} → "
                                          f"{want['last']:%Y-%m-%d %H:%M:%S} UTC")


def test_slowest_hosts_and_flaky_hosts_come_first(dataset: Path, page: Path) -> None:
    """The plots' series are the polars aggregates: the host with the highest p95 leads."""
    lf = scan_history(dataset).filter(pl.col("status") != "unreachable")
    slowest = (lf.group_by("host").agg(p95=pl.col("duration_s").quantile(0.95, "linear"))
               .sort("p95", descending=True).collect()["host"][0])
    body = section(page.read_text(), "slowest-hosts")
    # horizontal bars are drawn bottom-up, so the slowest host is the last label of a trace
    labels = re.search(r'"y":\[([^\]]*)\]', body)
    assert labels and labels.group(1).split(",")[-1] == f'"{slowest}"'


def test_latest_failures_escape_host_output(dataset: Path, tmp_path: Path) -> None:
    evil = scan_history(dataset).drop("day").collect().tail(1).with_columns(
        host=pl.lit("web<b>1"), op=pl.lit("</script><script>alert(2)</script>"),
        status=pl.lit("failed"), code=pl.lit(1, pl.Int32),
        started_at=pl.lit(END + timedelta(hours=1)).dt.cast_time_unit("us"),
        err=pl.lit("<script>alert('owned')</script> & more\nsecond line"))
    frame = pl.concat([scan_history(dataset).drop("day").collect(), evil])
    text = report(frame, tmp_path / "r.html").read_text()
    table = section(text, "latest-failures")
    row = re.search(r"<tbody><tr>(.*?)</tr>", table, re.S)  # newest first
    assert row, table[:500]
    assert "<td>web&lt;b&gt;1</td>" in row.group(1)
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt; &amp; more" in row.group(1)
    assert "second line" not in row.group(1)
    assert "<script>alert" not in text and "alert('owned')" not in text
    # the op name went into the plots' JSON too, escaped there by plotly
    assert "</script><script>alert(2)" not in text


def test_an_empty_period_says_no_runs(tmp_path: Path) -> None:
    empty = generate(100, end=END).clear().lazy()
    path, summary = write_report(empty, tmp_path / "empty.html")
    text = path.read_text()
    assert summary.results == 0 and summary.line() == "no runs in this period"
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert 'id="no-runs"' in text and stat(text, "results") == "0"
    assert "Plotly" not in text  # nothing to draw: no 5 MB of JS either


def test_a_frame_without_the_history_columns_is_one_clear_error(tmp_path: Path) -> None:
    frame = generate(100, end=END).drop("duration_s", "data")
    with pytest.raises(ValueError) as e:
        report(frame, tmp_path / "r.html")
    assert str(e.value) == ("report: the frame has no column 'duration_s', 'data'; give it "
                            "the run history's columns (reops.history() returns them)")
    assert not (tmp_path / "r.html").exists()


def test_no_metrics_collected_says_so(dataset: Path, tmp_path: Path) -> None:
    frame = scan_history(dataset).filter(pl.col("op") != "metrics")
    text = report(frame, tmp_path / "r.html").read_text()
    for sid, *_ in METRICS:
        assert "no metrics collected in this period" in section(text, sid)
        assert "Plotly.newPlot" not in section(text, sid)
    assert "Plotly.newPlot" in section(text, "failures-host")


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops.cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_cli_writes_the_report_from_the_history(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    root = write_history(generate(3_000, days=3, end=now), tmp_path / "history")
    env = {**os.environ, "REOPS_HISTORY_PATH": str(root), "REOPS_HOME": str(tmp_path)}
    done = cli("report", "--since", "7d", "-o", "out/week.html", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "out" / "week.html"
    want = scan_history(root).select(runs=pl.col("run_id").n_unique(), n=pl.len(),
                                     bad=(pl.col("status") != "ok").sum()).collect()
    runs, n, bad = want.row(0)
    assert done.stdout.startswith(f"{path.relative_to(tmp_path)}: {n:,} results in {runs:,} "
                                  f"runs on 24 hosts, {100 * bad / n:.1f}% failed")
    assert len(done.stdout.splitlines()) == 1
    assert stat(path.read_text(), "results") == f"{n:,}"
    # a shorter window reads fewer Results
    done = cli("report", "--since", "1h", "-o", "hour.html", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat((tmp_path / "hour.html").read_text(), "results") != f"{n:,}"


def test_cli_on_an_empty_history_says_no_runs(tmp_path: Path) -> None:
    env = {**os.environ, "REOPS_HISTORY_PATH": str(tmp_path / "none-yet"),
           "REOPS_HOME": str(tmp_path)}
    done = cli("report", "-o", "r.html", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "r.html: no runs in this period\n"
    assert 'id="no-runs"' in (tmp_path / "r.html").read_text()


def test_cli_bad_since_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "REOPS_HISTORY_PATH": str(tmp_path / "h")}
    done = cli("report", "--since", "last week", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("reops: error: --since: 'last week' is not a duration")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "report.html").exists()


# ── a real browser ──────────────────────────────────────────────────────────────────


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on `page` with no way out: its own network namespace when root,
    a proxy that is a closed port, and no name resolution."""
    cmd = [CHROMIUM or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--no-first-run", "--disable-background-networking", "--disable-extensions",
           f"--user-data-dir={page.parent / 'chromium-profile'}",
           "--virtual-time-budget=10000", "--window-size=1280,4200", "--hide-scrollbars",
           *args, page.as_uri()]
    if os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "--net", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_S,
                          stdin=subprocess.DEVNULL)


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.geteuid() != 0,
    reason="chromium is not installed (make installs it as root: apt-get install chromium)")


def test_no_external_resource_in_the_page(page: Path) -> None:
    from plotly.offline import get_plotlyjs

    text = page.read_text()
    assert "<script src" not in text and "<link" not in text and "<iframe" not in text
    # outside the inlined library (whose source mentions map tile servers), no URL at all
    rest = text.replace(get_plotlyjs(), "")
    assert not re.search(r"https?://", rest), re.search(r".{60}https?://.{60}", rest)
    assert "cdn.plot.ly" not in rest


@needs_chromium
def test_opens_in_headless_chromium_and_draws_every_plot(page: Path, tmp_path: Path) -> None:
    assert CHROMIUM, "chromium is missing: apt-get install -y chromium (make test does)"
    done = chromium(page, "--dump-dom")
    dom = done.stdout
    assert "reops report" in dom, done.stderr[-2000:]
    assert 'class="js-error"' not in dom, re.search(r'class="js-error">[^<]*', dom)
    for sid in PLOTS:  # plotly's JS ran and drew each one
        assert 'class="main-svg"' in section(dom, sid), sid
    shot = tmp_path / "shot.png"
    done = chromium(page, f"--screenshot={shot}")
    assert shot.exists(), done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 4200) and len(data) > 50_000


@needs_chromium
def test_a_broken_script_shows_in_the_dom(page: Path, tmp_path: Path) -> None:
    """The check above can fail: without plotly's JS nothing is drawn, and the error shows."""
    assert CHROMIUM
    from plotly.offline import get_plotlyjs

    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace(get_plotlyjs(), "throw new Error('no plotly')"))
    dom = chromium(broken, "--dump-dom").stdout
    assert 'class="js-error"' in dom and "no plotly" in dom
    assert 'class="main-svg"' not in section(dom, "failures-host")


def figure(text: str, sid: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The data and layout plotly draws in section `sid` (the JSON of its newPlot call)."""
    body = section(text, sid)
    call = re.search(rf'Plotly\.newPlot\(\s*"plot-{sid}",\s*', body)
    assert call, f"no plot in {sid}"
    decoder = json.JSONDecoder()
    rest = body[call.end():]
    data, end = decoder.raw_decode(rest)
    layout, _ = decoder.raw_decode(rest[end:].lstrip(", \n"))
    return data, layout


def test_the_host_menu_shows_each_hosts_own_failures(dataset: Path, page: Path) -> None:
    """Picking a host in the menu shows exactly that host's failures, as polars counts them."""
    per_host = dict(scan_history(dataset).filter(pl.col("status") != "ok")
                    .group_by("host").len().collect().iter_rows())
    data, layout = figure(page.read_text(), "failures-host")
    buttons = layout["updatemenus"][0]["buttons"]
    assert buttons[0]["label"] == "all hosts"
    worst = max(per_host, key=lambda h: (per_host[h], h))
    assert buttons[1]["label"] == worst
    for button in buttons:
        visible = button["args"][0]["visible"]
        shown = sum(sum(t["y"]) for t, v in zip(data, visible, strict=True)
                    if v and t.get("orientation") != "h")
        want = (sum(per_host.values()) if button["label"] == "all hosts"
                else per_host[button["label"]])
        assert shown == want, button["label"]
    # the side chart: totals of the top hosts, stacked by status
    side = [t for t in data if t.get("orientation") == "h"]
    totals: dict[str, int] = {}
    for t in side:
        for n, host in zip(t["x"], t["y"], strict=True):
            totals[host] = totals.get(host, 0) + n
    assert totals == {h: per_host[h] for h in totals} and len(totals) == min(20, len(per_host))
