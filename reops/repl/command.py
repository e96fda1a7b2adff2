"""The `reops repl` command: build the namespace, say hello, run the session."""

from __future__ import annotations

from pathlib import Path

import click

from reops.core.settings import home

#: the REPL's history, kept across sessions, under reops's home ($REOPS_HOME or ~/.reops)
HISTORY_FILE = "repl_history"


def history_path() -> Path:
    """Where the REPL keeps what was typed: <reops home>/repl_history."""
    return home() / HISTORY_FILE


@click.command("repl")
@click.option("-i", "--inventory", "inventory_path", type=click.Path(path_type=Path),
              default=None, help="Load this inventory as `inv` [default: $REOPS_INVENTORY, "
              "./inventory.toml, ./lab/inventory.toml].")
def repl(inventory_path: Path | None) -> None:
    """A live Python session: the reops API loaded, pipelines running in the background.

    \b
      top-level await:  out = await exec_(inv.select("group:web"), "uptime")
      TAB completes hosts, groups and tags in inv["…"] and inv.select("…")
      Ctrl-C stops the command running, never the session or subscribed streams
      _r: the last Outcome;  flows.start(FILE) / flows.ls(): flows in `reops hub`
    """
    from reops.repl.banner import banner
    from reops.repl.complete import ReopsCompleter
    from reops.repl.hubflows import Flows
    from reops.repl.namespace import namespace, systems
    from reops.repl.session import Interrupts, Session
    from reops.sinks.history import set_source

    set_source("repl")  # this session's runs are recorded as the REPL's in `reops history`

    interrupts = Interrupts()
    interrupts.install()  # before polars is imported: its SIGINT handler then chains to ours
    ns = namespace(inventory_path)
    flows: Flows = ns["flows"]

    def system_names() -> list[str]:
        return [s.name for s in systems()]

    completer = ReopsCompleter(lambda: ns, systems=system_names, flows=flows.names)
    click.echo(banner(ns))
    Session(ns, history_path(), completer, interrupts).run()
