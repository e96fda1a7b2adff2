"""`deploy_agent(hosts)`: `reops agents deploy` as a step, so a flow can chain it.

    on(vm_started("typed:redis")) | then(wait_ssh) | then(deploy_agent) | then(provision)

Each host is deployed on its own (reops.hub.deploy, on a thread of its own: it waits on
the runtime loop itself, so never on the loop's few default-executor threads, which the
loop needs to open SSH connections: reops.core.threads), so one host's Result comes as
soon as ITS agent has registered with the running hub, never after the slowest host's.
The agents connect to the hub's own bind address unless `endpoint=` says otherwise (a hub
bound to 0.0.0.0 needs one).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from reops.control.client import HubNotRunning, ping_sync
from reops.control.settings import load_hub_settings
from reops.core.model import Host, Hosts, Line, Result
from reops.core.settings import Settings
from reops.core.threads import in_own_thread
from reops.hub.deploy import deploy
from reops.streams.source import as_hosts, resolve
from reops.streams.stream import Stream, fanout


def hub_endpoint(control: Path | None = None) -> str:
    """Where agents should connect: the running hub's bind, or a clear error."""
    settings = load_hub_settings()
    try:
        bind = str(ping_sync(control or settings.control_path)["bind"])
    except HubNotRunning as e:
        raise ValueError(f"deploy_agent: {e}") from None
    if "0.0.0.0" in bind or "*" in bind:
        raise ValueError(f"deploy_agent: the hub listens on {bind}: pass endpoint= with the "
                         "address agents should use, e.g. tcp://10.0.0.1:7720")
    return bind


def _failed(host: Host, err: str, started: float, t0: float) -> Result:
    return Result(host=host.name, op="deploy", status="failed", code=1, err=err,
                  started_at=started, duration_s=round(time.monotonic() - t0, 3))


def _why(e: Exception) -> str:
    """One line: what failed (a failed build says the last line pip printed)."""
    if isinstance(e, subprocess.CalledProcessError):
        text = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        return (f"building the reops-agent wheel failed: {text[-1] if text else e}; "
                "pass wheels= (--wheels) with a reops_agent wheel")
    return str(e)


def deploy_agent(hosts: Hosts | Host | Iterable[Host], *, endpoint: str | None = None,
                 wheels: Path | None = None, sudo: bool = False,
                 register_timeout: float = 60.0, timeout: float = 600.0,
                 hub: Path | None = None, settings: Settings | None = None,
                 dry_run: bool | None = None, build_timeout: float | None = None) -> Stream:
    """Install and start reops-agent on each host, pointed at the running hub; a host's
    Result is ok once its agent registered (failed, saying why, otherwise). Without a
    reops_agent wheel in `wheels`, every host shares one cached build of the agent's
    source (reops.hub.deploy.agent_wheel), `build_timeout` s at most."""
    hs = as_hosts(hosts)
    r = resolve(via="ssh", settings=settings, dry_run=dry_run)

    async def run_one(host: Host, on_line: Callable[[Line], None] | None) -> Result:
        started, t0 = time.time(), time.monotonic()
        if r.dry_run:
            what = f"deploy reops-agent to {host.name} ({endpoint or 'the running hub'})"
            return Result(host=host.name, op="deploy", status="ok", code=0, out=what,
                          started_at=started, transport="local", data={"dry_run": what})
        hub_settings = load_hub_settings()
        if hub is not None:
            hub_settings = hub_settings.with_(control=str(hub))
        try:
            to = endpoint if endpoint else await in_own_thread(
                lambda: hub_endpoint(hub), name="reops-ping")
        except ValueError as e:
            return _failed(host, str(e), started, t0)
        settings_ = hub_settings
        try:
            outcome = await in_own_thread(lambda: deploy(
                Hosts([host]), endpoint=to, settings=settings_, wheels=wheels, sudo=sudo,
                timeout=timeout, ssh_settings=r.settings, register_timeout=register_timeout,
                build_timeout=build_timeout), name="reops-deploy")
        except (OSError, ValueError, subprocess.SubprocessError) as e:  # this host fails,
            return _failed(host, f"deploy_agent: {_why(e)}", started, t0)  # not the flow
        (result,) = outcome.results
        return result

    def rebuild(subset: Hosts) -> Stream:
        return deploy_agent(subset, endpoint=endpoint, wheels=wheels, sudo=sudo,
                            register_timeout=register_timeout, timeout=timeout, hub=hub,
                            settings=r.settings, dry_run=False, build_timeout=build_timeout)

    return Stream(fanout(hs, run_one), hs, rebuild)
