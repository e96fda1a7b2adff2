"""Provisioning: run a Type's recipe on a system once it is up.

A recipe is a plain function in a Python file, `FILE[:FUNC]` (FUNC defaults to
`provision`), called as `FUNC(hosts, **type.args)` with the system as a one-host Hosts; it
returns a Stream, an Outcome or an Op — operations are plain composable functions:

    # flows/redis.py
    from reops import exec_, then
    def provision(hosts, port=6379):
        return exec_(hosts, "apt-get install -y redis-server", sudo=True) | then(
            exec_, f"sed -i 's/^port .*/port {port}/' /etc/redis/redis.conf", sudo=True)
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reops.core.model import Hosts, Outcome, Result
from reops.core.pyfile import import_file
from reops.core.threads import in_own_thread
from reops.ops.base import Op
from reops.store.model import MachinesError, System, Type
from reops.streams.source import source
from reops.streams.stream import Stream
from reops.systems.handlers import ProvisionSeam
from reops.systems.machines import addressable, to_hosts


def load_recipe(spec: str) -> Callable[..., Any]:
    """The recipe function named by `FILE[:FUNC]`."""
    file, _, name = spec.partition(":")
    if not Path(file).is_file():
        raise MachinesError(f"provisioning recipe {file}: no such file")
    module = import_file(file, what="provisioning recipe")
    fn = getattr(module, name or "provision", None)
    if not callable(fn):
        raise MachinesError(f"provisioning recipe {file} has no function "
                            f"{name or 'provision'!r}; write def provision(hosts, ...)")
    return fn


async def run_recipe(recipe: str, hosts: Hosts, args: dict[str, Any]) -> Outcome:
    """Call the recipe on a thread of its own; await the Stream (or Op) it returns.

    Never `asyncio.to_thread`: the recipe (and `run()` inside it) waits on the runtime loop,
    which needs its few default-executor threads to open SSH connections; recipes parked
    there for more hosts at once than it has threads deadlocked (reops.core.threads)."""
    made = await in_own_thread(lambda: load_recipe(recipe)(hosts, **args),
                               name="reops-recipe")
    if isinstance(made, Op):
        made = source(hosts, made)
    if isinstance(made, Stream):
        return await made  # on the loop, from any loop: holds no thread
    if isinstance(made, Outcome):
        return made
    raise MachinesError(f"a provisioning recipe returns a Stream, an Outcome or an Op, "
                        f"not {type(made).__name__}")


def recipe_error(e: Exception, recipe: str) -> str:
    """One line: the error, and where in the recipe's file it was raised."""
    if isinstance(e, MachinesError):
        return str(e)
    file = str(Path(recipe.partition(":")[0]).resolve())
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if str(Path(f.filename).resolve()) == file]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else f"{recipe}: "
    return f"{where}{type(e).__name__}: {e}"


def provisioner() -> ProvisionSeam:
    """The provisioning seam for Machines: recipes run over SSH/agents like any pipeline."""

    async def provision(system: System, type_: Type) -> Result:
        recipe = type_.provision
        if not recipe:
            raise MachinesError(f"type {type_.name!r} has no provisioning recipe")
        if not addressable(system):  # never a DNS lookup of a VM's name
            raise MachinesError(f"{system.hostname}: no address yet (state {system.state}): "
                                f"start it first (reops systems start {system.short_id})")
        hosts = to_hosts([system])
        started = time.time()
        t0 = time.monotonic()
        try:
            outcome = await run_recipe(recipe, hosts, dict(type_.args))
        except Exception as e:  # the recipe's own bug: this job fails saying where
            raise MachinesError(f"{system.hostname}: provisioning with {recipe} failed: "
                                f"{recipe_error(e, recipe)}") from None
        bad = outcome.failed
        return Result(
            host=system.hostname, op=f"provision:{type_.name}",
            status="ok" if outcome.ok else "failed", code=0 if outcome.ok else 1,
            out="".join(r.out for r in outcome.results)[-4000:],
            err="; ".join(f"{r.op}: {(r.err or r.out).strip()[:200]}" for r in bad),
            started_at=started, duration_s=time.monotonic() - t0,
        )

    return provision
