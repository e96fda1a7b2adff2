"""`reops tail [TOPIC…] [-o json]`: print what is published on the hub's bus, live.

Text: one line per message, `topic  summary`, a Result's output indented below it.
`-o json`: one JSON object per line, the topic and the body's fields as the wire has them
(docs/flows.md, "The bus"). Missed messages (a slow terminal) are said on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from reops.cli.main import UserError


def _text(msg: Any) -> str:
    from reops.control.bus import EventBody, FlowBody, LineBody, ResultBody

    body = msg.body
    match body:
        case ResultBody():
            text = (body.out if body.status == "ok" else body.err or body.out).rstrip("\n")
            head = f"{msg.topic}  code={body.code}"
            return head + "".join(f"\n    {line}" for line in text.splitlines()[-20:])
        case LineBody():
            return f"{msg.topic}  {body.text}"
        case EventBody() | FlowBody():
            return f"{msg.topic}  {json.dumps(body.data, default=str, sort_keys=True)}"
    return msg.topic


def _json(msg: Any) -> str:
    row = {"topic": msg.topic, **msgspec.to_builtins(msg.body), "missed": msg.missed}
    return json.dumps(row, default=str)


@click.command("tail")
@click.argument("topics", nargs=-1)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object per line (topic + the wire's body).")
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Subscribe with the key pair bus.key* in DIR (made on first "
              "use; accept it on the hub with reops keys accept bus-…) [default: the hub's "
              "own key, when readable here].")
@click.option("--stats", is_flag=True, help="Print the hub's bus counters and endpoints "
              "(the control method bus.stats) and exit.")
def tail_cmd(topics: tuple[str, ...], output: str, keys_dir: Path | None,
             stats: bool) -> None:
    """Print messages published on the hub's bus as they come (Ctrl-C stops).

    \b
      reops tail                                   # everything but output lines
      reops tail 'result.*.failed' 'event.hypervisor.*'
      reops tail 'flow.setup.*' -o json | jq .
      reops tail --stats                           # endpoints, counts, subscriptions
    Topics: result.<op>.<status>.<host>, line.<host>.<stream>, event.<source>.<kind>,
    flow.<name>.<what>; a pattern's words are globs, and it matches longer topics too.
    """
    from reops.control.bus import BusError, check_pattern
    from reops.streams.bus import messages

    if stats:
        _stats(output)
        return

    try:
        patterns = tuple(check_pattern(t) for t in topics) or ("result", "event", "flow")
    except ValueError as e:
        raise UserError(str(e)) from None
    keys = None
    if keys_dir is not None:
        from reops_agent.keys import load_keypair

        keys = load_keypair(keys_dir, "bus")
    show = _json if output == "json" else _text
    told: list[bool] = []

    def emit(msg: Any) -> None:
        if msg.missed:
            click.echo(f"reops: tail: missed {msg.missed} message(s) on {msg.topic} "
                       "(this subscriber was too slow)", err=True)
        sys.stdout.write(show(msg) + "\n")
        sys.stdout.flush()

    def refused() -> None:
        if not told:
            told.append(True)
            from reops.hub.bus import bus_name

            name = bus_name(keys[0].decode()) if keys else "bus-…"
            click.echo(f"reops: tail: the hub refused this key; on the hub: reops keys accept "
                       f"{name} (waiting)", err=True)

    try:
        asyncio.run(messages(patterns, emit, keys=keys, on_refused=refused))
    except BusError as e:
        raise UserError(str(e)) from None
    except BrokenPipeError:
        sys.exit(0)


def _stats(output: str) -> None:
    from reops.control.client import HubError, HubNotRunning, request_sync
    from reops.control.settings import load_hub_settings

    try:
        info = request_sync(load_hub_settings().control_path, "bus.stats")
    except (HubNotRunning, HubError) as e:
        raise UserError(str(e)) from None
    if "error" in info:
        raise UserError(str(info["error"]))
    if output == "json":
        click.echo(json.dumps(info, sort_keys=True))
        return
    click.echo(f"publishers connect to {info['in']}, subscribers to {info['out']}")
    click.echo(f"hub key {info['key']}")
    click.echo(f"{info['publishers']} publishers, {info['subscribers']} subscribers; "
               f"received {info['received']}, forwarded {info['forwarded']}, "
               f"bad {info['bad']}, refused connections {info['refused']}")
    for prefix, n in sorted(info["subscriptions"].items()):
        click.echo(f"  subscribed: {prefix or '(everything)'} x{n}")
    for src, n in sorted(info["publisher_drops"].items()):
        click.echo(f"  publisher {src} dropped {n}")
