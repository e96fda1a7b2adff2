"""The contract every transport implements: run one Op on one Host, return one Result.

An executor never raises for a host's failure: a host that is down, a hung command, a
refused key, a lost agent — each comes back as a failure Result with a clear `err`.
The stream layer adds bounded concurrency and turns executors into Observables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from reops.core.model import Host, Line, Result
from reops.core.settings import Settings
from reops.ops.base import Op

LineSink = Callable[[Line], None]


class Executor(Protocol):
    """Runs ops on hosts over one transport (ssh, agent, libvirt, local)."""

    transport: str

    async def run(
        self, host: Host, op: Op, settings: Settings, on_line: LineSink | None = None
    ) -> Result:
        """Run `op` on `host`; stream output lines to `on_line` when given."""
        ...

    async def available(self, host: Host) -> bool:
        """Whether this transport can reach `host` now (agents: connected + accepted);
        async so that asking a hub never blocks the event loop."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...


class DryRun:
    """An executor that runs nothing and reports the command each host would run."""

    transport = "local"

    async def available(self, host: Host) -> bool:
        return True

    async def run(self, host: Host, op: Op, settings: Settings,
                  on_line: LineSink | None = None) -> Result:
        if op.kind == "shell":
            what = op.command_for(host)
        elif op.kind in ("upload", "sync"):
            what = f"{op.kind} {op.local} -> {host.name}:{op.remote}"
        elif op.kind == "download":
            what = f"download {host.name}:{op.remote} -> {op.local}/{host.name}/"
        else:  # call, code
            what = f"{op.kind} {op.function}{op.args!r}"
        return Result(host=host.name, op=op.name, status="ok", code=0, out=what,
                      started_at=time.time(), transport="local", data={"dry_run": what})

    async def close(self) -> None:
        return None
