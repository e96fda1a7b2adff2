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

def _from(module: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), module)


_EXPORTS: dict[str, str] = {
    # values
    **_from("reops.core.model", "Host Hosts Result Outcome Line"),
    **_from("reops.core.settings", "Settings"),
    **_from("reops.core.inventory", "inventory Inventory"),
    # streams
    **_from("reops.streams.stream", "Stream run"),
    **_from("reops.streams.source", "step source configure"),
    **_from("reops.streams.operators", "successful failed unreachable lost partition pick "
                                       "where then retry rolling timeout"),
    # operations
    **_from("reops.ops.base", "Op"),
    **_from("reops.streams.steps", "exec_ sh ls upload download sync mkdir rm cp grep extract "
                                   "line_in_file template pkg service facts metrics listening "
                                   "ssh_sessions firewall security_updates reboot shutdown "
                                   "boot_id wait_back collect windows to_metrics_table"),
    # agents
    **_from("reops.streams.agents", "agents call schedule agent_events"),
    # sinks
    **_from("reops.sinks.terminal", "pretty"),
    **_from("reops.sinks.jsonl", "jsonl"),
    **_from("reops.sinks.table", "to_table save"),
    # flows
    **_from("reops.flows", "flow"),
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
