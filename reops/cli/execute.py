"""`reops exec` and `reops hosts`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from reops.cli.common import fleet_command, fleet_options, select_hosts
from reops.cli.main import UserError

# Function-level imports below are on purpose: `reops --help` and `reops CMD --help` load
# none of a command's machinery (see LAZY in reops.cli.main).


@click.command("exec", context_settings={"ignore_unknown_options": False})
@fleet_options
@click.option("--become-user", default=None, help="Run the command as this user (sudo -u).")
@click.argument("selector")
@click.argument("command", nargs=-1)
@fleet_command
def exec_cmd(selector: str, command: tuple[str, ...], become_user: str | None,
             systems: str | None = None, **_: Any) -> Any:
    """Run COMMAND on the hosts SELECTOR picks, each host as soon as it can.

    \b
    SELECTOR: all, web*, group:db, tag:dc=ams, and , (or) & (and) ! (not):
      reops exec -i lab/inventory.toml all -- uname -a
      reops exec -i lab/inventory.toml 'group:web & !web3' -- systemctl is-active nginx
      reops exec -i lab/inventory.toml 'group:db' -o json -- df -h /
      reops exec -i lab/inventory.toml all --save runs.parquet -- uptime
      reops exec --systems 'typed:redis & running' -- redis-cli ping

    Put the command after `--`; its words run through the login shell on each host.
    """
    from reops.ops.shell import exec_ as describe  # not reops.streams.steps: it loads every op
    from reops.streams.source import step

    exec_ = step(describe)

    if systems is not None:  # no inventory selector: every word is the command
        command = (selector, *command)
    text = " ".join(command)
    if not text.strip():
        raise UserError("no command given: put it after --, e.g. reops exec all -- uptime")
    return lambda hosts: exec_(hosts, text, become_user=become_user)


@click.command("hosts")
@click.option("-i", "--inventory", "inventory_path", type=click.Path(path_type=Path),
              default=None, help="Inventory: TOML, or Ansible INI/YAML [default: "
              "$REOPS_INVENTORY, ./inventory.toml, ./lab/inventory.toml].")
@click.option("-o", "--output", type=click.Choice(["pretty", "json", "names"]),
              default="pretty", show_default=True)
@click.argument("selector", default="all")
def hosts_cmd(inventory_path: Path | None, output: str, selector: str) -> None:
    """List the hosts SELECTOR picks (default: all), without connecting to them.

    \b
      reops hosts -i lab/inventory.toml 'web*'
      reops hosts -i lab/inventory.toml 'tag:dc=ams & !group:db' -o names
    """
    import msgspec

    hosts = select_hosts(inventory_path, selector)
    if output == "names":
        click.echo("\n".join(hosts.names))
        return
    if output == "json":
        sys.stdout.write(msgspec.json.encode(list(hosts)).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("name", "address", "port", "user", "groups", "tags"):
        table.add_column(col)
    for h in hosts:
        table.add_row(h.name, h.address, str(h.port), h.user or "", ",".join(h.groups),
                      " ".join(f"{k}={v}" for k, v in h.tags.items()))
    Console(highlight=False, markup=False, emoji=False).print(table)  # names: verbatim
    click.echo(f"{len(hosts)} hosts", err=True)
