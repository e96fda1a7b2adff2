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

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reops.core.model import Outcome, Result
from reops.core.pyfile import import_file
from reops.ops.base import Op
from reops.store.model import MachinesError, System, Type
from reops.streams.source import source
from reops.streams.stream import Stream, run
from reops.systems.handlers import ProvisionSeam
from reops.systems.machines import to_hosts


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


def _outcome(made: Any, hosts: Any) -> Outcome:
    if isinstance(made, Op):
        made = source(hosts, made)
    if isinstance(made, Stream):
        return run(made)
    if isinstance(made, Outcome):
        return made
    raise MachinesError(f"a provisioning recipe returns a Stream, an Outcome or an Op, "
                        f"not {type(made).__name__}")


def provisioner() -> ProvisionSeam:
    """The provisioning seam for Machines: recipes run over SSH/agents like any pipeline."""

    async def provision(system: System, type_: Type) -> Result:
        recipe = type_.provision
        if not recipe:
            raise MachinesError(f"type {type_.name!r} has no provisioning recipe")
        hosts = to_hosts([system])
        started = time.time()
        t0 = time.monotonic()

        def call() -> Outcome:
            return _outcome(load_recipe(recipe)(hosts, **type_.args), hosts)

        # the recipe is blocking user code that itself waits on the runtime loop
        outcome = await asyncio.to_thread(call)
        bad = outcome.failed
        return Result(
            host=system.hostname, op=f"provision:{type_.name}",
            status="ok" if outcome.ok else "failed", code=0 if outcome.ok else 1,
            out="".join(r.out for r in outcome.results)[-4000:],
            err="; ".join(f"{r.op}: {(r.err or r.out).strip()[:200]}" for r in bad),
            started_at=started, duration_s=time.monotonic() - t0,
        )

    return provision
