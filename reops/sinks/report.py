"""`report()`: one self-contained HTML page about past runs, with plots, readable offline.

    report("7d", "report.html")                  # the run history of the last 7 days
    report(history(since="1d").filter(pl.col("host").str.starts_with("web")), "web.html")

The page has a header (period, runs, Results, hosts, failure rate), failures per host and per
op over time stacked by status, duration percentiles per op, the slowest hosts by p95, cpu /
memory / load over time where metrics were collected, and the latest failures.

Why plotly: one well-kept library (MIT, plotly.js inside the Python wheel) gives interactive
charts — hover, zoom, a dropdown to pick one host or op — and its JavaScript is inlined ONCE in
the page's <head>, so the file opens offline with no CDN and no extra tool (altair would need
vl-convert, a second native package, to inline vega's JS). Its JSON escapes `<` `/` `>`, so a
host or op name can never close the <script> it sits in; the failures table is HTML-escaped.

Why polars first: every plot gets an aggregated series (time buckets, percentiles, top N),
computed lazily in one `collect_all` over the frame, never raw rows: 10^6 Results render in a
few seconds and the page stays about the size of plotly.js (~5 MB) whatever the history holds.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from reops.core.durations import seconds

#: ops whose `data` is a reops.ops.metrics.Metrics sample
METRIC_OPS = ("metrics", "collect")
#: failure statuses, in stacking order, with their colours
STATUS_COLORS = {"failed": "#d62728", "unreachable": "#9467bd", "timeout": "#ff7f0e",
                 "lost": "#8c564b", "error": "#7f7f7f"}
#: time buckets to choose from (at most MAX_BUCKETS bars over the period)
_BUCKETS = (("1s", 1), ("10s", 10), ("1m", 60), ("5m", 300), ("15m", 900), ("1h", 3600),
            ("3h", 10800), ("6h", 21600), ("12h", 43200), ("1d", 86400), ("7d", 604800))
MAX_BUCKETS = 60
#: lines per metrics plot, at most (more hosts make a plot nobody can read)
METRICS_TOP = 10
#: metrics plotted: (div id, title, JSON path in `data`, y-axis label)
METRICS = (("metrics-cpu", "CPU busy over time", "$.cpu.busy_pct", "cpu busy %"),
           ("metrics-memory", "Memory used over time", "$.memory.used_pct", "memory used %"),
           ("metrics-load", "Load over time", "$.load.load1", "load (1 min)"))
_FAILED = pl.col("status") != "ok"
#: the history columns the report reads
NEEDED = ("run_id", "host", "op", "status", "code", "started_at", "duration_s", "out", "err",
          "data")


@dataclass(frozen=True)
class Summary:
    """The header's numbers: what the report covers."""

    start: datetime | None
    end: datetime | None
    runs: int
    results: int
    hosts: int
    failures: int

    @property
    def failure_rate(self) -> float:
        """The share of Results whose status is not ok (0.0 without Results)."""
        return self.failures / self.results if self.results else 0.0

    def line(self) -> str:
        """One line for a terminal."""
        if not self.results:
            return "no runs in this period"
        return (f"{self.results:,} results in {self.runs:,} runs on {self.hosts:,} hosts, "
                f"{100 * self.failure_rate:.1f}% failed ({_when(self.start)} → "
                f"{_when(self.end)})")


def report(frame_or_since: pl.LazyFrame | pl.DataFrame | str | float = "7d",
           path: str | Path = "report.html", *, top: int = 20) -> Path:
    """Write the HTML report of a history frame, or of the history since e.g. "7d"; its path."""
    return write_report(frame_or_since, path, top=top)[0]


def write_report(frame_or_since: pl.LazyFrame | pl.DataFrame | str | float = "7d",
                 path: str | Path = "report.html", *, top: int = 20,
                 now: datetime | None = None) -> tuple[Path, Summary]:
    """`report()`, also giving the Summary (the CLI prints it). Bad `since`: ValueError."""
    if isinstance(frame_or_since, pl.DataFrame):
        frame_or_since = frame_or_since.lazy()
    if isinstance(frame_or_since, pl.LazyFrame):
        frame, since_label = frame_or_since, None
    else:
        window = timedelta(seconds=seconds(frame_or_since, "since"))
        frame, since_label = _history(frame_or_since), str(frame_or_since)
        now = now or datetime.now(UTC)
        frame = frame.filter(pl.col("started_at") >= now - window)
    page, summary = render(frame, since_label=since_label, top=top)
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a report
    return out, summary


def _history(since: str | float) -> pl.LazyFrame:
    """The run history since `since` (reops.sinks.history, the same layer)."""
    from reops.sinks import history as _h

    lazy: pl.LazyFrame = _h.history(since=since)
    return lazy


def render(frame: pl.LazyFrame, *, since_label: str | None = None,
           top: int = 20) -> tuple[str, Summary]:
    """The report page for `frame` (history schema) as HTML text, and its Summary."""
    _check_columns(frame)
    head = frame.select(
        results=pl.len(), runs=pl.col("run_id").n_unique(), hosts=pl.col("host").n_unique(),
        failures=_FAILED.sum(), start=pl.col("started_at").min(),
        end=pl.col("started_at").max()).collect().row(0, named=True)
    summary = Summary(start=head["start"], end=head["end"], runs=head["runs"] or 0,
                      results=head["results"] or 0, hosts=head["hosts"] or 0,
                      failures=head["failures"] or 0)
    if not summary.results:
        return _page(summary, since_label, [], ""), summary
    assert summary.start is not None and summary.end is not None
    sections = _sections(frame, _TimeAxis.over(summary.start, summary.end), top)
    return _page(summary, since_label, sections, _plotly_js()), summary


def _check_columns(frame: pl.LazyFrame) -> None:
    """A frame without the history's columns: one line naming what is missing."""
    have = frame.collect_schema()
    missing = [c for c in NEEDED if c not in have]
    if missing:
        raise ValueError(f"report: the frame has no column {', '.join(map(repr, missing))}; "
                         "give it the run history's columns (reops.history() returns them)")
    if not isinstance(have["started_at"], pl.Datetime):
        raise ValueError(f"report: started_at must be a Datetime, not {have['started_at']}")


@dataclass(frozen=True)
class Section:
    """One part of the page: a title, a short note and its body (a plot div or a table)."""

    id: str
    title: str
    note: str
    body: str


@dataclass(frozen=True)
class _TimeAxis:
    """The time buckets of the over-time plots and the x range they span."""

    every: str
    size_s: int
    first: datetime
    last: datetime

    @classmethod
    def over(cls, start: datetime, end: datetime) -> _TimeAxis:
        """The smallest bucket that cuts start..end into at most MAX_BUCKETS bars."""
        span = (end - start).total_seconds()
        every, size = next(((n, s) for n, s in _BUCKETS if span / s <= MAX_BUCKETS),
                           _BUCKETS[-1])
        first = pl.select(pl.lit(start).dt.truncate(every)).item()
        return cls(every, size, first, end)

    def xaxis(self) -> dict[str, Any]:
        """Every bucket shown, even a lone one (plotly would zoom into its width)."""
        pad = timedelta(seconds=self.size_s)
        return {"type": "date", "range": [self.first - pad / 2, self.last + pad]}

    @property
    def bar_ms(self) -> float:
        return self.size_s * 1000 * 0.9


def _sections(frame: pl.LazyFrame, axis: _TimeAxis, top: int) -> list[Section]:
    every = axis.every
    bucket = pl.col("started_at").dt.truncate(every).alias("at")
    failed = frame.filter(_FAILED)
    started = frame.filter(pl.col("status") != "unreachable")
    metrics = frame.filter(pl.col("op").is_in(METRIC_OPS) & pl.col("data").is_not_null())
    queries = [
        failed.group_by(bucket, "host", "status").agg(n=pl.len()),
        failed.group_by(bucket, "op", "status").agg(n=pl.len()),
        started.group_by("op").agg(*_percentiles()),
        started.group_by("host").agg(*_percentiles()).top_k(top, by="p95"),
        metrics.select(bucket, "host", *(
            pl.col("data").str.json_path_match(p).cast(pl.Float64, strict=False).alias(i)
            for i, _, p, _ in METRICS)).group_by("at", "host").agg(
            *(pl.col(i).mean() for i, *_ in METRICS)),
        failed.top_k(top, by="started_at").select(
            "started_at", "host", "op", "status", "code", "err", "out"),
    ]
    by_host, by_op, per_op, slow_hosts, samples, latest = pl.collect_all(queries)
    out = [
        Section("failures-host", "Failures per host over time",
                f"Results that were not ok, per {every}, stacked by status; pick a host in "
                f"the menu. Right: the {top} hosts with the most failures.",
                _failures_figure(by_host, "host", "failures-host", top, axis)),
        Section("failures-op", "Failures per op over time",
                f"Results that were not ok, per {every}, stacked by status; pick an op in the "
                f"menu. Right: the {top} ops with the most failures.",
                _failures_figure(by_op, "op", "failures-op", top, axis)),
        Section("durations-op", "Duration percentiles per op",
                "p50 / p95 / p99 of duration_s, every Result whose command started "
                "(unreachable ones are left out).",
                _percentile_figure(per_op.sort("p95", descending=True).head(40), "op",
                                   "durations-op", horizontal=False)),
        Section("slowest-hosts", f"Slowest hosts (top {top} by p95)",
                "p50 / p95 / p99 of duration_s per host over every op.",
                _percentile_figure(slow_hosts.sort("p95"), "host", "slowest-hosts",
                                   horizontal=True)),
    ]
    for div_id, title, _, label in METRICS:
        series = samples.select("at", "host", pl.col(div_id).alias("v")).drop_nulls("v")
        lines = min(top, METRICS_TOP)
        note = (f"Mean per {every} of the {lines} hosts with the highest mean {label}, "
                "from metrics samples (reops metrics, collect()).")
        body = (_metrics_figure(series, div_id, label, lines, axis) if series.height else
                '<p class="empty">no metrics collected in this period (reops metrics or '
                "collect() record them)</p>")
        out.append(Section(div_id, title, note, body))
    out.append(Section("latest-failures", "Latest failures",
                       f"The {top} most recent Results that were not ok; the first line of "
                       "err (or of out when err is empty).", _failures_table(latest)))
    return out


def _percentiles() -> list[pl.Expr]:
    d = pl.col("duration_s")
    return [pl.len().alias("n"), d.quantile(0.5, "linear").alias("p50"),
            d.quantile(0.95, "linear").alias("p95"), d.quantile(0.99, "linear").alias("p99")]


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    js: str = get_plotlyjs()
    return js


def _layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "template": "plotly_white", "height": 420,
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "legend": {"orientation": "h", "y": -0.15},
        "font": {"family": "system-ui, sans-serif", "size": 12}}
    layout.update(extra)
    return layout


def _div(fig: Any, div_id: str) -> str:
    html_: str = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{div_id}",
                             default_width="100%", config={"displaylogo": False,
                                                           "responsive": True})
    return html_


def _failures_figure(counts: pl.DataFrame, key: str, div_id: str, top: int,
                     axis: _TimeAxis) -> str:
    """Left: failures over time stacked by status, a menu picks `all` or one key; right:
    the top keys' totals stacked by status."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not counts.height:
        return f'<p class="empty">no failures in this period: every {key} was ok</p>'
    totals = counts.group_by(key).agg(n=pl.col("n").sum()).sort(["n", key],
                                                               descending=[True, False])
    keys = totals.head(top)[key].to_list()
    statuses = [s for s in STATUS_COLORS if s in set(counts["status"].to_list())]
    statuses += sorted(set(counts["status"].to_list()) - set(statuses))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.68, 0.32], horizontal_spacing=0.1,
                        subplot_titles=("over time", f"total per {key} (top {len(keys)})"))
    choices: list[str | None] = [None, *keys]
    owner: list[int] = []  # which choice each over-time trace belongs to (-1: always shown)
    for c, choice in enumerate(choices):
        rows = counts if choice is None else counts.filter(pl.col(key) == choice)
        per_status = rows.group_by("at", "status").agg(n=pl.col("n").sum()).sort("at")
        for status in statuses:
            one = per_status.filter(pl.col("status") == status)
            if not one.height:
                continue
            fig.add_trace(go.Bar(x=one["at"].to_list(), y=one["n"].to_list(), name=status,
                                 width=axis.bar_ms,
                                 legendgroup=status, visible=c == 0, showlegend=True,
                                 marker_color=STATUS_COLORS.get(status)), row=1, col=1)
            owner.append(c)
    top_rows = counts.filter(pl.col(key).is_in(keys)).group_by(key, "status").agg(
        n=pl.col("n").sum())
    rank = {k: i for i, k in enumerate(keys)}
    for status in statuses:
        one = top_rows.filter(pl.col("status") == status)
        one = one.with_columns(r=pl.col(key).replace_strict(rank, default=0)).sort(
            "r", descending=True)
        if not one.height:
            continue
        fig.add_trace(go.Bar(x=one["n"].to_list(), y=one[key].to_list(), orientation="h",
                             name=status, legendgroup=status, showlegend=False,
                             marker_color=STATUS_COLORS.get(status)), row=1, col=2)
        owner.append(-1)
    buttons = [{"label": f"all {key}s" if choice is None else str(choice), "method": "update",
                "args": [{"visible": [o in (-1, c) for o in owner]}]}
               for c, choice in enumerate(choices)]
    fig.update_layout(**_layout(
        barmode="stack", height=460,
        updatemenus=[{"buttons": buttons, "x": 0.0, "y": 1.18, "xanchor": "left",
                      "direction": "down", "showactive": True}]))
    fig.update_yaxes(title_text="failures", row=1, col=1)
    fig.update_xaxes(**axis.xaxis(), row=1, col=1)
    fig.update_yaxes(type="category", row=1, col=2)
    return _div(fig, div_id)


def _percentile_figure(rows: pl.DataFrame, key: str, div_id: str, *, horizontal: bool) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = rows[key].to_list()
    counts = rows["n"].to_list()
    for name, color in (("p50", "#1f77b4"), ("p95", "#ff7f0e"), ("p99", "#d62728")):
        values = [round(v, 3) for v in rows[name].to_list()]
        xy = {"x": values, "y": labels, "orientation": "h"} if horizontal else \
            {"x": labels, "y": values}
        fig.add_trace(go.Bar(name=name, marker_color=color, customdata=counts,
                             hovertemplate=f"%{{{'y' if horizontal else 'x'}}} {name}: "
                             f"%{{{'x' if horizontal else 'y'}}} s (%{{customdata}} results)"
                             "<extra></extra>", **xy))
    axis = {"title_text": "seconds (log)", "type": "log", "dtick": 1}
    fig.update_layout(**_layout(barmode="group",
                                height=max(420, 22 * len(labels) + 120) if horizontal else 420))
    if horizontal:
        fig.update_xaxes(**axis)
        fig.update_yaxes(type="category")
    else:
        fig.update_yaxes(**axis)
        fig.update_xaxes(type="category")
    return _div(fig, div_id)


def _metrics_figure(series: pl.DataFrame, div_id: str, label: str, top: int,
                    axis: _TimeAxis) -> str:
    import plotly.graph_objects as go

    ranked = series.group_by("host").agg(m=pl.col("v").mean()).sort(
        ["m", "host"], descending=[True, False]).head(top)["host"].to_list()
    fig = go.Figure()
    for host in ranked:
        one = series.filter(pl.col("host") == host).sort("at")
        fig.add_trace(go.Scatter(x=one["at"].to_list(),
                                 y=[round(v, 2) for v in one["v"].to_list()],
                                 mode="lines+markers", marker_size=4, name=host))
    fig.update_xaxes(**axis.xaxis())
    fig.update_layout(**_layout(yaxis_title=label,
                                legend={"orientation": "v", "x": 1.01, "y": 1}))
    return _div(fig, div_id)


def first_line(text: str | None, limit: int = 200) -> str:
    """The first non-blank line of `text`, at most `limit` characters."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:limit] + ("…" if len(line.strip()) > limit else "")
    return ""


def _failures_table(rows: pl.DataFrame) -> str:
    if not rows.height:
        return '<p class="empty">no failures in this period</p>'
    cells = []
    for r in rows.sort("started_at", descending=True).iter_rows(named=True):
        message = first_line(r["err"]) or first_line(r["out"]) or f"(exit code {r['code']})"
        cells.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            _when(r["started_at"]), r["host"], r["op"], r["status"], r["code"], message))
            + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("when (UTC)", "host", "op", "status", "code",
                                             "error"))
    return (f'<table id="latest-failures-table"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(cells) + "</tbody></table>")


def _when(at: datetime | None) -> str:
    if at is None:
        return "–"
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S")


#: a script error on the page shows as a line at its top (and in the DOM, which the
#: headless-browser test reads) instead of a silently empty plot
_ON_ERROR = ('window.addEventListener("error",function(e){var p=document.createElement("p");'
             'p.className="js-error";p.textContent="a plot could not be drawn: "+e.message;'
             "(document.body||document.documentElement).prepend(p)});")

_CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;
color:#222}
h1{margin-bottom:.2em}.period{color:#555;margin-top:0}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1.2em;min-width:8em}
.card .v{font-size:1.6em;font-weight:600}.card .k{color:#666;font-size:.85em}
section{margin:2em 0}section h2{margin-bottom:.1em}.note{color:#666;margin-top:0}
.empty{color:#666;font-style:italic}.js-error{color:#b00;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border-bottom:1px solid #eee;padding:.3em .5em;text-align:left;vertical-align:top}
td:last-child{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}
"""


def _page(summary: Summary, since_label: str | None, sections: Sequence[Section],
          plotly_js: str) -> str:
    period = (f"{_when(summary.start)} → {_when(summary.end)} UTC" if summary.results
              else "no runs in this period")
    if since_label:
        period += f" (last {since_label})"
    cards = [("runs", f"{summary.runs:,}"), ("results", f"{summary.results:,}"),
             ("hosts", f"{summary.hosts:,}"),
             ("failure rate", f"{100 * summary.failure_rate:.1f}%"),
             ("failures", f"{summary.failures:,}")]
    card_html = "".join(f'<div class="card" id="stat-{k.replace(" ", "-")}"><div class="v">'
                        f'{html.escape(v)}</div><div class="k">{k}</div></div>'
                        for k, v in cards)
    body = _section_html(sections) if sections else (
        '<p class="empty" id="no-runs">no runs in this period</p>')
    script = f"<script>{_ON_ERROR}</script><script>{plotly_js}</script>" if plotly_js else ""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>reops report: {html.escape(period)}</title><style>{_CSS}</style>{script}"
        f'</head><body><header><h1>reops report</h1><p class="period" id="period">'
        f"{html.escape(period)}</p><div class=\"cards\">{card_html}</div></header>"
        f"{body}<footer><p class=\"note\">generated {generated} by reops report</p>"
        "</footer></body></html>\n")


def _section_html(sections: Iterable[Section]) -> str:
    return "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>'
                   f'<p class="note">{html.escape(s.note)}</p>{s.body}</section>'
                   for s in sections)

