"""reops: live, reactive remote operations. Everything that happens is a stream.

    from reops import inventory, run, ls, exec_, pick, successful, then, pretty
    hosts = inventory("lab/inventory.toml").select("group:web & !web3")
    out = run(ls(hosts, "/", "-la") | pick(successful) | then(exec_, "uname -r") | pretty())

Names load lazily so `import reops` (and `reops --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # values
    "Host": "reops.core.model", "Hosts": "reops.core.model", "Result": "reops.core.model",
    "Outcome": "reops.core.model", "Line": "reops.core.model", "Settings": "reops.core.settings",
    "inventory": "reops.core.inventory", "Inventory": "reops.core.inventory",
    # streams
    "Stream": "reops.streams.core", "run": "reops.streams.core",
    "step": "reops.streams.source", "source": "reops.streams.source",
    "configure": "reops.streams.source",
    "successful": "reops.streams.operators", "failed": "reops.streams.operators",
    "unreachable": "reops.streams.operators", "lost": "reops.streams.operators",
    "partition": "reops.streams.operators", "pick": "reops.streams.operators",
    "where": "reops.streams.operators", "then": "reops.streams.operators",
    "retry": "reops.streams.operators", "rolling": "reops.streams.operators",
    "timeout": "reops.streams.operators",
    # operations
    "exec_": "reops.steps", "sh": "reops.steps", "ls": "reops.steps",
    "upload": "reops.steps", "download": "reops.steps", "Op": "reops.ops.base",
    "sync": "reops.steps", "mkdir": "reops.steps", "rm": "reops.steps", "cp": "reops.steps",
    "grep": "reops.steps", "extract": "reops.steps", "line_in_file": "reops.steps",
    "template": "reops.steps", "pkg": "reops.steps", "service": "reops.steps",
    "facts": "reops.steps", "metrics": "reops.steps", "listening": "reops.steps",
    "ssh_sessions": "reops.steps", "firewall": "reops.steps",
    "security_updates": "reops.steps", "reboot": "reops.steps", "shutdown": "reops.steps",
    "boot_id": "reops.steps", "wait_back": "reops.steps", "collect": "reops.steps",
    "windows": "reops.steps", "to_metrics_table": "reops.steps",
    # agents
    "agents": "reops.sources.agents", "call": "reops.sources.agents",
    "schedule": "reops.sources.agents", "agent_events": "reops.sources.agents",
    # sinks
    "pretty": "reops.sinks.terminal", "jsonl": "reops.sinks.jsonl",
    "to_table": "reops.sinks.table", "save": "reops.sinks.table",
    # flows
    "flow": "reops.flows",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "inventory":  # the module itself: callable, the same whatever imported first
        return importlib.import_module("reops.core.inventory")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
