"""The `reops` launcher (click). Exit codes: 0 all hosts ok, 1 some failed, 2 usage/input.

Sub-commands import their machinery lazily so `reops --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

#: sub-commands that live in other modules: name -> (module:attr, one-line help)
LAZY: dict[str, tuple[str, str]] = {
    "exec": ("reops.cli.execute:exec_cmd", "Run a shell command on the selected hosts."),
    "hosts": ("reops.cli.execute:hosts_cmd", "List the hosts a selector picks from an inventory."),
    "run": ("reops.cli.flows:run_cmd", "Run a saved flow: reops run FILE[:FUNC] [--param v]."),
    "flows": ("reops.cli.flows:flows_cmd", "Saved flows; flows in the hub: start, ls, log, stop."),
    "lab": ("reops.cli.lab:lab", "A local fleet of real sshd hosts on loopback."),
    "hub": ("reops.cli.agents:hub", "The controller: agents' hub, jobs, hypervisors."),
    "keys": ("reops.cli.agents:keys", "Agent keys: pending, accepted, rejected."),
    "agents": ("reops.cli.agents:agents", "Connected agents; deploy agents over SSH."),
    "systems": ("reops.cli.systems:systems", "Machines (VMs and physical hosts)."),
    "types": ("reops.cli.systems:types", "Machine types: how to provision them."),
    "jobs": ("reops.cli.systems:jobs", "The durable job queue."),
    "images": ("reops.cli.images:images_cmd", "Base images: ls, add FILE.qcow2, rm, build tiny."),
    "events": ("reops.cli.systems:events", "Hypervisor events as they happen."),
    "history": ("reops.cli.history:history_cmd", "Past runs' Results: --since 1d --failed --host."),
    "tail": ("reops.cli.tail:tail_cmd", "Print what flows and pipelines publish on the bus."),
    "report": ("reops.cli.report:report_cmd", "An HTML report with plots of the run history."),
    "repl": ("reops.repl:repl", "A live Python session with the reops API loaded."),
    "facts": ("reops.cli.ops:facts", "What hosts are: os, hardware, network, users, uptime."),
    "metrics": ("reops.cli.ops:metrics", "cpu, memory, load, disk, net; --every N: live."),
    "pkg": ("reops.cli.ops:pkg", "Packages: update, upgrade, install, remove, installed."),
    "service": ("reops.cli.ops:service", "Services: start, stop, restart, reload, enable, status."),
    "files": ("reops.cli.ops:files", "Files: mkdir, rm, cp, grep, template, sync, upload, …"),
    "security": ("reops.cli.ops:security", "Listening ports, SSH sessions, firewall, updates."),
    "reboot": ("reops.cli.ops:reboot", "Reboot hosts and wait until each is back."),
    "shutdown": ("reops.cli.ops:shutdown", "Power hosts off."),
    "store": ("reops.cli.store:store_cmd", "The durable store: reops store migrate."),
}


class UserError(click.ClickException):
    """A problem with the user's input: one line, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"reops: error: {self.format_message()}", err=True)


def fail(message: str) -> NoReturn:
    raise UserError(message)


class LazyGroup(click.Group):
    """A group whose commands load on first use; help text comes from the table."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *LAZY]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in LAZY:
            return cmd
        target, help_ = LAZY[name]
        module, attr = target.split(":")
        try:
            loaded = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            reason = str(e)

            @click.command(name, help=help_, context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args: tuple[str, ...]) -> None:
                fail(f"'reops {name}' is not available in this installation ({reason})")

            return unavailable
        return loaded

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in LAZY.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        debug = ctx.params.get("debug") or os.environ.get("REOPS_DEBUG")
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt as e:
            if type(e).__name__ == "Terminated":  # SIGTERM, see reops.core.runtime
                click.echo("reops: terminated (SIGTERM)", err=True)
                sys.exit(143)
            click.echo("reops: interrupted", err=True)
            sys.exit(130)
        except Exception as e:
            if debug:
                raise
            known = _known_error(e)
            if known is not None:
                raise UserError(known) from None
            click.echo(f"reops: internal error: {type(e).__name__}: {e} "
                       "(run with --debug for the traceback)", err=True)
            sys.exit(3)


def _known_error(e: Exception) -> str | None:
    """Input errors the user can fix, by class name (so this module imports nothing)."""
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"InventoryError", "SelectorError", "LabError", "FlowError", "ConfigError",
                 "StoreError"}:
        return str(e)
    if isinstance(e, (FileNotFoundError, PermissionError, ValueError)):
        return str(e)
    return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="reops", prog_name="reops")
def main(debug: bool) -> None:
    """reops — live, reactive remote operations.

    \b
    Quick start:
      reops lab up --hosts 20                   # 20 real sshd hosts on loopback
      reops exec -i lab/inventory.toml all -- uname -a
      reops exec -i lab/inventory.toml 'group:db' -o json -- df -h /
      reops run flows/examples/fleet_report.py --selector all

    Exit codes: 0 all hosts ok, 1 some hosts failed, 2 usage or input error.
    """
    if debug:
        os.environ["REOPS_DEBUG"] = "1"
    from reops.core.settings import raise_fd_limit

    raise_fd_limit()  # a fleet holds a socket per host; the hub started from here inherits it


def default_inventory() -> Path:
    """$REOPS_INVENTORY, else ./inventory.toml, else ./lab/inventory.toml."""
    from reops.core.inventory import default_path

    return default_path()


if __name__ == "__main__":  # pragma: no cover
    main()
