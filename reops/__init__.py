"""reops: live, reactive remote operations. Everything that happens is a stream.

    from reops import inventory, run, ls, exec_, pick, successful, then, pretty
    hosts = inventory("lab/inventory.toml").select("group:web & !web3")
    out = run(ls(hosts, "/", "-la") | pick(successful) | then(exec_, "uname -r") | pretty())

Names load lazily so `import reops` (and `reops --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    **_from("reops.streams.operators", "once_within debounce accumulate Accumulated all_of "
                                       "any_of not_all Correlated limit ignoring squelch "
                                       "Squelched Resumed"),
    # operations
    **_from("reops.ops.base", "Op"),
    **_from("reops.streams.steps", "exec_ sh ls upload download sync mkdir rm cp grep extract "
                                   "line_in_file template pkg service facts metrics listening "
                                   "ssh_sessions firewall security_updates reboot shutdown "
                                   "boot_id wait_back collect windows to_metrics_table"),
    # agents
    **_from("reops.streams.agents", "agents call schedule agent_events"),
    # triggers
    **_from("reops.streams.triggers.on", "on"),
    **_from("reops.streams.triggers.clock", "every cron"),
    **_from("reops.streams.triggers.files", "file_changed"),
    **_from("reops.streams.triggers.hypervisor", "vm_events vm_started vm_stopped vm_defined "
                                                 "vm_undefined vm_crashed vm_suspended vm_resumed"),
    **_from("reops.streams.triggers.agents", "agent_changes agent_registered "
                                             "agent_lost agent_back"),
    **_from("reops.streams.triggers.jobs", "job_events job_failed job_succeeded"),
    **_from("reops.streams.triggers.metrics", "threshold"),
    **_from("reops.streams.triggers.event", "TriggerEvent"),
    # sinks
    **_from("reops.sinks.terminal", "pretty"),
    **_from("reops.sinks.jsonl", "jsonl"),
    **_from("reops.sinks.table", "to_table save"),
    **_from("reops.sinks.notebook", "display_live"),
    **_from("reops.sinks.bus", "publish"),
    **_from("reops.sinks.report", "report"),
    **_from("reops.sinks.history", "history"),
    **_from("reops.streams.bus", "bus"),
    # flows
    **_from("reops.flows", "flow"),
    **_from("reops.streams.ssh_wait", "wait_ssh"),
    **_from("reops.hub.deploy_step", "deploy_agent"),
    **_from("reops.systems.provision_step", "provision"),
}

if TYPE_CHECKING:  # the same names, typed, for mypy and IDEs; costs nothing at run time
    # (`X as X`: an explicit re-export; tests/test_typed_seams.py keeps it equal to _EXPORTS)
    from reops.core.inventory import Inventory as Inventory
    from reops.core.inventory import inventory as inventory
    from reops.core.model import Host as Host
    from reops.core.model import Hosts as Hosts
    from reops.core.model import Line as Line
    from reops.core.model import Outcome as Outcome
    from reops.core.model import Result as Result
    from reops.core.settings import Settings as Settings
    from reops.flows import flow as flow
    from reops.hub.deploy_step import deploy_agent as deploy_agent
    from reops.ops.base import Op as Op
    from reops.sinks.bus import publish as publish
    from reops.sinks.history import history as history
    from reops.sinks.jsonl import jsonl as jsonl
    from reops.sinks.notebook import display_live as display_live
    from reops.sinks.report import report as report
    from reops.sinks.table import save as save
    from reops.sinks.table import to_table as to_table
    from reops.sinks.terminal import pretty as pretty
    from reops.streams.agents import agent_events as agent_events
    from reops.streams.agents import agents as agents
    from reops.streams.agents import call as call
    from reops.streams.agents import schedule as schedule
    from reops.streams.bus import bus as bus
    from reops.streams.operators import Accumulated as Accumulated
    from reops.streams.operators import Correlated as Correlated
    from reops.streams.operators import Resumed as Resumed
    from reops.streams.operators import Squelched as Squelched
    from reops.streams.operators import accumulate as accumulate
    from reops.streams.operators import all_of as all_of
    from reops.streams.operators import any_of as any_of
    from reops.streams.operators import debounce as debounce
    from reops.streams.operators import failed as failed
    from reops.streams.operators import ignoring as ignoring
    from reops.streams.operators import limit as limit
    from reops.streams.operators import lost as lost
    from reops.streams.operators import not_all as not_all
    from reops.streams.operators import once_within as once_within
    from reops.streams.operators import partition as partition
    from reops.streams.operators import pick as pick
    from reops.streams.operators import retry as retry
    from reops.streams.operators import rolling as rolling
    from reops.streams.operators import squelch as squelch
    from reops.streams.operators import successful as successful
    from reops.streams.operators import then as then
    from reops.streams.operators import timeout as timeout
    from reops.streams.operators import unreachable as unreachable
    from reops.streams.operators import where as where
    from reops.streams.source import configure as configure
    from reops.streams.source import source as source
    from reops.streams.source import step as step
    from reops.streams.ssh_wait import wait_ssh as wait_ssh
    from reops.streams.steps import boot_id as boot_id
    from reops.streams.steps import collect as collect
    from reops.streams.steps import cp as cp
    from reops.streams.steps import download as download
    from reops.streams.steps import exec_ as exec_
    from reops.streams.steps import extract as extract
    from reops.streams.steps import facts as facts
    from reops.streams.steps import firewall as firewall
    from reops.streams.steps import grep as grep
    from reops.streams.steps import line_in_file as line_in_file
    from reops.streams.steps import listening as listening
    from reops.streams.steps import ls as ls
    from reops.streams.steps import metrics as metrics
    from reops.streams.steps import mkdir as mkdir
    from reops.streams.steps import pkg as pkg
    from reops.streams.steps import reboot as reboot
    from reops.streams.steps import rm as rm
    from reops.streams.steps import security_updates as security_updates
    from reops.streams.steps import service as service
    from reops.streams.steps import sh as sh
    from reops.streams.steps import shutdown as shutdown
    from reops.streams.steps import ssh_sessions as ssh_sessions
    from reops.streams.steps import sync as sync
    from reops.streams.steps import template as template
    from reops.streams.steps import to_metrics_table as to_metrics_table
    from reops.streams.steps import upload as upload
    from reops.streams.steps import wait_back as wait_back
    from reops.streams.steps import windows as windows
    from reops.streams.stream import Stream as Stream
    from reops.streams.stream import run as run
    from reops.streams.triggers.agents import agent_back as agent_back
    from reops.streams.triggers.agents import agent_changes as agent_changes
    from reops.streams.triggers.agents import agent_lost as agent_lost
    from reops.streams.triggers.agents import agent_registered as agent_registered
    from reops.streams.triggers.clock import cron as cron
    from reops.streams.triggers.clock import every as every
    from reops.streams.triggers.event import TriggerEvent as TriggerEvent
    from reops.streams.triggers.files import file_changed as file_changed
    from reops.streams.triggers.hypervisor import vm_crashed as vm_crashed
    from reops.streams.triggers.hypervisor import vm_defined as vm_defined
    from reops.streams.triggers.hypervisor import vm_events as vm_events
    from reops.streams.triggers.hypervisor import vm_resumed as vm_resumed
    from reops.streams.triggers.hypervisor import vm_started as vm_started
    from reops.streams.triggers.hypervisor import vm_stopped as vm_stopped
    from reops.streams.triggers.hypervisor import vm_suspended as vm_suspended
    from reops.streams.triggers.hypervisor import vm_undefined as vm_undefined
    from reops.streams.triggers.jobs import job_events as job_events
    from reops.streams.triggers.jobs import job_failed as job_failed
    from reops.streams.triggers.jobs import job_succeeded as job_succeeded
    from reops.streams.triggers.metrics import threshold as threshold
    from reops.streams.triggers.on import on as on
    from reops.systems.provision_step import provision as provision

__all__ = sorted(_EXPORTS)

# every run's Results go to the run history (docs/live.md); the module (and polars) loads
# only when the first run finishes, so `import reops` stays fast
importlib.import_module("reops.core.hooks").lazy("reops.sinks.history")


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
