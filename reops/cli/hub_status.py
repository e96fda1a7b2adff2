"""`reops hub status`: what this machine's hub is doing, on one screen or as one JSON object.

One place to look before digging into `reops agents`, `reops flows ls` and
`reops tail --stats`: the hub's pid and start, its endpoints, agents connected and keys
pending, flows running, the bus's traffic and drops, and the warm SSH pool.

Exit codes: 0 ok, 2 usage, 3 no hub runs (said in one line).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click

NO_HUB = 3


def gather(path: Path) -> dict[str, Any]:
    """The hub's status from its control methods; raises when no hub answers on `path`."""
    from reops.control.client import HubError, request_sync

    def ask(method: str) -> Any:
        try:
            return request_sync(path, method)
        except HubError as e:  # a method this hub lacks must not hide the rest
            return {"error": str(e)}

    ping = request_sync(path, "ping")  # no hub: raises here, before anything else
    agents, keys, flows = ask("agents"), ask("keys"), ask("flows.ls")
    bus, pool = ask("bus.stats"), ask("ssh.pool")
    cluster = ask("cluster.status")
    agent_states = [a.get("state") for a in agents] if isinstance(agents, list) else []
    flow_states = [f.get("state") for f in flows] if isinstance(flows, list) else []
    if "error" not in bus:
        drops = sum(bus.get("publisher_drops", {}).values())
        bus = {k: bus[k] for k in ("in", "out", "publishers", "subscribers", "received",
                                   "forwarded", "bad", "refused", "hwm") if k in bus}
        bus["publisher_drops"] = drops
    return {
        "pid": ping["pid"], "version": ping["hub"], "since": ping.get("since"),
        "endpoints": {"agents": ping["bind"], "control": ping.get("control", str(path)),
                      "bus_in": bus.get("in"), "bus_out": bus.get("out")},
        "key": ping["key"],
        "agents": {"connected": agent_states.count("connected"),
                   "lost": len(agent_states) - agent_states.count("connected"),
                   "pending": sum(1 for k in keys if k.get("state") == "pending")
                   if isinstance(keys, list) else None},
        "calls": ping.get("calls", 0),
        "refused": {k: ping.get(k, 0) for k in ("bad_frames", "impostors", "role_refused")},
        "flows": {"running": flow_states.count("running"), "known": len(flow_states)},
        "bus": bus,
        "ssh_pool": pool if "error" in pool else {"connections": pool.get("connections", 0),
                                                   "requests": pool.get("requests", 0)},
        "cluster": cluster,
    }


def _ago(age: float) -> str:
    return f"{age:.0f}s ago" if age < 120 else f"{age / 60:.0f}m ago"


def cluster_lines(c: dict[str, Any]) -> list[str]:
    """Several controllers: this one, its peers (alive by the store's clock), their flows."""
    if "error" in c:
        return [f"controllers: {c['error']}"]
    if c.get("engine") != "postgresql":
        return ["controllers: this one only (SQLite store)"]
    members = c.get("controllers", [])
    alive = sum(1 for m in members if m["alive"])
    lines = [f"controller {c['name']} on {c['store']}: {alive} alive of {len(members)} "
             f"(lease {c['lease_s']:g}s)"]
    for m in members:
        since = (datetime.datetime.fromtimestamp(m["since"]).isoformat(" ", "seconds")
                 if m.get("since") else "?")
        state = "alive" if m["alive"] else f"dead (last seen {_ago(m['age_s'])})"
        load = ", ".join(f"{k} {v:g}" for k, v in sorted(m.get("load", {}).items())) or "-"
        flows = ", ".join(m.get("flows", [])) or "-"
        me = " (this one)" if m.get("me") else ""
        lines.append(f"  {m['name']}{me}: {state}, since {since}, pid {m['pid']} on "
                     f"{m['host']}; load {load}; runs {flows}")
    if c.get("orphans"):
        lines.append("  waiting for a controller: " + ", ".join(c["orphans"]))
    ev = c.get("events", {})
    lines.append(f"  events: {ev.get('sent', 0)} shared, {ev.get('relayed', 0)} relayed from "
                 f"peers; listener re-made {ev.get('listen_reconnects', 0)}x")
    return lines


def render(st: dict[str, Any]) -> list[str]:
    """The pretty form: one line per part."""
    since = st["since"]
    when = (datetime.datetime.fromtimestamp(since).isoformat(" ", "seconds")
            if since else "?")
    ag, fl, bus, pool, ep = st["agents"], st["flows"], st["bus"], st["ssh_pool"], st["endpoints"]
    lines = [f"hub {st['version']} pid {st['pid']}, running since {when}",
             f"agents connect to {ep['agents']}; control socket {ep['control']}",
             f"agents: {ag['connected']} connected, {ag['lost']} lost, "
             f"{ag['pending']} pending keys; {st['calls']} calls in flight",
             f"flows: {fl['running']} running of {fl['known']}"]
    if "error" in bus:
        lines.append(f"bus: {bus['error']}")
    else:
        lines += [f"bus: publishers connect to {bus['in']}, subscribers to {bus['out']}",
                  f"bus: {bus['publishers']} publishers, {bus['subscribers']} subscribers; "
                  f"received {bus['received']}, forwarded {bus['forwarded']}; dropped: "
                  f"{bus['publisher_drops']} by publishers, {bus['bad']} bad; "
                  f"{bus['refused']} connections refused"]
    lines.append(f"ssh pool: {pool['error']}" if "error" in pool else
                 f"ssh pool: {pool['connections']} warm connections, "
                 f"{pool['requests']} requests served")
    if "cluster" in st:
        lines += cluster_lines(st["cluster"])
    refused = {k: n for k, n in st["refused"].items() if n}
    if refused:
        lines.append("refused: " + ", ".join(f"{k} {n}" for k, n in refused.items()))
    return lines


@click.command("status")
@click.option("--control", type=click.Path(path_type=Path), default=None,
              help="Control socket path [default: ~/.reops/run/hub.sock].")
@click.option("-o", "--output", type=click.Choice(["pretty", "json"]), default="pretty",
              show_default=True)
def status(control: Path | None, output: str) -> None:
    """This machine's hub: pid, since, endpoints, agents, flows, bus (with drops), SSH pool;
    on a shared PostgreSQL store, its peers (alive, since, load) and the flows each runs.

    \b
      reops hub status
      reops hub status -o json | jq .bus.publisher_drops
    Exit 3 when no hub runs.
    """
    from reops.control.settings import load_hub_settings

    try:
        path = control or load_hub_settings().control_path
        st = gather(path)
    except ValueError as e:
        click.echo(f"reops hub status: {e}", err=True)
        sys.exit(2)
    except (ConnectionError, TimeoutError, OSError) as e:  # HubNotRunning, HubGone …
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        click.echo(f"reops hub status: {why}", err=True)
        sys.exit(NO_HUB)
    if output == "json":
        click.echo(json.dumps(st, sort_keys=True))
    else:
        click.echo("\n".join(render(st)))
