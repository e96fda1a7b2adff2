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

    skipped: list[Any] = []
    if systems is not None:  # no inventory selector: every word is the command
        command = (selector, *command)
        skipped = _unaddressed(systems)
    text = " ".join(command)
    if not text.strip():
        raise UserError("no command given: put it after --, e.g. reops exec all -- uptime")
    if not skipped:
        return lambda hosts: exec_(hosts, text, become_user=become_user)
    # every selected system may lack an address: no Hosts, yet each is reported, not exit 2
    return (lambda hosts: _with_unreached(exec_(hosts, text, become_user=become_user),
                                          skipped), True)


def _with_unreached(stream: Any, skipped: list[Any]) -> Any:
    """`stream` plus an `unreachable` Result (code -1) for each selected system without an
    address: a host not reached, so the run exits 1 and `-o json` lists it under "-1",
    exactly as it would an unreachable inventory host, rather than it silently missing."""
    import reactivex

    from reops.core.model import Host, Hosts, failure_result
    from reops.streams.stream import Stream

    failed = [failure_result(s.hostname, "exec", f"no address (state {s.state}): not run; "
                             f"start it: reops systems start {s.short_id}") for s in skipped]
    names = {r.host for r in failed}
    placeholders = Hosts(Host(name=n, address="") for n in names)  # never connected to

    def rebuild(subset: Any) -> Any:  # --retry/--rolling: the addressed ones run again
        again = stream.rebuild(subset.where(lambda h: h.name not in names))
        still = [s for s in skipped if s.hostname in subset]
        return _with_unreached(again, still) if still else again

    return Stream(reactivex.merge(reactivex.of(*failed), stream.observable),
                  stream.hosts | placeholders, rebuild)


def _unaddressed(selector: str) -> list[Any]:
    """The selected VMs that have no address (stopped, booting), each told in one line: they
    are left out, never looked up in DNS by their name, and reported as not reached."""
    from reops.core.selector import SelectorError
    from reops.store.model import MachinesError
    from reops.systems import connect
    from reops.systems.machines import addressable

    async def read() -> list[Any]:
        api = await connect(queue=False)
        try:
            return list(await api.systems(selector))
        finally:
            await api.aclose()

    import asyncio

    try:
        chosen = asyncio.run(read())
    except (MachinesError, SelectorError, OSError):
        return []  # the selection itself reports what is wrong
    skipped = [s for s in chosen if not addressable(s)]
    for s in skipped:
        click.echo(f"reops: {s.hostname}: no address (state {s.state}): not run there; "
                   f"start it: reops systems start {s.short_id}", err=True)
    return skipped


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
