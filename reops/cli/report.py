"""`reops report [--since 7d] [-o report.html] [--open]`: the run history as one HTML page.

The page is self-contained (plotly's JS inlined once), so it can be mailed or opened offline;
the terminal gets its path and a one-line summary. What is on the page: reops.sinks.report.
"""

from __future__ import annotations

from pathlib import Path

import click

from reops.cli.main import UserError


@click.command("report")
@click.option("--since", default="7d", show_default=True,
              help="How far back: e.g. 1h, 1d, 7d, 30d.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path, dir_okay=False),
              default=Path("report.html"), show_default=True, help="The HTML file to write.")
@click.option("--open", "open_", is_flag=True, help="Open the report in a browser afterwards.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(1, 500),
              help="How many hosts/ops the top-N plots and the failures table show.")
def report_cmd(since: str, output: Path, open_: bool, top: int) -> None:
    """Write an HTML report with plots of the runs since --since (from the run history).

    \b
      reops report                       # last 7 days -> report.html
      reops report --since 1d -o today.html --open
    """
    from reops.core.durations import seconds
    from reops.sinks.report import write_report

    try:
        seconds(since, "--since")
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        path, summary = write_report(since, output, top=top)
    except OSError as e:
        raise UserError(f"cannot write the report to {output}: {e.strerror or e}") from None
    click.echo(f"{path}: {summary.line()}")
    if open_:
        click.launch(str(path.resolve()))
