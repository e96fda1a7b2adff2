"""`reops pkg|service|facts|metrics|security|files|reboot|shutdown`: ops as commands.

Same flags, pipeline and exit codes as `reops exec`: each command only builds its step's
Stream and hands it to `run_on_fleet` (cli/common.py). How parsed `data` reads on a terminal
(a line per host, then a table) is the op's view in `reops/sinks/views.py`. `_cmd` maps
click arguments/options to the step's arguments.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
import msgspec

from reops.cli.common import (
    configure_fleet,
    fleet_options,
    run_on_fleet,
    select_hosts,
    unaddressed,
    with_unreached,
)
from reops.cli.main import UserError
from reops.core.model import Result

# Function-level imports below are on purpose: `reops --help` and `reops CMD --help` load
# none of a command's machinery (see LAZY in reops.cli.main).

Param = Callable[[Any], Any]
#: `reops exec`'s flags (other parameters go to the step)
FLEET = {p.name for p in getattr(fleet_options(lambda: None), "__click_params__", ())}


def _step(path: str) -> Callable[..., Any]:
    """`"pkg.install"` → reops.streams.steps.pkg.install; `module:attr` elsewhere."""
    module, _, attr = path.rpartition(":")
    obj: Any = importlib.import_module(module or "reops.streams.steps")
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def step_build(fleet: dict[str, Any], path: str, args: Sequence[Any],
               kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    """What `run_on_fleet` runs for op command `path`: hosts → the step's Stream.

    No sink here: `run_on_fleet` adds --retry, --rolling and the output, as for `exec`;
    the op's pretty view is chosen by the terminal sink from the op's name.
    """
    fn = _step(path)
    if fleet.get("become_user"):
        if "become_user" not in inspect.signature(getattr(fn, "describe", fn)).parameters:
            raise UserError(f"--become-user does not apply to {path}")
        kwargs = {**kwargs, "become_user": fleet["become_user"]}
    return lambda hosts: fn(hosts, *args, **kwargs)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _cmd(group: Any, name: str, path: str, *params: Param,
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
        if question and not yes and not fleet["dry_run"] and not fleet.get("check") \
                and _interactive():
            # with --systems, those without an address are reported by run_on_fleet, not
            # run on: the question names only the hosts it would act on (none: no question)
            hosts = select_hosts(fleet["inventory_path"], selector, fleet.get("systems"),
                                 unaddressed_ok=fleet.get("systems") is not None)
            names = ", ".join(hosts.names[:5]) + (", …" if len(hosts) > 5 else "")
            if len(hosts):
                click.confirm(f"{question} on {len(hosts)} hosts ({names})?", abort=True)
        build = step_build(fleet, path, args, {**kw, **(adapt(fleet) if adapt else {})})
        run_on_fleet(fleet, selector, build)

    decorated: Any = callback
    for p in reversed((click.argument("selector"), *params)):
        decorated = p(decorated)
    decorated = fleet_options(BECOME(decorated))
    if confirm:
        decorated = click.option("-y", "--yes", is_flag=True,
                                 help="Do not ask for confirmation.")(decorated)
    cmd = (group.command if group else click.command)(name, help=help)(decorated)
    return cmd


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
_cmd(service, "status", "service.status", arg("name"),
     help="Whether service NAME is active and enabled (a query).")

# --- facts ---

facts = _cmd(None, "facts", "facts", arg("parts", nargs=-1),
             help="What the hosts are: os, hardware, network, users, uptime (PARTS; default "
                  "all).\n\n\b\n  reops facts all\n  reops facts 'group:db' os hardware -o json")

# --- metrics ---


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
        run_on_fleet(fleet, selector, step_build(fleet, "metrics", kinds, rate))
    else:
        _watch_metrics(fleet, selector, kinds, every, count, interval)


def _watch_metrics(o: dict[str, Any], selector: str, kinds: Sequence[str], every: float,
                   count: int | None, interval: float | None) -> None:
    """`metrics --every`: a live table (or JSON rows) until Ctrl-C or `--count` rounds.

    The endless twin of `run_on_fleet`: same flags → Settings, the terminal's live sink
    (drawn off the loop, latest frame wins) and the metrics view from `sinks/views.py`.
    """
    import threading

    from reops.core import hooks
    from reops.core.model import RunInfo
    from reops.ops.metrics import KINDS
    from reops.sinks.terminal import live
    from reops.sinks.views import metrics_table
    from reops.streams.collect import collect

    if o["output"] == "json":
        raise UserError("--every streams samples: use -o pretty (a live table) or -o jsonl")
    systems = o.get("systems")
    skipped = unaddressed(systems) if systems is not None else []  # as run_on_fleet does
    hosts = select_hosts(o["inventory_path"], selector, systems, unaddressed_ok=bool(skipped))
    names = [*hosts.names, *(s.hostname for s in skipped)]
    configure_fleet({**o, "dry_run": False})
    latest: dict[str, Result] = {}
    seen: dict[str, int] = {}
    done = threading.Event()
    caption = f"every {every:g} s · Ctrl-C to stop"
    info = RunInfo(command=shlex.join(["reops", *sys.argv[1:]]), pipeline="metrics",
                   selector=selector)

    def on_next(r: Any) -> None:
        if not isinstance(r, Result):
            return
        latest[r.host], seen[r.host] = r, seen.get(r.host, 0) + 1
        hooks.result_finished(r, info)  # each sample lands in `reops history`
        if o["output"] != "pretty":
            row = r.data.row() if r.ok and r.data is not None else {"err": r.err}
            try:
                print(msgspec.json.encode({"host": r.host, "status": r.status, **row}).decode(),
                      flush=True)
            except BrokenPipeError:  # `| head`: the reader has enough; stop quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                done.set()
                return
        # --count rounds of every host reached (none to reach: the not-reached rows once)
        if (count or not len(hosts)) and all(seen.get(n, 0) >= (count or 1)
                                             for n in hosts.names):
            done.set()

    samples = collect(hosts, kinds or KINDS, every, interval=interval, sudo=o["sudo"])
    if skipped:
        samples = with_unreached(samples, skipped, "metrics")
    if o["output"] == "pretty":
        samples = samples | live(lambda now: metrics_table(names, now, caption))
    sub = samples.subscribe(on_next)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sub.dispose()  # the last frame is drawn before this returns
    sys.exit(0 if latest and all(r.ok for r in latest.values()) else 1)


# --- security ---


@click.group("security")
def security() -> None:
    """Security posture: listening ports, SSH sessions, firewall, pending updates.

    \b
      reops security listening all
      reops security firewall 'group:web' --sudo
    """


_cmd(security, "listening", "listening", help="Listening TCP and bound UDP sockets.")
_cmd(security, "sessions", "ssh_sessions", help="Logged-in users and open SSH connections.")
_cmd(security, "firewall", "firewall", help="Which firewall is in charge and its state.")
_cmd(security, "updates", "security_updates", help="Pending security updates (apt/dnf/yum).")

# --- files ---


@click.group("files")
def files() -> None:
    """Files on the hosts, idempotent: `changed` only when something changed.

    \b
      reops files template 'group:web' app.tmpl /srv/app.conf --vars env=prod
      reops files sync 'group:web' ./site /srv/www --delete
    """


_cmd(files, "mkdir", "mkdir", arg("path"), *OWNED,
     help="Make directory PATH (and parents) with mode/owner/group.")
_cmd(files, "rm", "rm", arg("paths", nargs=-1, required=True), RECURSIVE,
     confirm=lambda kw: "Remove recursively" if kw.get("recursive") else None,
     help="Remove PATHS (directories with -r, which asks on a terminal).")
_cmd(files, "cp", "cp", arg("src"), arg("dest"), RECURSIVE, help="Copy SRC to DEST on the host.")
_cmd(files, "grep", "grep", arg("pattern"), arg("paths", nargs=-1, required=True), RECURSIVE,
     opt("--ignore-case", is_flag=True),
     opt("-F", "--fixed", is_flag=True, help="PATTERN is a plain string."),
     help="Lines matching PATTERN (extended regex) in PATHS.")
_cmd(files, "extract", "extract", arg("archive"), arg("dest"),
     opt("--strip-components", type=click.IntRange(0), default=0),
     opt("--creates", default=None, help="Skip when this path exists."),
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
     help="Make REMOTE a copy of LOCAL: rsync when both ends have it, else SFTP.")
_cmd(files, "upload", "upload", arg("local", type=click.Path(exists=True)), arg("remote"),
     MODE, help="Copy LOCAL (file or directory) to REMOTE over SFTP.")
_cmd(files, "download", "download", arg("remote"), arg("local"),
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
              help="Reboot (needs --sudo); asks on a terminal. --wait: each result comes "
                   "once the host runs a new boot, within -t/--timeout [default: 600 s].")
shutdown = _cmd(None, "shutdown", "shutdown", DELAY, confirm="Power off",
                help="Power the hosts off (needs root: --sudo); asks on a terminal.")

__all__ = ["facts", "files", "metrics", "pkg", "reboot", "security", "service", "shutdown"]
