"""A fleet report: facts from every selected host → a polars table → parquet + a summary.

    reops run flows/examples/fleet_report.py --selector all     # $REOPS_INVENTORY's hosts
    reops run flows/examples/fleet_report.py --inventory hosts.ini --selector 'group:web'
    reops run flows/examples/fleet_report.py --systems 'typed:guest & running'  # + guests
"""

from __future__ import annotations

import sys
from pathlib import Path

from reops import inventory as load_inventory
from reops import pretty, run, to_table
from reops.core.model import Outcome
from reops.flows import flow


@flow
def fleet_report(selector: str = "all", inventory: Path | None = None,
                 save: Path | None = None, systems: str | None = None) -> Outcome:
    """Gather OS, hardware and uptime facts in one round trip per host; print a table.

    Args:
        selector: which hosts (all, web*, group:db, tag:dc=ams & !web3, ...)
        inventory: the inventory (TOML, Ansible INI/YAML) [default: $REOPS_INVENTORY,
            ./inventory.toml, ./lab/inventory.toml]
        save: also append the per-host rows to this parquet file
        systems: also report these machines of `reops systems` (e.g. 'typed:guest &
            running'), named by hostname and reached at their address and SSH port
    """
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from reops.ops.facts import Facts
    from reops.streams.steps import facts

    hosts = load_inventory(inventory).select(selector)
    if systems is not None:  # guests join the inventory's hosts, reached as Hosts
        from reops.systems import hosts as system_hosts

        guests = system_hosts(systems)
        if not guests:
            print(f"reops: warning: systems selector {systems!r} matched no machines with "
                  "an address (see `reops systems ls`)", file=sys.stderr)
        hosts = hosts | guests
    out = run(facts(hosts, "os", "hardware", "uptime") | pretty(tail=0))
    rows = [{"host": r.host, **r.data.row()}
            for r in out.successful if isinstance(r.data, Facts)]
    if rows:
        df = pl.DataFrame(rows)
        table = Table(title=f"fleet report: {len(rows)} hosts", box=None, header_style="bold")
        wanted = ("host", "os_id", "os_version", "os_kernel_release", "cpus", "memory_bytes",
                  "uptime_s")
        cols = [c for c in wanted if c in df.columns]
        for c in cols:
            table.add_column(c)
        for rec in df.select(cols).iter_rows():
            table.add_row(*(_fmt(c, v) for c, v in zip(cols, rec, strict=True)))
        Console(highlight=False).print(table)
        summary = df.group_by("os_id", "os_version").len().sort("len", descending=True)
        for os_id, version, n in summary.iter_rows():
            print(f"  {n:>4} × {os_id or 'unknown OS'} {version or ''}".rstrip())
    if save is not None:
        from reops.sinks.table import save as save_table

        save_table(to_table(out), save)
        print(f"saved {len(out.results)} rows to {save}")
    return out


def _fmt(col: str, value: object) -> str:
    if value is None:
        return "-"
    if col == "memory_bytes" and isinstance(value, int):
        return f"{value / 2**30:.1f} GiB"
    if col == "uptime_s" and isinstance(value, float):
        return f"{value / 3600:.1f} h"
    return str(value)
