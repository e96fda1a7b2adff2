"""What the REPL says when it starts: the version, the inventory, and the hub when one runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import reops
from reops.control.client import HubError, HubNotRunning, request_sync
from reops.control.settings import load_hub_settings

#: how long the banner waits for a hub to answer (a missing socket costs nothing)
HUB_TIMEOUT_S = 1.0

BANNER = """reops {version} — live operations. The reops API is loaded{inv}.
  hosts = inv.select("group:web")               # TAB completes hosts, groups, tags
  out = await exec_(hosts, "uptime")            # or run(...); Ctrl-C stops it, not you
  sub = collect(hosts, ["cpu"], every=2).subscribe(print)   # runs on; sub.dispose()
  _r                                            # the last Outcome; _r.table(): polars
{hub}"""


def hub_line(control: Path | None = None) -> str:
    """`hub: pid 123 · 4 agents connected · 2 flows running (flows.ls())`, or how to start
    one; never waits long, never raises."""
    path = control or load_hub_settings().control_path
    if not path.exists():
        return "hub: none running (start one with `reops hub` for agents and flows)"
    try:
        ping: dict[str, Any] = request_sync(path, "ping", timeout=HUB_TIMEOUT_S)
        agents = request_sync(path, "agents", timeout=HUB_TIMEOUT_S)
        flows = request_sync(path, "flows.ls", timeout=HUB_TIMEOUT_S)
    except (HubNotRunning, HubError, OSError) as e:
        return f"hub: not answering ({e})"
    connected = sum(1 for a in agents if a.get("state") == "connected")
    running = sum(1 for f in flows if f.get("state") == "running")
    return (f"hub: pid {ping.get('pid')} · {connected} agent{'s' * (connected != 1)} "
            f"connected · {running} flow{'s' * (running != 1)} running "
            "(flows.ls(), flows.start(FILE))")


def banner(namespace: dict[str, Any], control: Path | None = None) -> str:
    """The text shown before the first prompt."""
    inv = f"; inv = {namespace['inv']!r}" if "inv" in namespace else \
        "; no inventory (reops repl -i FILE, or $REOPS_INVENTORY)"
    return BANNER.format(version=reops.__version__, inv=inv, hub=hub_line(control))
