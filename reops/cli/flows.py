"""`reops run FILE[:FUNC] [--param value]` and `reops flows …`: saved flows, and flows
running inside the hub (start, ls, stop, reload, log)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    if "--dry-run" in args:  # what it WOULD run, per host, over recorded/synthetic events
        ctx.exit(__import__("reops.cli.dry_run", fromlist=["x"]).dry_run(spec, args))
    from reops.core.runtime import terminate_like_interrupt, terminated
    from reops.flows import resolve

    terminate_like_interrupt()  # SIGTERM cancels and cleans up like Ctrl-C (exit 143)
    from reops.sinks.history import set_source

    flow = resolve(spec)
    set_source("flow", flow=flow.name)  # its runs are this flow's in `reops history`
    command = flow.command()
    command.name = f"reops run {spec}"
    try:
        command.main(list(args), prog_name=f"reops run {spec}", standalone_mode=True)
    except SystemExit as e:
        if terminated():  # the flow drained its partial outcome; say why it stopped
            ctx.exit(143)
        ctx.exit(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))


class _FlowsGroup(click.Group):
    """`reops flows` with a subcommand, or the old `reops flows [PATH...]` (= `list`).

    Subcommand names win: a directory called `ls` is listed with `reops flows list ls`.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group("flows", cls=_FlowsGroup)
def flows_cmd() -> None:
    """Saved flows, and flows running in the hub.

    \b
      reops flows flows/                        # the saved flows in a directory (= list)
      reops flows start flows/heal.py --selector 'group:web'   # runs inside `reops hub`
      reops flows start --watch flows/heal.py   # … and reload it when the file changes
      reops flows ls                            # running flows: since, fired, last outcome
      reops flows log heal --follow             # the audit: every firing, per host
      reops flows reload heal                   # swap in the edited file (a broken one is kept out)
      reops flows stop heal
    """


@flows_cmd.command("list")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Choice(["pretty", "json"]), default="pretty",
              show_default=True)
def list_cmd(paths: tuple[Path, ...], output: str) -> None:
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


# ── flows in the hub ──────────────────────────────────────────────────────────────────


def _hub(method: str, params: dict[str, Any], timeout: float = 10.0,
         on_item: Callable[[Any], None] | None = None) -> Any:
    """One request to the running hub; its errors are one line (exit 2)."""
    from reops.cli.main import UserError
    from reops.control.client import HubError, HubNotRunning, request_sync
    from reops.control.settings import load_hub_settings

    try:
        return request_sync(load_hub_settings().control_path, method, params, timeout=timeout,
                            on_item=on_item)
    except (HubNotRunning, HubError) as e:
        raise UserError(str(e)) from None


def _ago(t: float) -> str:
    import time

    s = max(0, int(time.time() - t))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


@flows_cmd.command("start", context_settings={"ignore_unknown_options": True,
                                              "allow_extra_args": True})
@click.option("--as", "name", default=None, metavar="NAME",
              help="Run it under this name [default: the flow's].")
@click.option("--watch", is_flag=True, help="Reload it whenever its file changes.")
@click.option("--max-rate", default="", metavar="RATE",
              help="Storm limit of each of its triggers, e.g. 100/10s, or off "
                   "[default: [flows] max_rate, 100/10s].")
@click.argument("spec")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def start_cmd(name: str | None, watch: bool, max_rate: str, spec: str,
              args: tuple[str, ...]) -> None:
    """Run FILE[:FUNC] inside the hub with its options; returns once it runs.

    \b
      reops flows start flows/heal.py --selector 'group:web' --every 30
      reops flows start --watch flows/heal.py:heal
      reops flows start flows/x.py -- --watch 1    # after `--`, every option is the flow's

    Every option but --as, --watch and --max-rate is the flow's, as typed; the hub parses
    them, so give paths absolute (the hub does not run in your directory).
    """
    import re

    file, sep, func = spec.rpartition(":")
    if not sep or not re.fullmatch(r"[\w.-]+", func) or Path(spec).is_file():
        file, func = spec, ""  # as `reops run` reads FILE[:FUNC]
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise click.UsageError(f"{file}: no such flow file")
    if "--help" in args or "-h" in args:  # the flow's own options, read here
        from reops.flows import resolve

        flow = resolve(f"{path}:{func}" if func else str(path))
        click.echo(flow.command().get_help(click.Context(flow.command(),
                                                         info_name=f"flows start {spec}")))
        return
    from reops.hub.flows import load_flow_settings

    info = _hub("flows.start", {"file": str(path), "func": func, "args": list(args),
                                "watch": watch, "name": name or "",
                                "max_rate": max_rate},
                timeout=load_flow_settings().start_timeout_s + 10)
    click.echo(f"started {info['name']} ({path}:{info['func']}, version {info['version']})"
               + ("; watching the file" if watch else ""))


@flows_cmd.command("ls")
@click.option("-o", "--output", type=click.Choice(["pretty", "json"]), default="pretty",
              show_default=True)
def ls_cmd(output: str) -> None:
    """Flows in the hub: state, since, fired, last outcome, restarts, errors."""
    rows = _hub("flows.ls", {})
    if output == "json":
        import msgspec

        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return
    if not rows:
        click.echo("no flows in the hub; start one with `reops flows start FILE`", err=True)
        return
    click.echo(f"{'NAME':<16} {'STATE':<9} {'SINCE':<9} {'FIRED':>6}  {'LAST':<22} "
               f"{'VERSION':<12} FILE")
    for r in rows:
        since = _ago(r["since"]) if r["since"] else "-"
        notes = []
        if r["restarts"]:
            notes.append(f"restarted {r['restarts']}x by the hub")
        if r["reloads"]:
            notes.append(f"reloaded {r['reloads']}x")
        if r["watch"]:
            notes.append("watching")
        if r["in_flight"]:
            notes.append(f"{r['in_flight']} in flight")
        if r.get("dropped"):
            notes.append(f"{r['dropped']} audit records dropped")
        if r.get("squelched"):
            notes.append(f"squelched {r['squelched']}x over {r['max_rate']}, "
                         f"{r['squelch_dropped']} trigger events dropped")
        if r.get("publish_dropped"):
            notes.append(f"{r['publish_dropped']} bus messages dropped by its publish()")
        if r.get("cluster"):  # several controllers: who runs it, whom it was taken from
            notes.insert(0, f"on {r['controller']}" if r["controller"] else
                         "on no live controller: a peer takes it over")
            if r.get("taken_from") and r["controller"]:
                notes.insert(1, f"taken over from {r['taken_from']}")
        click.echo(f"{r['name']:<16} {r['state']:<9} {since:<9} {r['fired']:>6}  "
                   f"{r['last'] or '-':<22} {r['version'] or '-':<12} {r['file']}:{r['func']}"
                   + (f"  ({', '.join(notes)})" if notes else ""))
        if r["error"]:
            click.echo(f"    error: {r['error']}")
        if r.get("reloaded"):
            click.echo(f"    last reload: {r['reloaded']}")


@flows_cmd.command("stop")
@click.argument("name")
def stop_cmd(name: str) -> None:
    """Stop a flow (its steps in flight are cancelled); it does not come back."""
    info = _hub("flows.stop", {"name": name}, timeout=60)
    where = f" on {info['controller']}" if info.get("controller") else ""
    click.echo(f"stopped {name}{where}")


@flows_cmd.command("reload")
@click.argument("name")
def reload_cmd(name: str) -> None:
    """Import the flow's file again and swap it in; a broken file keeps the old one."""
    from reops.hub.flows import load_flow_settings

    info = _hub("flows.reload", {"name": name},
                timeout=load_flow_settings().start_timeout_s + 10)
    if not info["reloaded"]:
        click.echo(f"reops: error: {info['error']} (version {info['version']} keeps running)",
                   err=True)
        sys.exit(1)
    ms = info.get("seconds", 0.0) * 1000
    from reops.hub.flow_running import kept_swapped

    click.echo(f"reloaded {name}: {info.get('previous') or '-'} -> {info['version']} "
               f"in {ms:.0f} ms; {kept_swapped(info.get('kept', []), info.get('swapped', []))}")


def _row_line(r: dict[str, Any]) -> str:
    import datetime

    at = datetime.datetime.fromtimestamp(r["at"]).isoformat(sep=" ", timespec="seconds")
    if r.get("controller"):  # several controllers: which one wrote it
        at = f"{at}  [{r['controller']}]"
    if not r.get("host"):  # a flow event: started, reloaded, error, stopped …
        return f"{at}  {r.get('version', ''):<12}  {r['status']}: {r.get('detail', '')}"
    code = f" ({r.get('code', 0)})" if r.get("status") != "ok" else ""
    return (f"{at}  {r.get('version', ''):<12}  #{r['firing']:<5} {r.get('trigger', ''):<24} "
            f"{r['host']:<12} {r['status']}{code}  {r.get('detail', '')}")


@flows_cmd.command("log")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records (Ctrl-C ends).")
@click.option("-n", "--lines", "limit", type=click.IntRange(1), default=50, show_default=True,
              help="How many of the newest records to show first.")
@click.option("-o", "--output", type=click.Choice(["pretty", "json"]), default="pretty",
              show_default=True)
def log_cmd(name: str, follow: bool, limit: int, output: str) -> None:
    """The flow's audit: when, version (file hash), firing, trigger, host, outcome."""
    import msgspec

    def show(r: Any) -> None:
        line = msgspec.json.encode(r).decode() if output == "json" else _row_line(r)
        click.echo(line)

    params = {"name": name, "follow": follow, "limit": limit}
    if not follow:
        _hub("flows.log", params, on_item=show)
        return
    import asyncio

    from reops.cli.main import UserError
    from reops.control.client import HubClient, HubError, HubGone, HubNotRunning
    from reops.control.settings import load_hub_settings
    from reops.control.wire import Item

    async def follow_log() -> None:
        """Over the async client: it notices at once when the hub goes away."""
        client = HubClient(load_hub_settings().control_path)
        try:
            async for reply in client.replies("flows.log", **params):
                if isinstance(reply, Item):
                    show(reply.value)
        finally:
            await client.close()

    try:
        asyncio.run(follow_log())
    except (HubNotRunning, HubError) as e:
        raise UserError(str(e)) from None
    except HubGone:
        click.echo("reops: error: the hub went away", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
