"""`provision(hosts)`: run each host's Type recipe, as a step a flow can chain.

The host is looked up by name among the systems reops manages (the running hub's, else
this machine's store); its Type's recipe (reops.systems.provisioning) runs on THAT host
value, so an inventory entry standing in for a VM (its user, key, jump hosts) is used.
A host that is no system, or whose Type has no recipe, is a failed Result saying so.

The recipe is user code that may block, so it is called on a thread of its own
(reops.core.threads); the Stream it returns runs on the loop, awaited, holding no thread.
Never `asyncio.to_thread`: a recipe parked there waits on the loop while the loop needs
those few threads to open SSH connections (six hosts at once deadlocked).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reops.control.client import HubClient
from reops.core.model import Host, Hosts, Line, Outcome, Result
from reops.store.model import MachinesError, System, Type
from reops.streams.source import as_hosts, resolve
from reops.streams.stream import Stream, fanout
from reops.systems.api import HubMachines, MachinesAPI, connect
from reops.systems.provisioning import recipe_error, run_recipe


async def _lookup(host: Host, hub: Path | None) -> tuple[System, Type]:
    api: MachinesAPI
    if hub is not None:
        client = HubClient(hub)
        await client.connect()
        api = HubMachines(client)
    else:
        api = await connect(queue=False)
    try:
        systems = [s for s in await api.systems("all") if s.hostname == host.name]
        types = {t.name: t for t in await api.types()}
    finally:
        await api.aclose()
    if not systems:
        raise MachinesError(f"{host.name} is no system reops manages (reops systems ls): "
                            "nothing says how to provision it")
    system = systems[0]
    type_ = types.get(system.type)
    if type_ is None or not type_.provision:
        raise MachinesError(f"{host.name}: its type {system.type!r} has no provisioning "
                            "recipe (reops types add … --provision FILE[:FUNC])")
    return system, type_


async def _run_recipe(recipe: str, one: Hosts, args: dict[str, Any]) -> Outcome:
    """Call the recipe on its own thread; await the Stream (or Op) it returns on the loop
    (reops.systems.provisioning.run_recipe, which the hub's provision jobs use too)."""
    return await run_recipe(recipe, one, args)


def _said(e: Exception, recipe: str) -> str:
    """One line: the error, and where in the recipe's file it was raised."""
    return recipe_error(e, recipe)


def provision(hosts: Hosts | Host | Iterable[Host], *, hub: Path | None = None,
              dry_run: bool | None = None) -> Stream:
    """Run each host's Type recipe on it; ok when every step of the recipe succeeded."""
    hs = as_hosts(hosts)
    r = resolve(dry_run=dry_run)

    async def run_one(host: Host, on_line: Callable[[Line], None] | None) -> Result:
        started, t0 = time.time(), time.monotonic()
        try:
            _, type_ = await _lookup(host, hub)
        except (MachinesError, OSError) as e:
            return Result(host=host.name, op="provision", status="failed", code=1,
                          err=str(e), started_at=started,
                          duration_s=round(time.monotonic() - t0, 3))
        recipe = str(type_.provision)
        if r.dry_run:
            what = f"provision {host.name} as {type_.name}: {recipe}"
            return Result(host=host.name, op=f"provision:{type_.name}", status="ok", code=0,
                          out=what, started_at=started, transport="local",
                          data={"dry_run": what})
        try:
            outcome = await _run_recipe(recipe, Hosts([host]), dict(type_.args))
        except Exception as e:  # the recipe's own bug fails this host, never the flow
            return Result(host=host.name, op=f"provision:{type_.name}", status="failed",
                          code=1, err=_said(e, recipe), started_at=started,
                          duration_s=round(time.monotonic() - t0, 3))
        bad = outcome.failed
        return Result(host=host.name, op=f"provision:{type_.name}",
                      status="ok" if outcome.ok else "failed", code=0 if outcome.ok else 1,
                      out="".join(x.out for x in outcome.results)[-4000:],
                      err="; ".join(f"{x.op}: {(x.err or x.out).strip()[:200]}" for x in bad),
                      started_at=started, duration_s=round(time.monotonic() - t0, 3),
                      changed=True)

    def rebuild(subset: Hosts) -> Stream:
        return provision(subset, hub=hub, dry_run=r.dry_run)

    return Stream(fanout(hs, run_one), hs, rebuild)
