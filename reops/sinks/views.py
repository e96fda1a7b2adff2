"""Per-op pretty views: how the terminal sink shows an op's typed `data`.

A view is chosen by the op that made the Result (`Result.op`, e.g. `"pkg.installed"`):
an exact name first, then the longest registered prefix (`"pkg."`). Ops without a view
(`exec`, `ls`, user code) show their raw output. So `reops facts …` and
`facts(hosts) | pretty()` look the same: there is one terminal sink, not one per command.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from reops.core.model import Result

Row = Sequence[Any]
#: rows per host in pretty tables (-o json: all)
ROWS_PER_HOST = 20
#: the line a dry-run Result of a viewed op shows; its script is printed once at the end
DRY_RUN_LINE = "would run the script below"


@dataclass(frozen=True)
class View:
    """How pretty output shows an op's data: a line per host, then maybe a table."""

    line: Callable[[Result], str] | None = None
    columns: Sequence[str] = ()
    rows: Callable[[Result], list[Row]] | None = None


_VIEWS: dict[str, View] = {}


def register(op: str, view: View) -> None:
    """Show Results of op `op` (a name, or a prefix ending in ".") through `view`."""
    _VIEWS[op] = view


def view_for(op: str) -> View | None:
    """The view registered for op name `op`: exact, else the longest "prefix." match."""
    found = _VIEWS.get(op)
    if found is not None:
        return found
    best = ""
    for key in _VIEWS:
        if key.endswith(".") and op.startswith(key) and len(key) > len(best):
            best = key
    return _VIEWS.get(best) if best else None


def dry_run_command(r: Result) -> str | None:
    """The command a dry-run Result says its host would run (None: not a dry run)."""
    if isinstance(r.data, dict) and isinstance(r.data.get("dry_run"), str):
        return str(r.data["dry_run"])
    return None


def display(r: Result) -> Result:
    """`r` as its op's view shows it: `out` becomes the view's line (failures: as they are)."""
    view = view_for(r.op)
    if view is None or not r.ok:
        return r
    if dry_run_command(r) is not None:
        return msgspec.structs.replace(r, out=DRY_RUN_LINE)
    try:
        return msgspec.structs.replace(r, out=view.line(r)) if view.line else r
    except Exception:  # data the view does not fit: raw output
        return r


def print_after(console: Any, results: Sequence[Result]) -> None:
    """After the ✔/✘ lines: the scripts a dry run would run, else each op's table."""
    viewed = [r for r in results if view_for(r.op) is not None]
    if any(dry_run_command(r) is not None for r in viewed):
        print_commands(console, viewed)
        return
    by_op: dict[str, list[Result]] = {}
    for r in viewed:
        by_op.setdefault(r.op, []).append(r)
    for op, rs in by_op.items():
        view = view_for(op)
        if view is not None:
            print_table(console, view, rs)


def plain(text: str) -> Any:
    """`text` as a rich Text: printed as it is (no markup, no emoji codes), controls
    shown visibly (`^[`, `^M`) so they never drive the terminal."""
    from rich.text import Text

    from reops.sinks.gather import visible

    return Text("\n".join(visible(x) for x in text.split("\n")))


def print_commands(console: Any, results: Sequence[Result]) -> None:
    """Each distinct dry-run script once, under the hosts that would run it."""
    from reops.sinks.natural import fold

    by_command: dict[str, list[str]] = {}
    for r in results:
        command = dry_run_command(r)
        if command is not None:
            by_command.setdefault(command, []).append(r.host)
    for command, hosts in by_command.items():
        head = plain(f"── {fold(hosts, 20)} would run:")
        head.stylize("bold")
        console.print(head)
        console.print(plain(command), style="dim")


def print_table(console: Any, view: View, results: Sequence[Result]) -> None:
    """The view's table: a row per item, at most ROWS_PER_HOST per host."""
    from rich.table import Table

    if view.rows is None:
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for c in ("host", *view.columns):
        table.add_column(c)
    from reops.sinks.natural import natural_key

    for r in sorted(results, key=lambda r: natural_key(r.host)):
        try:
            rows = view.rows(r) if r.ok and r.data is not None else []
        except Exception:  # data the view does not fit: no rows (the line shows raw output)
            rows = []
        for row in rows[:ROWS_PER_HOST]:
            table.add_row(plain(r.host), *(plain(str(x)) for x in row))
        if len(rows) > ROWS_PER_HOST:
            table.add_row(plain(r.host), f"… {len(rows) - ROWS_PER_HOST} more (-o json: all)")
    if table.row_count:
        console.print(table)


# --- cells ---


def size(n: float | None, per: str = "") -> str:
    """Bytes for people: `1.5 GiB`, `120 B/s`."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B{per}" if unit == "B" else f"{n:.1f} {unit}{per}"
        n /= 1024
    return f"{n:.1f} TiB{per}"


def duration(s: float | None) -> str:
    """An uptime for people: `1d 1h`, `3h 12m`."""
    if s is None:
        return "-"
    d, rest = divmod(int(s), 86400)
    return f"{d}d {rest // 3600}h" if d else f"{rest // 3600}h {rest % 3600 // 60}m"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def n(v: Any) -> str:
    return "-" if v is None else str(v)


# --- the views of the built-in ops ---


def change_line(r: Result) -> str:
    """"apt" / "apt: no change" (the ✔ line already says `changed`)."""
    what = r.data if isinstance(r.data, str) else ""
    return what if r.changed else f"{what}: no change" if what else "no change"


CHANGE = View(line=change_line)


def status_line(r: Result) -> str:
    """A service's state: `active (running) · enabled · pid 812`."""
    s = r.data
    enabled = {True: "enabled", False: "disabled"}.get(s.enabled, s.unit_file_state or "-")
    return (f"{s.state} ({s.sub})" if s.sub else s.state) + f" · {enabled}" + (
        f" · pid {s.pid}" if s.pid else "")


def facts_rows(r: Result) -> list[Row]:
    """One row per host: os, kernel, cpus, memory, disks, first IPv4 address, uptime."""
    f, g = r.data, r.data.row().get
    return [(f"{g('os_id', '-')} {g('os_version', '')}", g("os_kernel_release"),
             n(g("cpus")), size(g("memory_bytes")), size(g("disk_bytes")),
             next((a for a in g("addresses", []) if ":" not in a), "-"), duration(f.uptime_s))]


METRIC_COLUMNS = ("cpu", "mem", "load1", "disk max", "net rx", "net tx", "entropy")


def metrics_cells(data: Any) -> list[str]:
    """A Metrics sample as the cells of METRIC_COLUMNS."""
    g = data.row().get
    return [pct(g("cpu_busy_pct")), pct(g("mem_used_pct")), n(g("load1")),
            pct(g("disk_max_used_pct")), size(g("net_rx_bytes_s"), "/s"),
            size(g("net_tx_bytes_s"), "/s"), n(g("entropy"))]


def metrics_table(names: Sequence[str], latest: Mapping[str, Result], caption: str) -> Any:
    """`metrics --every`: the latest sample of every host, as one rich table."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, caption_justify="left",
                  caption=caption)
    for c in ("host", *METRIC_COLUMNS):
        table.add_column(c, justify="left" if c == "host" else "right")
    for name in names:
        r = latest.get(name)
        if r is None or (r.ok and r.data is not None):
            table.add_row(plain(name), *(metrics_cells(r.data) if r else "…"))
        else:
            why = plain(f"{r.status}: {(r.err or '').strip()[:60]}")
            why.stylize("red", 0, len(r.status))
            table.add_row(plain(name), why)
    return table


def ports_line(r: Result) -> str:
    """Listening ports, at most 8: `22/tcp, 80/tcp, … (12)`."""
    ports = sorted({(x.port, x.proto) for x in r.data})
    shown = ", ".join(f"{p}/{proto}" for p, proto in ports[:8])
    return shown + (f", … ({len(ports)})" if len(ports) > 8 else "") or "nothing listening"


def sync_line(r: Result) -> str:
    """`3 paths changed (via rsync)`: what files.sync did and how."""
    from reops.transports.ssh.rsync import sync_via

    via = sync_via(r.out)
    return (f"{len(r.data)} paths changed" if r.data else "no change") + (
        f" (via {via})" if via else "")


for _prefix in ("pkg.", "service.", "files."):
    register(_prefix, CHANGE)
register("pkg.installed", View(
    line=lambda r: " · ".join(f"{p.name} {p.version}" for p in r.data)
    if len(r.data) <= 4 else f"{len(r.data)} packages",
    columns=("package", "version", "arch", "manager"),
    rows=lambda r: [(p.name, p.version, p.arch, p.manager) for p in r.data]))
register("service.status", View(line=status_line))
register("facts", View(line=lambda r: r.data.os.name if r.data.os else "", rows=facts_rows,
                       columns=("os", "kernel", "cpus", "memory", "disks", "address",
                                "uptime")))
register("metrics", View(line=lambda r: "cpu {} · mem {} · load {} · disk {}".format(
    *metrics_cells(r.data)), columns=METRIC_COLUMNS, rows=lambda r: [metrics_cells(r.data)]))
register("security.listening", View(
    line=ports_line, columns=("proto", "address", "port", "process"),
    rows=lambda r: [(x.proto, x.address, x.port, x.process or "-")
                    for x in sorted(r.data, key=lambda x: (x.port, x.address))]))
register("security.ssh_sessions", View(
    line=lambda r: f"{len(r.data.logins)} logins · {len(r.data.connections)} ssh connections",
    columns=("user", "tty", "since", "from"),
    rows=lambda r: [(x.user, x.tty, x.since, x.source or "-") for x in r.data.logins]))
register("security.firewall", View(
    line=lambda r: f"{r.data.backend}: " + ("active" if r.data.active else "inactive")
    + f" · {r.data.rules} rules · input policy {r.data.default_policy or '-'}"))
register("security.updates", View(
    line=lambda r: f"{len(r.data)} pending security updates",
    columns=("package", "current", "available", "advisory"),
    rows=lambda r: [(x.name, x.current or "-", x.available, x.advisory or "-")
                    for x in r.data]))
register("files.grep", View(
    line=lambda r: f"{len(r.data)} matching lines", columns=("path", "line", "text"),
    rows=lambda r: [(m.path, m.line, m.text) for m in r.data]))
register("files.extract", View(
    line=lambda r: f"{len(r.data)} entries" if r.changed else "no change"))
register("files.sync", View(line=sync_line))
register("upload", View())
register("download", View())
register("power.reboot", View(line=lambda r: r.out if hasattr(r.data, "after")
                              else "reboot scheduled"))
register("power.shutdown", View(line=lambda r: "power-off scheduled"))
