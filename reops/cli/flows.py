"""`reops run FILE[:FUNC] [--param value]` and `reops flows [PATH...]`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

# Function-level imports below are on purpose: `reops --help` and `reops CMD --help` load
# none of a command's machinery (see LAZY in reops.cli.main).


@click.command("run", context_settings={"ignore_unknown_options": True,
                                        "allow_extra_args": True, "help_option_names": []})
@click.argument("spec", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, spec: str | None, args: tuple[str, ...]) -> None:
    """Run a saved flow: its typed parameters are its options.

    \b
      reops run flows/examples/fleet_report.py --selector 'group:web'
      reops run flows/examples/hello.py:hello --name you --times 2
      reops run flows/examples/fleet_report.py --help     # the flow's own options
    """
    if spec is None or spec in ("-h", "--help"):
        click.echo(ctx.get_help())
        ctx.exit(0 if spec else 2)
    from reops.core.runtime import terminate_like_interrupt, terminated
    from reops.flows import resolve

    terminate_like_interrupt()  # SIGTERM cancels and cleans up like Ctrl-C (exit 143)
    flow = resolve(spec)
    command = flow.command()
    command.name = f"reops run {spec}"
    try:
        command.main(list(args), prog_name=f"reops run {spec}", standalone_mode=True)
    except SystemExit as e:
        if terminated():  # the flow drained its partial outcome; say why it stopped
            ctx.exit(143)
        ctx.exit(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))


@click.command("flows")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Choice(["pretty", "json"]), default="pretty",
              show_default=True)
def flows_cmd(paths: tuple[Path, ...], output: str) -> None:
    """List saved flows (in files or directories, default ./flows) and their parameters."""
    import msgspec

    from reops.flows import FlowError, find_flows, flows_table, load_flows

    found = []
    errors: list[FlowError] = []
    for p in paths or (Path("flows"),):
        if p.is_dir():
            found += find_flows(p, errors=errors)
        elif p.exists():
            found += load_flows(p)
        else:
            raise click.UsageError(f"{p}: no such file or directory")
    rows = flows_table(found)
    if output == "json":
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
    else:
        for row in rows:
            click.echo(f"{row['file']}:{row['name']}  {row['help']}")
            for prm in row["params"]:
                default = "required" if prm["required"] else f"default {prm['default']!r}"
                click.echo(f"    {prm['option']:<18} {prm['type']:<10} {default}")
    for e in errors:
        click.echo(f"reops: error: {e}", err=True)
    if errors:
        sys.exit(2)
