"""`reops pkg|service|facts|metrics|security|files|reboot|shutdown`: ops as commands.

Same flags and exit codes as `reops exec`; pretty output shows parsed `data` as a line per
host, then a table. `_cmd` maps click arguments/options to the step's arguments.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click
import msgspec

from reops.cli.common import fleet_options, run_on_fleet, select_hosts
from reops.cli.main import UserError
from reops.core.model import Result

# Function-level imports below are on purpose: `reops --help` and `reops CMD --help` load
# none of a command's machinery (see LAZY in reops.cli.main).

Row = Sequence[Any]
#: rows per host in pretty tables (-o json: all)
ROWS_PER_HOST = 20
Param = Callable[[Any], Any]
#: `reops exec`'s flags (other parameters go to the step)
FLEET = {p.name for p in getattr(fleet_options(lambda: None), "__click_params__", ())}


@dataclass(frozen=True)
class View:
    """How pretty output shows a command's data: a line per host, then maybe a table."""

    line: Callable[[Result], str] | None = None
    columns: Sequence[str] = ()
    rows: Callable[[Result], list[Row]] | None = None


def _change(r: Result) -> str:
    """"apt" / "apt: no change" (the ✔ line already says `changed`)."""
    what = r.data if isinstance(r.data, str) else ""
    return what if r.changed else f"{what}: no change" if what else "no change"


CHANGE = View(line=_change)


def _size(n: float | None, per: str = "") -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B{per}" if unit == "B" else f"{n:.1f} {unit}{per}"
        n /= 1024
    return f"{n:.1f} TiB{per}"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    d, rest = divmod(int(s), 86400)
    return f"{d}d {rest // 3600}h" if d else f"{rest // 3600}h {rest % 3600 // 60}m"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def _n(v: Any) -> str:
    return "-" if v is None else str(v)


# --- running a step from the command line ---


def _step(path: str) -> Callable[..., Any]:
    """`"pkg.install"` → reops.streams.steps.pkg.install; `module:attr` elsewhere."""
    module, _, attr = path.rpartition(":")
    obj: Any = importlib.import_module(module or "reops.streams.steps")
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def run_step(fleet: dict[str, Any], selector: str, path: str, args: Sequence[Any],
             kwargs: dict[str, Any], view: View) -> None:
    """Run step `path` with `args`/`kwargs` over the hosts; print; exit 0/1."""
    fn = _step(path)
    if fleet.get("become_user"):
        if "become_user" not in inspect.signature(getattr(fn, "describe", fn)).parameters:
            raise UserError(f"--become-user does not apply to {path}")
        kwargs = {**kwargs, "become_user": fleet["become_user"]}

    def build(hosts: Any) -> Any:
        return fn(hosts, *args, **kwargs)

    if fleet["output"] != "pretty":
        run_on_fleet(fleet, selector, build)
        return
    retries, batch, lines = fleet["retries"], fleet["batch"], fleet["lines"]

    def shown(hosts: Any) -> Any:  # our sink after retry/rolling, as exec's
        from reops.streams.operators import retry, rolling
        from reops.streams.source import configure

        configure(lines=lines or None)
        stream = build(hosts)
        stream = stream | retry(retries) if retries else stream
        stream = stream | rolling(batch) if batch else stream
        return stream | show(view, dry_run=fleet["dry_run"])

    try:
        run_on_fleet({**fleet, "output": "shown", "retries": 0, "batch": None}, selector, shown)
    except BrokenPipeError:  # like any Unix tool whose reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _cmd(group: Any, name: str, path: str, *params: Param, view: View = CHANGE,
         confirm: str | Callable[[dict[str, Any]], str | None] | None = None,
         pre: Sequence[Any] = (), adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
         help: str = "") -> Any:
    """Declare `reops [GROUP] NAME SELECTOR …` running step `path` (args after `pre`;
    `adapt(fleet)` adds keyword arguments computed from the flags)."""
    def callback(**kw: Any) -> None:
        selector, yes = kw.pop("selector"), kw.pop("yes", False)
        fleet = {k: kw.pop(k) for k in list(kw) if k in FLEET or k == "become_user"}
        args: list[Any] = list(pre)
        for p in cmd.params:
            if isinstance(p, click.Argument) and p.name in kw:
                value = kw.pop(p.name)
                args.extend(value) if p.nargs == -1 else args.append(value)
        question = confirm(kw) if callable(confirm) else confirm
        if question and not yes and not fleet["dry_run"] and _interactive():
            hosts = select_hosts(fleet["inventory_path"], selector, fleet.get("systems"))
            names = ", ".join(hosts.names[:5]) + (", …" if len(hosts) > 5 else "")
            click.confirm(f"{question} on {len(hosts)} hosts ({names})?", abort=True)
        run_step(fleet, selector, path, args, {**kw, **(adapt(fleet) if adapt else {})}, view)

    decorated: Any = callback
    for p in reversed((click.argument("selector"), *params)):
        decorated = p(decorated)
    decorated = fleet_options(BECOME(decorated))
    if confirm:
        decorated = click.option("-y", "--yes", is_flag=True,
                                 help="Do not ask for confirmation.")(decorated)
    cmd = (group.command if group else click.command)(name, help=help)(decorated)
    return cmd


# --- the pretty sink ---


def show(view: View, *, dry_run: bool = False) -> Any:
    """✔/✘ and a readable line per host as it ends; then tables (or scripts)."""
    import reactivex

    from reops.sinks.terminal import Printer
    from reops.streams.stream import Operator, Stream

    def apply(up: Stream) -> Stream:
        def subscribe(observer: Any, scheduler: Any = None) -> Any:
            p = Printer(tail=3, total=len(up.hosts))
            p.start()
            seen: list[Result] = []

            def printed(e: Any) -> None:
                if e is None:
                    (_print_commands if dry_run else _print_table)(p.console, view, seen)
                    p.summary()
                elif isinstance(e, Result):
                    seen.append(e)
                    p.result(_display(view, e, dry_run))
                else:
                    p.line(e)

            def on(e: Any) -> None:
                try:
                    printed(e)
                except (BrokenPipeError, SystemExit):  # `| head` left (rich: SystemExit)
                    observer.on_error(BrokenPipeError("stdout closed"))
                    return
                observer.on_next(e) if e is not None else observer.on_completed()

            def on_error(exc: Exception) -> None:
                p.summary(interrupted=True)
                observer.on_error(exc)

            return up.observable.subscribe(on, on_error, lambda: on(None))

        return Stream(reactivex.create(subscribe), up.hosts, lambda hs: apply(up.rebuild(hs)))

    return Operator(apply, "show")


def _display(view: View, r: Result, dry_run: bool) -> Result:
    if not r.ok:
        return r
    if dry_run:
        return msgspec.structs.replace(r, out="dry run: would run the script below")
    try:
        return msgspec.structs.replace(r, out=view.line(r)) if view.line else r
    except Exception:  # data the view does not fit: raw output
        return r


def _print_commands(console: Any, view: View, results: list[Result]) -> None:
    from rich.markup import escape

    by_command: dict[str, list[str]] = {}
    for r in results:
        if isinstance(r.data, dict) and "dry_run" in r.data:
            by_command.setdefault(r.data["dry_run"], []).append(r.host)
    for command, hosts in by_command.items():
        names = ", ".join(hosts[:6]) + (f", … ({len(hosts)} hosts)" if len(hosts) > 6 else "")
        console.print(f"[bold]── {escape(names)} would run:[/]")
        console.print(escape(command), style="dim")


def _print_table(console: Any, view: View, results: list[Result]) -> None:
    from rich.table import Table

    if view.rows is None:
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for c in ("host", *view.columns):
        table.add_column(c)
    for r in results:
        rows = view.rows(r) if r.ok and r.data is not None else []
        for row in rows[:ROWS_PER_HOST]:
            table.add_row(r.host, *(str(x) for x in row))
        if len(rows) > ROWS_PER_HOST:
            table.add_row(r.host, f"… {len(rows) - ROWS_PER_HOST} more (-o json: all)")
    if table.row_count:
        console.print(table)


def _octal(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    try:
        return None if value is None else int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal mode like 0644") from None


def _pairs(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
           ) -> dict[str, str]:
    out = {}
    for kv in value:
        key, eq, v = kv.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{kv!r}: expected KEY=VALUE")
        out[key] = v
    return out


arg = click.argument
opt = click.option
BECOME = opt("--become-user", default=None, help="Run as this user on the host (sudo -u).")
MODE = opt("--mode", callback=_octal, default=None, help="Octal mode, e.g. 0644.")
OWNED = (MODE, opt("--owner", default=None, help="User to own it."),
         opt("--group", default=None, help="Group to own it."))
RECURSIVE = opt("-r", "--recursive", is_flag=True, help="Directories too.")

# --- packages ---


@click.group("pkg")
def pkg() -> None:
    """Packages with whatever manager each host has (apt, dnf, yum, apk, zypper, pacman).

    \b
      reops pkg installed all bash openssl
      reops pkg install 'group:web' nginx --sudo
    """


REFRESH = opt("--refresh", is_flag=True, help="Refresh the package index first.")
_cmd(pkg, "update", "pkg.update", help="Refresh the package index.")
_cmd(pkg, "upgrade", "pkg.upgrade", REFRESH,
     opt("--dist", is_flag=True, help="Allow new dependencies and removals."),
     help="Upgrade every package.")
_cmd(pkg, "install", "pkg.install", arg("packages", nargs=-1, required=True), REFRESH,
     help="Install PACKAGES that are missing (present ones: no change).")
_cmd(pkg, "remove", "pkg.remove", arg("packages", nargs=-1, required=True),
     confirm="Remove packages", help="Remove installed PACKAGES (asks on a terminal).")
_cmd(pkg, "installed", "pkg.installed", arg("names", nargs=-1),
     view=View(line=lambda r: " · ".join(f"{p.name} {p.version}" for p in r.data)
               if len(r.data) <= 4 else f"{len(r.data)} packages",
               columns=("package", "version", "arch", "manager"),
               rows=lambda r: [(p.name, p.version, p.arch, p.manager) for p in r.data]),
     help="Installed packages: all, or only NAMES (a query).")

# --- services ---


@click.group("service")
def service() -> None:
    """Services on systemd or OpenRC: start stop restart reload enable disable status.

    \b
      reops service status all sshd
      reops service restart web1 nginx --sudo
    """


for _verb in ("start", "stop", "restart", "reload", "enable", "disable"):
    _cmd(service, _verb, "service.action", arg("name"), pre=(_verb,),
         help=f"{_verb.capitalize()} service NAME (no change if already done).")


def _status_line(r: Result) -> str:
    s = r.data
    enabled = {True: "enabled", False: "disabled"}.get(s.enabled, s.unit_file_state or "-")
    return (f"{s.state} ({s.sub})" if s.sub else s.state) + f" · {enabled}" + (
        f" · pid {s.pid}" if s.pid else "")


_cmd(service, "status", "service.status", arg("name"),
     view=View(line=_status_line),
     help="Whether service NAME is active and enabled (a query).")

# --- facts ---


def _facts_row(r: Result) -> list[Row]:
    f, g = r.data, r.data.row().get
    return [(f"{g('os_id', '-')} {g('os_version', '')}", g("os_kernel_release"),
             _n(g("cpus")), _size(g("memory_bytes")), _size(g("disk_bytes")),
             next((a for a in g("addresses", []) if ":" not in a), "-"), _duration(f.uptime_s))]


facts = _cmd(None, "facts", "facts", arg("parts", nargs=-1),
             view=View(line=lambda r: r.data.os.name if r.data.os else "", rows=_facts_row,
                       columns=("os", "kernel", "cpus", "memory", "disks", "address", "uptime")),
             help="What the hosts are: os, hardware, network, users, uptime (PARTS; default "
                  "all).\n\n\b\n  reops facts all\n  reops facts 'group:db' os hardware -o json")

# --- metrics ---

PATHS = ("known_hosts", "key")
SETTINGS = ("forks", "connect_timeout", "command_timeout", "user", "host_key_checking", *PATHS)
METRIC_COLUMNS = ("cpu", "mem", "load1", "disk max", "net rx", "net tx", "entropy")


def _metrics_cells(data: Any) -> list[str]:
    g = data.row().get
    return [_pct(g("cpu_busy_pct")), _pct(g("mem_used_pct")), _n(g("load1")),
            _pct(g("disk_max_used_pct")), _size(g("net_rx_bytes_s"), "/s"),
            _size(g("net_tx_bytes_s"), "/s"), _n(g("entropy"))]


METRICS_VIEW = View(line=lambda r: "cpu {} · mem {} · load {} · disk {}".format(
    *_metrics_cells(r.data)), columns=METRIC_COLUMNS, rows=lambda r: [_metrics_cells(r.data)])


@click.command("metrics")
@fleet_options
@BECOME
@opt("--every", type=click.FloatRange(min=0, min_open=True), default=None,
     help="Sample every N seconds until Ctrl-C (a live table).")
@opt("--count", type=click.IntRange(1), default=None,
     help="With --every: stop after N samples per host.")
@opt("--interval", type=click.FloatRange(min=0), default=None,
     help="Seconds between the two readings for rates [default: 1].")
@arg("selector")
@arg("kinds", nargs=-1)
def metrics(selector: str, kinds: tuple[str, ...], every: float | None, count: int | None,
            interval: float | None, **fleet: Any) -> None:
    """cpu, memory, load, disk, net, entropy (KINDS; default all) from /proc.

    \b
      reops metrics 'group:web' cpu memory --every 5
      reops metrics all --every 10 -o jsonl > samples.jsonl
    """
    if every is None or fleet["dry_run"]:
        rate = {} if interval is None else {"interval": interval}
        run_step(fleet, selector, "metrics", kinds, rate, METRICS_VIEW)
    else:
        _watch_metrics(fleet, selector, kinds, every, count, interval)


def _watch_metrics(o: dict[str, Any], selector: str, kinds: Sequence[str], every: float,
                   count: int | None, interval: float | None) -> None:
    """`metrics --every`: a live table (or JSON rows) until Ctrl-C or `--count` rounds."""
    import threading

    from rich.live import Live

    from reops.ops.metrics import KINDS
    from reops.streams.collect import collect
    from reops.streams.source import configure

    if o["output"] == "json":
        raise UserError("--every streams samples: use -o pretty (a live table) or -o jsonl")
    hosts = select_hosts(o["inventory_path"], selector, o.get("systems"))
    configure(via=o["via"], **{k: os.path.abspath(os.path.expanduser(v)) if k in PATHS else v
                               for k, v in o.items() if k in SETTINGS and v is not None})
    latest: dict[str, Result] = {}
    seen: dict[str, int] = {}
    done, lock = threading.Event(), threading.Lock()
    live = Live(_live_table(hosts.names, latest, every), auto_refresh=False)

    def on_next(r: Result) -> None:
        with lock:
            latest[r.host], seen[r.host] = r, seen.get(r.host, 0) + 1
            if o["output"] == "pretty":
                live.update(_live_table(hosts.names, latest, every), refresh=True)
            else:
                row = r.data.row() if r.ok and r.data is not None else {"err": r.err}
                print(msgspec.json.encode({"host": r.host, "status": r.status, **row}).decode(),
                      flush=True)
            if count and len(seen) == len(hosts) and min(seen.values()) >= count:
                done.set()

    with live if o["output"] == "pretty" else threading.Lock():
        sub = collect(hosts, kinds or KINDS, every, interval=interval,
                      sudo=o["sudo"]).subscribe(on_next)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
        finally:
            sub.dispose()
    sys.exit(0 if latest and all(r.ok for r in latest.values()) else 1)


def _live_table(names: list[str], latest: dict[str, Result], every: float) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, caption_justify="left",
                  caption=f"every {every:g} s · Ctrl-C to stop")
    for c in ("host", *METRIC_COLUMNS):
        table.add_column(c, justify="left" if c == "host" else "right")
    for name in names:
        r = latest.get(name)
        if r is None or (r.ok and r.data is not None):
            table.add_row(name, *(_metrics_cells(r.data) if r else "…"))
        else:
            table.add_row(name, f"[red]{r.status}[/]: {escape((r.err or '').strip()[:60])}")
    return table


# --- security ---


@click.group("security")
def security() -> None:
    """Security posture: listening ports, SSH sessions, firewall, pending updates.

    \b
      reops security listening all
      reops security firewall 'group:web' --sudo
    """


def _ports(r: Result) -> str:
    ports = sorted({(x.port, x.proto) for x in r.data})
    shown = ", ".join(f"{p}/{proto}" for p, proto in ports[:8])
    return shown + (f", … ({len(ports)})" if len(ports) > 8 else "") or "nothing listening"


_cmd(security, "listening", "listening", help="Listening TCP and bound UDP sockets.",
     view=View(line=_ports, columns=("proto", "address", "port", "process"),
               rows=lambda r: [(x.proto, x.address, x.port, x.process or "-")
                               for x in sorted(r.data, key=lambda x: (x.port, x.address))]))
_cmd(security, "sessions", "ssh_sessions", help="Logged-in users and open SSH connections.",
     view=View(line=lambda r: f"{len(r.data.logins)} logins · "
               f"{len(r.data.connections)} ssh connections",
               columns=("user", "tty", "since", "from"),
               rows=lambda r: [(x.user, x.tty, x.since, x.source or "-")
                               for x in r.data.logins]))
_cmd(security, "firewall", "firewall", help="Which firewall is in charge and its state.",
     view=View(line=lambda r: f"{r.data.backend}: "
               + ("active" if r.data.active else "inactive")
               + f" · {r.data.rules} rules · input policy {r.data.default_policy or '-'}"))
_cmd(security, "updates", "security_updates", help="Pending security updates (apt/dnf/yum).",
     view=View(line=lambda r: f"{len(r.data)} pending security updates",
               columns=("package", "current", "available", "advisory"),
               rows=lambda r: [(x.name, x.current or "-", x.available, x.advisory or "-")
                               for x in r.data]))

# --- files ---


@click.group("files")
def files() -> None:
    """Files on the hosts, idempotent: `changed` only when something changed.

    \b
      reops files template 'group:web' app.tmpl /srv/app.conf --vars env=prod
      reops files sync 'group:web' ./site /srv/www --delete
    """


def _sync_line(r: Result) -> str:
    from reops.transports.ssh.rsync import sync_via

    via = sync_via(r.out)
    return (f"{len(r.data)} paths changed" if r.data else "no change") + (
        f" (via {via})" if via else "")


_cmd(files, "mkdir", "mkdir", arg("path"), *OWNED,
     help="Make directory PATH (and parents) with mode/owner/group.")
_cmd(files, "rm", "rm", arg("paths", nargs=-1, required=True), RECURSIVE,
     confirm=lambda kw: "Remove recursively" if kw.get("recursive") else None,
     help="Remove PATHS (directories with -r, which asks on a terminal).")
_cmd(files, "cp", "cp", arg("src"), arg("dest"), RECURSIVE, help="Copy SRC to DEST on the host.")
_cmd(files, "grep", "grep", arg("pattern"), arg("paths", nargs=-1, required=True), RECURSIVE,
     opt("--ignore-case", is_flag=True),
     opt("-F", "--fixed", is_flag=True, help="PATTERN is a plain string."),
     view=View(line=lambda r: f"{len(r.data)} matching lines", columns=("path", "line", "text"),
               rows=lambda r: [(m.path, m.line, m.text) for m in r.data]),
     help="Lines matching PATTERN (extended regex) in PATHS.")
_cmd(files, "extract", "extract", arg("archive"), arg("dest"),
     opt("--strip-components", type=click.IntRange(0), default=0),
     opt("--creates", default=None, help="Skip when this path exists."),
     view=View(line=lambda r: f"{len(r.data)} entries" if r.changed else "no change"),
     help="Unpack the tar ARCHIVE (on the host) into DEST.")
_cmd(files, "line-in-file", "line_in_file", arg("path"), arg("line"),
     opt("--regex", default=None, help="Replace the first line matching this ERE."),
     opt("--present/--absent", default=True, help="Ensure the line is there, or is not."),
     opt("--create", is_flag=True, help="Create PATH if missing."),
     help="Ensure LINE is in (or --absent: not in) the file PATH.")
_cmd(files, "template", "template", arg("src", type=click.Path(exists=True, dir_okay=False)),
     arg("remote"), *OWNED,
     opt("--vars", multiple=True, callback=_pairs, metavar="KEY=VALUE",
         help="Extra template variable (repeatable)."),
     opt("--engine", type=click.Choice(["template", "format"]), default="template",
         show_default=True, help="template: $name (string.Template); format: {name}."),
     help="Render local template SRC with host vars; write REMOTE only if it differs.")
_cmd(files, "sync", "sync", arg("local", type=click.Path(exists=True)), arg("remote"),
     opt("--delete", is_flag=True, help="Remove remote files LOCAL lacks."),
     opt("--exclude", multiple=True, help="Pattern to skip (repeatable)."),
     view=View(line=_sync_line),
     help="Make REMOTE a copy of LOCAL: rsync when both ends have it, else SFTP.")
_cmd(files, "upload", "upload", arg("local", type=click.Path(exists=True)), arg("remote"),
     MODE, view=View(), help="Copy LOCAL (file or directory) to REMOTE over SFTP.")
_cmd(files, "download", "download", arg("remote"), arg("local"), view=View(),
     help="Copy REMOTE from each host into LOCAL/<host>/.")

# --- power ---

DELAY = opt("--delay", "delay_s", type=click.IntRange(1), default=2, show_default=True,
            help="Seconds to wait first, so the command returns.")


def _wait_bound(fleet: dict[str, Any]) -> dict[str, Any]:
    from reops.streams.waits import REBOOT_TIMEOUT_S

    return {"timeout": fleet["command_timeout"] or REBOOT_TIMEOUT_S}


reboot = _cmd(None, "reboot", "reboot", DELAY,
              opt("--wait/--no-wait", default=True, show_default=True,
                  help="Wait until each host runs a new boot (up to -t/--timeout)."),
              confirm="Reboot", adapt=_wait_bound,
              view=View(line=lambda r: r.out if hasattr(r.data, "after")
                        else "reboot scheduled"),
              help="Reboot (needs --sudo); asks on a terminal. --wait: each result comes "
                   "once the host runs a new boot, within -t/--timeout [default: 600 s].")
shutdown = _cmd(None, "shutdown", "shutdown", DELAY, confirm="Power off",
                view=View(line=lambda r: "power-off scheduled"),
                help="Power the hosts off (needs root: --sudo); asks on a terminal.")

__all__ = ["facts", "files", "metrics", "pkg", "reboot", "security", "service", "shutdown"]
