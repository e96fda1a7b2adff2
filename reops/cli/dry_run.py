"""`reops run FILE --dry-run [--events FILE.jsonl]`: what a flow WOULD run, per host.

Every step runs in dry-run mode (reops.transports.base.DryRun: nothing executes on any
host), and the flow's triggers are replaced by events: the recorded ones of `--events`
(one TriggerEvent per line, as `reops tail -o json 'event.*'` prints them, or the event
itself), or one synthetic tick when none are given (it fires on each host of `hosts=`);
`publish()` sends nothing. Each Result the flow reaches is printed as `host  op  status
what it would run` (a script's first line), with the steps before it, so a flow can be
checked against last night's events before it is started.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from reops.cli.common import UserError

__all__ = ["dry_run", "read_events", "split_args"]


def split_args(args: Iterable[str]) -> tuple[Path | None, list[str]]:
    """(`--events` file, the flow's own arguments) out of `reops run` arguments."""
    events: Path | None = None
    rest: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--dry-run":
            continue
        if a == "--events" or a.startswith("--events="):
            value = a.partition("=")[2] if "=" in a else next(it, "")
            if not value:
                raise UserError("--events needs a file: --events events.jsonl")
            events = Path(value)
            continue
        rest.append(a)
    return events, rest


def read_events(path: Path) -> list[Any]:
    """The TriggerEvents of a jsonl file; a line that is none is one clear error."""
    import msgspec

    from reops.streams.triggers.event import TriggerEvent

    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"--events {path}: {e.strerror or e}") from None
    events = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if isinstance(raw, dict) and isinstance(raw.get("data"), dict) \
                    and "source" not in raw:
                raw = raw["data"]  # a bus message (reops tail -o json): the event is its data
            events.append(msgspec.convert(raw, TriggerEvent))
        except (ValueError, msgspec.ValidationError) as e:
            raise UserError(f"{path}:{n}: not a trigger event ({e})") from None
    return events


def _synthetic() -> list[Any]:
    from reops.streams.triggers.event import Tick, TriggerEvent

    now = time.time()
    return [TriggerEvent(source="clock", kind="tick", key="dry-run", time=now,
                         payload=Tick(n=0, due=now))]


def _replace_triggers(events: list[Any]) -> list[Any]:
    """Make `on(trigger, hosts=)` take `events` instead of the trigger, and `publish()`
    send nothing (subscribers must not see what did not happen), for flows loaded from
    now on (`from reops import on, publish` and their own modules). Returns the list of
    triggers `on` was given (empty: the flow has none to replace)."""
    import reactivex

    import reops
    from reops.core.model import Hosts
    from reops.sinks import bus as bus_module
    from reops.streams.stream import Stream
    from reops.streams.triggers import on as on_module

    def silent(topics: Any = None) -> Any:
        return lambda observable: observable  # items pass on unchanged; nothing is sent

    bus_module.publish = silent
    reops.__dict__["publish"] = silent

    real = on_module.on
    replaced: list[Any] = []

    def replayed(trigger: Any, *, hosts: Any = None) -> Stream:
        replaced.append(trigger)
        recorded = Stream(reactivex.from_iterable(events), Hosts(), replay=False)
        return real(recorded, hosts=hosts)

    on_module.on = replayed
    reops.__dict__["on"] = replayed
    return replaced


def _describe(r: Any) -> str:
    from reops.core.model import Result

    if not isinstance(r, Result):
        return f"-  {type(r).__name__}  {r}"
    chain = " -> ".join(s.op for s in r.steps[:-1]) if len(r.steps) > 1 else ""
    lines = (r.out.strip() or r.err.strip()).splitlines() or [""]
    what = lines[0] + (f" …(+{len(lines) - 1} lines)" if len(lines) > 1 else "")
    line = f"{r.host}  {r.op}  {r.status}  {what}"
    return f"{line}   (after {chain})" if chain else line


def dry_run(spec: str, args: Iterable[str]) -> int:
    """Run the flow `spec` in dry-run mode over recorded or synthetic events; print what
    would run per host; 0 when every Result would succeed, else 1."""
    from reactivex import operators as rx

    from reops.core.inventory import InventoryError
    from reops.core.model import Result
    from reops.core.selector import SelectorError
    from reops.flows import resolve
    from reops.streams.source import configure
    from reops.streams.stream import Stream

    events_path, rest = split_args(args)
    events = read_events(events_path) if events_path else _synthetic()
    configure(dry_run=True)
    replaced = _replace_triggers(events)
    flow = resolve(spec)
    made: dict[str, Any] = {}

    def keep(**options: Any) -> None:
        try:
            made["value"] = flow.call(**options)
        except (InventoryError, SelectorError) as e:
            raise UserError(str(e)) from None

    command = flow.command()
    command.callback = keep
    try:
        command.main(rest, prog_name=f"reops run {spec} --dry-run", standalone_mode=False)
    except click.ClickException as e:
        raise UserError(e.format_message()) from None
    value = made.get("value")
    if not isinstance(value, Stream):
        raise UserError(f"{spec}: the flow returned {type(value).__name__}, not a Stream of "
                        "triggered steps: nothing to dry-run")
    if not replaced:  # an endless source of its own (collect, a raw interval): never ends
        raise UserError(f"{spec}: the flow has no on(trigger) to feed events to, so a dry run "
                        "has nothing to replay (and its own sources never end); --dry-run "
                        "works on flows built as on(trigger) | then(...)")
    seen: list[Any] = value.observable.pipe(rx.to_list()).run()  # finite events: it ends
    for item in seen:
        click.echo(_describe(item))
    print(f"{len(events)} event(s) -> {len(seen)} result(s), nothing ran", file=sys.stderr)
    return 0 if all(not isinstance(r, Result) or r.ok for r in seen) else 1
