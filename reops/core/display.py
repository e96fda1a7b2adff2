"""How Results, Outcomes and Hosts look in a terminal (rich) and in a notebook (HTML).

The vocabulary is the terminal sink's (`sinks/terminal.py`): ✔ ok, ✘ failed with `exit 2`,
`unreachable`, `timeout` …, a `── 3 ok · 1 failed (1 exit 2) · 4 hosts · 0.31 s` summary.
Core may not import sinks, so the few words are repeated here, not imported.

Host text (names, output, errors) is never read as markup: rich gets `Text` objects, HTML
gets `html.escape`d strings, and control characters are made visible. Many hosts are cut
to `MAX_ROWS` rows (failures first) and a `… N more hosts` row. rich loads only when a
display is asked for, so `import reops` stays fast.
"""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from reops.core.model import Host, Hosts, Outcome, Result

if TYPE_CHECKING:
    from rich.console import RenderableType

#: hosts shown before the rest is counted as `… N more hosts`
MAX_ROWS = 20
#: characters of a first line shown before it is cut with `…`
LINE_WIDTH = 100
#: output lines shown for one Result (its last ones)
RESULT_LINES = 20
#: rich styles and HTML colours per kind of row
_STYLE = {"ok": "green", "bad": "red", "dim": "dim", "warn": "yellow", "dry": "cyan"}
_COLOUR = {"ok": "#2e7d32", "bad": "#c62828", "warn": "#b26a00", "dry": "#00838f"}
#: what stands for a host of the Outcome that has no Result (an interrupted run)
NOT_FINISHED = "not finished"


def mark(r: Result) -> tuple[str, str]:
    """(symbol, style) of a Result: ✔ ok, ✘ anything else, ○ a dry run."""
    if _dry(r):
        return "○", "dry"
    return ("✔", "ok") if r.ok else ("✘", "bad")


def word(r: Result) -> str:
    """How a status reads: `ok`, `exit 2`, `unreachable`, `dry run` (as the terminal sink)."""
    if _dry(r):
        return "dry run"
    if r.status == "failed":
        return f"exit {r.code}"
    return r.status


def _dry(r: Result) -> bool:
    return isinstance(r.data, dict) and isinstance(r.data.get("dry_run"), str)


def visible(text: str) -> str:
    """`text` with control characters (but tab) shown as escapes, never executed."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def first_line(text: str, width: int = LINE_WIDTH) -> str:
    """The first non-blank line of `text`, made visible and cut to `width` with `…`."""
    for line in text.splitlines():
        if line.strip():
            shown = visible(line.rstrip())
            return shown if len(shown) <= width else shown[: width - 1] + "…"
    return ""


def gist(r: Result) -> str:
    """The line that says most about a Result: a failure's first err line (else out),
    an ok host's first out line."""
    if r.ok:
        return first_line(r.out) or first_line(r.err)
    return first_line(r.err) or first_line(r.out)


def _seconds(s: float) -> str:
    return f"{s:.2f}s"


def rows_of(o: Outcome, limit: int = MAX_ROWS) -> tuple[list[tuple[str, Result | None]], int]:
    """The hosts to show (each with its last Result, None when it has none) and how many
    were left out: host order when all fit, else failures first, then the rest."""
    last = {r.host: r for r in o.results}
    rows: list[tuple[str, Result | None]] = [(h, last.get(h)) for h in o.hosts]
    rows.extend((h, r) for h, r in last.items() if h not in set(o.hosts))
    if len(rows) <= limit:
        return rows, 0
    rows.sort(key=lambda hr: hr[1] is not None and hr[1].ok)  # stable: host order kept
    return rows[:limit], len(rows) - limit


def counts(o: Outcome) -> list[tuple[str, str]]:
    """The summary's parts as (text, style): `3 ok`, `2 failed (1 exit 3, 1 unreachable)`,
    `1 not finished`, `6 hosts`, `0.31 s`, `interrupted`."""
    kinds: Counter[str] = Counter(word(r) for r in o.results)
    ok = kinds.pop("ok", 0)
    dry = kinds.pop("dry run", 0)
    bad = sum(kinds.values())
    done = {r.host for r in o.results}
    left = sum(1 for h in o.hosts if h not in done)
    parts = [(f"{ok} ok", "ok")]
    if dry:
        parts.append((f"{dry} dry run", "dry"))
    if bad:
        detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        parts.append((f"{bad} failed ({detail})", "bad"))
    if left:
        parts.append((f"{left} {NOT_FINISHED}", "warn"))
    parts.append((f"{len(done | set(o.hosts))} hosts", ""))
    took = _took(o)
    if took is not None:
        parts.append((f"{took:.2f} s", ""))
    if o.interrupted:
        parts.append(("interrupted", "warn"))
    return parts


def _took(o: Outcome) -> float | None:
    """The run's wall time when known, else its slowest host's steps."""
    if o.run is not None and o.run.ended_at:
        return max(0.0, o.run.ended_at - o.run.started_at)
    if not o.results:
        return None
    return max(sum(s.duration_s for s in r.steps) for r in o.results)


def summary(o: Outcome) -> str:
    """The summary line as plain text: `3 ok · 1 failed (1 exit 2) · 4 hosts · 0.31 s`."""
    return " · ".join(text for text, _ in counts(o))


# ---------------------------------------------------------------- terminal (rich)


def _table() -> Any:
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)


def _text(text: str, style: str = "") -> Any:
    from rich.text import Text

    return Text(text, style=_STYLE.get(style, style), no_wrap=False)


def _status_cells(r: Result | None) -> list[Any]:
    if r is None:
        return [_text("…", "warn"), _text(NOT_FINISHED, "warn"), _text(""), _text("")]
    symbol, style = mark(r)
    status = word(r) + (" changed" if r.changed and r.ok else "")
    return [_text(symbol, style), _text(status, "" if r.ok else style),
            _text(_seconds(sum(s.duration_s for s in r.steps)), "dim"),
            _text(gist(r), "dim" if r.ok else "")]


def rich_outcome(o: Outcome, limit: int = MAX_ROWS) -> RenderableType:
    """✔/✘ per host (its op, status, time, first line of output), `… N more hosts`, and
    the summary line."""
    from rich.console import Group

    table = _table()
    for name in ("", "host", "op", "status", "time", "output"):
        table.add_column(name, overflow="fold")
    rows, more = rows_of(o, limit)
    for host, r in rows:
        cells = _status_cells(r)
        op = " | ".join(s.op for s in r.steps) if r is not None else ""
        table.add_row(cells[0], _text(visible(host), "bold"), _text(visible(op), "dim"),
                      *cells[1:])
    if more:
        table.add_row(_text(""), _text(f"… {more} more hosts", "dim"))
    line = _text("── ")
    for i, (text, style) in enumerate(counts(o)):
        if i:
            line.append(" · ")
        line.append(text, style=_STYLE.get(style, ""))
    title = "Outcome" + (f": {visible(o.pipeline)}" if o.pipeline else "")
    return Group(_text(title, "bold"), table, line)


def rich_result(r: Result) -> RenderableType:
    """One host's ✔/✘ line, then the last lines of its output and errors."""
    from rich.console import Group

    symbol, style = mark(r)
    head = _text(f"{symbol} ", style)
    head.append(visible(r.host), style="bold")
    head.append(f" {visible(r.op)} {_seconds(r.duration_s)} {word(r)}", style="dim")
    if r.changed:
        head.append(" changed", style="dim")
    parts: list[Any] = [head]
    for text, is_err in _tail(r):
        parts.append(_text(f"    {text}", ("bad" if not r.ok else "warn") if is_err else ""))
    return Group(*parts)


def _tail(r: Result, n: int = RESULT_LINES) -> list[tuple[str, bool]]:
    """The last `n` lines of out then err (each made visible), `… N more lines` first."""
    lines = [(visible(x), False) for x in r.out.splitlines()]
    lines += [(visible(x), True) for x in r.err.splitlines()]
    if len(lines) <= n:
        return lines
    return [(f"… {len(lines) - n} more lines", False), *lines[-n:]]


def rich_hosts(hosts: Hosts, limit: int = MAX_ROWS) -> RenderableType:
    """A table of hosts: name, where (user@address:port), groups, tags; `… N more`."""
    from rich.console import Group

    table = _table()
    for name in ("host", "where", "groups", "tags"):
        table.add_column(name, overflow="fold")
    shown = list(hosts)[:limit]
    for h in shown:
        table.add_row(_text(visible(h.name), "bold"), _text(visible(_where(h))),
                      _text(visible(", ".join(h.groups)), "dim"),
                      _text(visible(_tags(h)), "dim"))
    if len(hosts) > limit:
        table.add_row(_text(f"… {len(hosts) - limit} more hosts", "dim"))
    return Group(_text(f"{len(hosts)} hosts", "bold"), table)


def _where(h: Host) -> str:
    user = f"{h.user}@" if h.user else ""
    return f"{user}{h.address}:{h.port}"


def _tags(h: Host) -> str:
    return ", ".join(f"{k}={v}" for k, v in h.tags.items())


def plain(renderable: RenderableType, width: int = 100) -> str:
    """A renderable as plain text (no colours): IPython's text display, tests, logs."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, force_jupyter=False,
            highlight=False, markup=False, emoji=False).print(renderable)
    return buf.getvalue().rstrip("\n")


# ---------------------------------------------------------------- notebooks (HTML)

_CSS = ("border-collapse:collapse;font-family:var(--jp-code-font-family,monospace);"
        "font-size:12px")
_CELL = "padding:1px 8px;text-align:left;vertical-align:top"


def esc(text: str) -> str:
    """Host-printed text made safe for HTML (and visible): nothing in it runs or renders."""
    return html.escape(visible(text), quote=True)


def _td(text: str, style: str = "", title: str = "") -> str:
    colour = f";color:{_COLOUR[style]}" if style in _COLOUR else ""
    weight = ";font-weight:bold" if style == "bold" else ""
    tip = f' title="{esc(title)}"' if title else ""
    return f'<td style="{_CELL}{colour}{weight}"{tip}>{text}</td>'


def _details(r: Result) -> str:
    """The first line; the last lines of out and err folded under it when there are more."""
    line = esc(gist(r))
    lines = _tail(r)
    if len(lines) <= 1:
        return line
    body = "\n".join(html.escape(t, quote=True) for t, _ in lines)
    return (f"<details><summary>{line}</summary>"
            f'<pre style="margin:0;white-space:pre-wrap">{body}</pre></details>')


def _html_table(caption: str, heads: Sequence[str], rows: Iterable[str], kind: str) -> str:
    head = "".join(f'<th style="{_CELL}">{h}</th>' for h in heads)
    return (f'<div class="reops-{kind}"><table style="{_CSS}">'
            f'<caption style="text-align:left;font-weight:bold">{caption}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _summary_html(o: Outcome) -> str:
    parts = []
    for text, style in counts(o):
        colour = f' style="color:{_COLOUR[style]}"' if style in _COLOUR else ""
        parts.append(f"<span{colour}>{html.escape(text)}</span>")
    return " · ".join(parts)


def html_outcome(o: Outcome, limit: int = MAX_ROWS) -> str:
    """A compact HTML table: ✔/✘ per host, op, status, time, first line (folded output),
    `… N more hosts`, the summary as caption; host text escaped."""
    rows, more = rows_of(o, limit)
    out = []
    for host, r in rows:
        if r is None:
            out.append("<tr>" + _td("…", "warn") + _td(esc(host), "bold")
                       + _td("") + _td(NOT_FINISHED, "warn") + _td("") + _td("") + "</tr>")
            continue
        symbol, style = mark(r)
        status = word(r) + (" changed" if r.changed and r.ok else "")
        op = " | ".join(s.op for s in r.steps)
        out.append("<tr>" + _td(symbol, style) + _td(esc(host), "bold") + _td(esc(op))
                   + _td(esc(status), "" if r.ok else style)
                   + _td(_seconds(sum(s.duration_s for s in r.steps)))
                   + _td(_details(r)) + "</tr>")
    if more:
        out.append(f'<tr><td colspan="6" style="{_CELL}">… {more} more hosts</td></tr>')
    title = "Outcome" + (f": {esc(o.pipeline)}" if o.pipeline else "")
    return _html_table(f"{title} — {_summary_html(o)}",
                       ("", "host", "op", "status", "time", "output"), out, "outcome")


def html_result(r: Result) -> str:
    """One host's row and the last lines of its output and errors, escaped."""
    symbol, style = mark(r)
    row = ("<tr>" + _td(symbol, style) + _td(esc(r.host), "bold") + _td(esc(r.op))
           + _td(esc(word(r)), "" if r.ok else style) + _td(_seconds(r.duration_s)) + "</tr>")
    lines = _tail(r)
    if lines:
        body = "\n".join(html.escape(t, quote=True) for t, _ in lines)
        row += (f'<tr><td colspan="5" style="{_CELL}">'
                f'<pre style="margin:0;white-space:pre-wrap">{body}</pre></td></tr>')
    return _html_table("Result", ("", "host", "op", "status", "time"), [row], "result")


def html_hosts(hosts: Hosts, limit: int = MAX_ROWS) -> str:
    """A table of hosts (name, where, groups, tags), `… N more hosts`; escaped."""
    out = ["<tr>" + _td(esc(h.name), "bold") + _td(esc(_where(h)))
           + _td(esc(", ".join(h.groups))) + _td(esc(_tags(h))) + "</tr>"
           for h in list(hosts)[:limit]]
    if len(hosts) > limit:
        out.append(f'<tr><td colspan="4" style="{_CELL}">… {len(hosts) - limit} more hosts'
                   "</td></tr>")
    return _html_table(f"{len(hosts)} hosts", ("host", "where", "groups", "tags"), out,
                       "hosts")


def html_table(caption: str, heads: Sequence[str], rows: Iterable[Sequence[str]],
               *, kind: str, more: int = 0) -> str:
    """A generic escaped HTML table (every cell is text), for other layers' values."""
    body = ["<tr>" + "".join(_td(esc(c)) for c in row) + "</tr>" for row in rows]
    if more:
        body.append(f'<tr><td colspan="{len(heads)}" style="{_CELL}">… {more} more</td></tr>')
    return _html_table(esc(caption), [esc(h) for h in heads], body, kind)


def rich_table(caption: str, heads: Sequence[str], rows: Iterable[Sequence[str]],
               *, more: int = 0) -> RenderableType:
    """A generic rich table (every cell is plain text) with `… N more`."""
    from rich.console import Group

    table = _table()
    for h in heads:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*(_text(visible(c)) for c in row))
    if more:
        table.add_row(_text(f"… {more} more", "dim"))
    return Group(_text(caption, "bold"), table)
