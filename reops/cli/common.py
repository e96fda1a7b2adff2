"""What every fleet command shares: host selection, SSH flags, output modes, exit codes.

`@fleet_options` adds the flags; `run_on_fleet(opts, build)` selects hosts, configures
the runtime, runs the pipeline `build(hosts)` and prints it the chosen way.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from reops.cli.main import UserError, default_inventory

# Function-level imports below are on purpose: `reops --help` and `reops CMD --help` load
# none of a command's machinery (see LAZY in reops.cli.main).


def fleet_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Inventory, selector-independent SSH flags, output, retries, batches."""
    options = [
        click.option("-i", "--inventory", "inventory_path", type=click.Path(path_type=Path),
                     default=None, help="Inventory: TOML, or Ansible INI/YAML [default: "
                     "$REOPS_INVENTORY, ./inventory.toml, ./lab/inventory.toml]."),
        click.option("--systems", "systems", default=None, metavar="SELECTOR",
                     help="Run on machines from the systems store instead of an inventory "
                     "(e.g. 'typed:redis & running')."),
        click.option("-o", "--output", type=click.Choice(["pretty", "json", "jsonl"]),
                     default="pretty", show_default=True,
                     help="pretty: ✔/✘ per host; json: the Outcome; jsonl: a Result per line."),
        click.option("--save", type=click.Path(path_type=Path), default=None,
                     help="Also append the Results to this parquet table."),
        click.option("-f", "--forks", type=click.IntRange(1), default=None,
                     help="Hosts worked on at once [default: 256, lowered to fit the open-file "
                     "limit]."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True),
                     default=None, help="Seconds to connect and log in [default: 10]."),
        click.option("-t", "--timeout", "command_timeout",
                     type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Seconds a command may run before it is killed [default: none]."),
        click.option("--host-key-checking", type=click.Choice(["strict", "accept-new", "off"]),
                     default=None, help="strict: known_hosts must match; accept-new: record "
                     "unknown hosts; off: do not check (unsafe) [default: ssh_config's "
                     "StrictHostKeyChecking, else strict]."),
        click.option("--known-hosts", type=click.Path(path_type=Path), default=None,
                     help="known_hosts file for hosts without their own "
                     "[default: ~/.ssh/known_hosts]."),
        click.option("-u", "--user", default=None, help="Login user for hosts without one."),
        click.option("--key", type=click.Path(path_type=Path), default=None,
                     help="Private key for hosts without one [default: your SSH agent and "
                     "~/.ssh/id_*]."),
        click.option("--ssh-config", "ssh_config", type=click.Path(path_type=Path),
                     default=None, help="OpenSSH client config to read instead of "
                     "~/.ssh/config and /etc/ssh/ssh_config (as ssh -F)."),
        click.option("--no-ssh-config", is_flag=True,
                     help="Read no ssh_config: only the inventory and these flags apply."),
        click.option("--sudo", is_flag=True, help="Run commands as root through sudo -n."),
        click.option("-K", "--ask-become-pass", is_flag=True,
                     help="Ask once (no echo) for the sudo password; it reaches sudo on "
                     "stdin, never a command line."),
        click.option("--become-pass-file", type=click.Path(path_type=Path), default=None,
                     help="The sudo password is FILE's first line (chmod 600) "
                     "[default: $REOPS_BECOME_PASS; none: sudo -n]."),
        click.option("--via", type=click.Choice(["ssh", "agent", "auto"]), default="ssh",
                     show_default=True, help="Transport; auto: agent where connected, else SSH."),
        click.option("--no-hub", is_flag=True,
                     help="Connect from this process even when a `reops hub` runs (default: "
                     "use its warm SSH connections; also REOPS_NO_HUB=1)."),
        click.option("--stream", "lines", is_flag=True,
                     help="Show output lines live as hosts print them (arrival order, "
                     "not gathered)."),
        click.option("--lines", "tail_lines", type=click.IntRange(0), default=None,
                     metavar="N", help="Show the last N output lines per host or block, with "
                     "'… M more lines' where cut [default: 10]."),
        click.option("--full", is_flag=True, help="Show every output line."),
        click.option("--gather/--no-gather", "gather", default=True,
                     help="Gather hosts with identical output into one block, e.g. "
                     "'web[1-10] (10)' [default: gather]."),
        click.option("--dry-run", is_flag=True,
                     help="Print what each host would run; run nothing."),
        click.option("--check", is_flag=True,
                     help="Ask each host, read-only, whether the op WOULD change it (a diff "
                     "for files); exit 0 no change, 1 changes, 2 errors (like diff)."),
        click.option("--no-diff", is_flag=True,
                     help="With --check: compare files by sha256 only; no content leaves the "
                     "hosts (templates holding secrets)."),
        click.option("--retry", "retries", type=click.IntRange(0), default=0,
                     help="Re-run hosts never reached (unreachable) up to N times; hosts where the "
                     "command started (failed, timeout, lost) are never re-run."),
        click.option("--rolling", "batch", type=click.IntRange(1), default=None,
                     help="Work on N hosts at a time, batch after batch."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def select_hosts(inventory_path: Path | None, selector: str, systems: str | None = None,
                 *, unaddressed_ok: bool = False) -> Any:
    """The Hosts of an inventory SELECTOR, or of a --systems selector; none: a UserError
    (unaddressed_ok: systems were selected, none with an address, and run_on_fleet reports
    them as not reached, so no Hosts is no error)."""
    if systems is not None:
        from reops.systems import hosts as system_hosts

        found = system_hosts(systems)
        if not len(found) and not unaddressed_ok:
            raise UserError(f"systems selector {systems!r} matched no machines with an address "
                            "(see `reops systems ls`)")
        return found
    from reops.core.inventory import inventory

    path = inventory_path or default_inventory()
    inv = inventory(path)
    hosts = inv.select(selector)
    if not len(hosts):
        raise UserError(f"selector {selector!r} matched no hosts in {path}")
    return hosts


#: the fleet flags that become Settings (paths: made absolute)
SETTINGS = ("forks", "connect_timeout", "command_timeout", "host_key_checking", "user")
PATHS = ("known_hosts", "key")


def configure_fleet(opts: dict[str, Any], *, lines: bool = False) -> None:
    """The fleet flags (--forks, --key, --sudo, --via, --dry-run …) → the process defaults;
    the one place flags become Settings, for every fleet command."""
    from reops.core.settings import fd_bounded
    from reops.streams.source import configure

    settings = {k: opts[k] for k in SETTINGS if opts.get(k) is not None}
    for name in PATHS:
        if opts.get(name) is not None:
            settings[name] = str(Path(opts[name]).expanduser().absolute())
    if opts.get("sudo"):
        settings["sudo"] = True
    if opts.get("no_ssh_config"):
        settings["ssh_config"] = False
    elif opts.get("ssh_config") is not None:
        settings["ssh_config"] = str(Path(opts["ssh_config"]).expanduser().absolute())
    if (secret := become_pass(opts)) is not None:
        settings["become_pass"] = secret
    hub = ""
    if opts["via"] != "agent" and not opts["dry_run"]:
        from reops.transports.hubssh import hub_socket

        hub = str(hub_socket(opts.get("no_hub", False)) or "")
    d = configure(via=opts["via"], lines=lines, dry_run=opts["dry_run"], hub=hub, **settings)
    configure(check=bool(opts.get("check")), diff=not opts.get("no_diff"))
    d.settings, note = fd_bounded(d.settings)
    if note:
        click.echo(f"reops: note: {note}", err=True)


def become_pass(opts: dict[str, Any]) -> Any:
    """The sudo password of --ask-become-pass (a prompt without echo) or
    --become-pass-file; None: $REOPS_BECOME_PASS or `sudo -n` (Settings decide)."""
    from reops.core.secrets import Secret, SecretError, from_file

    if opts.get("ask_become_pass"):
        return Secret(click.prompt("sudo password", hide_input=True, err=True, default="",
                                   show_default=False))
    if opts.get("become_pass_file") is not None:
        try:
            return from_file(opts["become_pass_file"])
        except SecretError as e:
            raise UserError(str(e)) from None
    return None


def run_on_fleet(opts: dict[str, Any], selector: str, build: Callable[[Any], Any]) -> None:
    """Select, configure, run `build(hosts)` and exit 0/1 by the Outcome.

    The one pipeline of every fleet command (`exec` and every op command): build (plus,
    with --systems, a not-reached Result per selected system without an address) →
    --retry → --rolling → the sink of -o (pretty: the terminal sink, whose per-op views
    show facts, packages … ; jsonl; json) → --save.
    """
    import shlex

    from reops.core.model import RunInfo
    from reops.core.runtime import terminate_like_interrupt, terminated
    from reops.streams.stream import run

    # what only some flags need is imported under them: every import here is start-up time
    # of every command (tests/test_cli_startup.py guards the set)

    terminate_like_interrupt()
    configure_fleet(opts, lines=opts["lines"] and opts["output"] == "pretty")
    systems = opts.get("systems")
    skipped = unaddressed(systems) if systems is not None else []
    hosts = select_hosts(opts["inventory_path"], selector, systems,
                         unaddressed_ok=bool(skipped))
    stream = build(hosts)
    if skipped:  # each selected system without an address: a host not reached, never dropped
        stream = with_unreached(stream, skipped, _op_name())
    info = RunInfo(command=shlex.join(["reops", *sys.argv[1:]]), check=bool(opts.get("check")),
                   selector=opts["systems"] if opts.get("systems") else selector)
    if opts["retries"]:
        from reops.streams.operators.retry import retry

        stream = stream | retry(opts["retries"])
    if opts["batch"]:
        from reops.streams.operators.rolling import rolling

        stream = stream | rolling(opts["batch"])
    if opts["output"] == "pretty":
        from reops.sinks.terminal import pretty

        stream = stream | pretty(**pretty_options(opts))
    elif opts["output"] == "jsonl":
        from reops.sinks.jsonl import jsonl

        stream = stream | jsonl(sys.stdout, run=info)
    try:
        outcome = run(stream, info=info)
        if opts["output"] == "json":
            sys.stdout.write(outcome.to_json().decode() + "\n")
            sys.stdout.flush()
    except BrokenPipeError:  # `reops exec … | head`: the reader left; stop quietly
        quiet_stdout()
        sys.exit(141)
    if opts["save"] is not None:
        from reops.sinks.table import save

        path = save(outcome, opts["save"])
        if opts["output"] == "pretty":
            click.echo(f"saved {len(outcome.all)} rows to {path}", err=True)
    if outcome.interrupted:
        why = "terminated (SIGTERM)" if terminated() else "interrupted"
        click.echo(f"reops: {why}: hosts not finished are reported as errors", err=True)
        sys.exit(143 if terminated() else 130)
    if opts.get("check") and not opts["dry_run"]:  # pretty: the terminal sink printed it
        sys.exit(outcome.check_exit_code)
    sys.exit(outcome.exit_code)


def pretty_options(opts: dict[str, Any]) -> dict[str, Any]:
    """--lines N / --full / --no-gather / --stream → the terminal sink's keywords."""
    from reops.sinks.gather import DEFAULT_LINES

    lines = opts.get("tail_lines")
    return {"tail": None if opts.get("full") else DEFAULT_LINES if lines is None else lines,
            "gather": opts.get("gather", True), "live": bool(opts.get("lines"))}


def quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so exit-time flushes stay silent."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def fleet_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click callback that gets (selector, opts) and returns a build function."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> None:
        selector = kwargs.pop("selector")
        run_on_fleet(kwargs, selector, fn(selector=selector, **kwargs))

    return wrapper


def _op_name() -> str:
    """The running command as an op name ("exec", "facts", "pkg.install"), for the Results
    of systems it did not reach."""
    words: list[str] = []
    ctx = click.get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:  # the root is `reops` (or `-m reops`)
        words.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return ".".join(w for w in words if w) or "run"


def with_unreached(stream: Any, skipped: list[Any], op: str) -> Any:
    """`stream` plus an `unreachable` Result (code -1) for each selected system without an
    address: a host not reached, so the run exits 1 and `-o json` lists it under "-1",
    exactly as it would an unreachable inventory host, rather than it silently missing."""
    import reactivex

    from reops.core.model import Host, Hosts, failure_result
    from reops.streams.stream import Stream

    failed = [failure_result(s.hostname, op, f"no address (state {s.state}): not run; "
                             f"start it: reops systems start {s.short_id}") for s in skipped]
    names = {r.host for r in failed}
    placeholders = Hosts(Host(name=n, address="") for n in names)  # never connected to

    def rebuild(subset: Any) -> Any:  # --retry/--rolling: the addressed ones run again
        again = stream.rebuild(subset.where(lambda h: h.name not in names))
        still = [s for s in skipped if s.hostname in subset]
        return with_unreached(again, still, op) if still else again

    return Stream(reactivex.merge(reactivex.of(*failed), stream.observable),
                  stream.hosts | placeholders, rebuild)


def unaddressed(selector: str) -> list[Any]:
    """The selected systems that have no address (stopped, booting), each told in one line:
    they are left out, never looked up in DNS by their name, and reported as not reached."""
    import asyncio

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

    try:
        chosen = asyncio.run(read())
    except (MachinesError, SelectorError, OSError):
        return []  # the selection itself reports what is wrong
    skipped = [s for s in chosen if not addressable(s)]
    for s in skipped:
        click.echo(f"reops: {s.hostname}: no address (state {s.state}): not run there; "
                   f"start it: reops systems start {s.short_id}", err=True)
    return skipped
