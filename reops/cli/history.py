"""`reops history`: what past runs did, from the run history (reops.sinks.history)."""

from __future__ import annotations

import sys
from typing import Any

import click

from reops.cli.main import UserError

#: columns `-o table` shows, in order
TABLE = ("started_at", "host", "op", "status", "code", "duration_s", "source", "command")


@click.command("history")
@click.option("--since", default="1d", show_default=True, metavar="DURATION",
              help="How far back: 30m, 12h, 7d; 'all' for everything kept.")
@click.option("--failed", is_flag=True, help="Only Results whose status is not ok.")
@click.option("--host", default=None, metavar="GLOB", help="Host names, e.g. 'web*' or 'web1,db*'.")
@click.option("--op", default=None, metavar="GLOB", help="Op names, e.g. 'pkg.*'.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table: one line per Result; json: an array of rows.")
@click.option("--limit", type=click.IntRange(0), default=50, show_default=True, metavar="N",
              help="Show the N most recent rows (0: all).")
def history_cmd(since: str, failed: bool, host: str | None, op: str | None, output: str,
                limit: int) -> None:
    """Past runs' Results (CLI, scripts, the REPL, flows), newest last.

    \b
      reops history --since 7d --failed
      reops history --host 'web*' --op 'pkg.*' -o json
    """
    import polars as pl

    from reops.sinks.history import history, settings

    try:
        frame = history(None if since == "all" else since, failed=failed, host=host, op=op)
    except ValueError as e:
        text = str(e)
        raise UserError(f"--since: {text.removeprefix('since: ')}; try 30m, 12h, 7d or all"
                        if text.startswith("since:") else text) from None
    rows = frame.sort("started_at", "run_id", "host", "step")
    if limit:
        rows = rows.tail(limit)
    df = rows.collect()
    if output == "json":
        sys.stdout.write(df.with_columns(pl.col("day").cast(pl.String))
                         .write_json() + "\n")
        return
    if df.is_empty():
        click.echo(f"no runs recorded since {since} in {settings().root}", err=True)
        return
    _print_table(df.select(TABLE).rows(named=True), df.select("err", "out").rows())
    total = frame.select(pl.len()).collect().item()
    if limit and total > limit:
        click.echo(f"{limit} of {total} rows; more with --limit 0 or a shorter --since",
                   err=True)


def _first_line(err: str, out: str) -> str:
    text = (err or out).strip()
    return text.splitlines()[-1][:80] if text else ""


def _print_table(rows: list[dict[str, Any]], texts: list[tuple[str, str]]) -> None:
    """Aligned columns a terminal reads: local time, host, op, status, code, seconds, what."""
    cells = [("TIME", "HOST", "OP", "STATUS", "CODE", "SECONDS", "SOURCE", "COMMAND", "LAST LINE")]
    for r, (err, out) in zip(rows, texts, strict=True):
        when = r["started_at"].astimezone().strftime("%Y-%m-%d %H:%M:%S")
        cells.append((when, r["host"], r["op"], r["status"], str(r["code"]),
                      f"{r['duration_s']:.2f}", r["source"], (r["command"] or "")[:40],
                      _first_line(err, out)))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    for c in cells:
        line = "  ".join(v.ljust(w) for v, w in zip(c, widths, strict=False))
        click.echo(f"{line}  {c[-1]}".rstrip())
