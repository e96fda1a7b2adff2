"""The contract every transport implements: run one Op on one Host, return one Result.

An executor never raises for a host's failure: a host that is down, a hung command, a
refused key, a lost agent — each comes back as a failure Result with a clear `err`.
The stream layer adds bounded concurrency and turns executors into Observables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import msgspec

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


class Checking:
    """`--check`: ask each host whether `op` WOULD change it, running only the op's
    read-only probe (`Op.check`) over `inner`, never the op itself.

    Every Result carries `data={"check": {"changes": bool, "diff": str}}` and `changed`
    = would change. An op without a Check (`exec`) is not run: it "would run (cannot be
    checked)", counted as a change. A host that cannot be reached or whose probe fails is
    a failure Result, as in a real run. `diff=False` fetches no file content (sha256 only).
    """

    def __init__(self, inner: Executor, *, diff: bool = True) -> None:
        self.inner = inner
        self.diff = diff
        self.transport = inner.transport

    async def available(self, host: Host) -> bool:
        return await self.inner.available(host)

    async def run(self, host: Host, op: Op, settings: Settings,
                  on_line: LineSink | None = None) -> Result:
        spec = op.check
        if spec is None:
            what = f"{op.name}: would run (cannot be checked)"
            return Result(host=host.name, op=op.name, status="ok", code=0, out=what,
                          started_at=time.time(), transport="local", changed=True,
                          data={"check": {"changes": True, "diff": what}})
        probe = op if spec.probe is None else spec.probe(self.diff).with_(
            name=op.name, sudo=op.sudo, become_user=op.become_user, timeout=op.timeout,
            check=None).with_become_pass(op.become_pass)  # reads as the op would
        r = await self.inner.run(host, probe, settings, None)
        if not r.ok:
            return msgspec.structs.replace(r, op=op.name)
        try:
            report = spec.answer(host, r.out, self.diff)
        except Exception as e:  # e.g. a template that does not render for this host
            return msgspec.structs.replace(
                r, op=op.name, status="error", code=-1, data=None,
                err=f"{op.name}: cannot check: {e}")
        # `out` is the answer (the probe's raw output is plumbing, and may hold a file's
        # content): every sink that prints `out` shows the diff
        return msgspec.structs.replace(
            r, op=op.name, changed=report.changes,
            out=(report.diff or "would change") if report.changes else "no change",
            data={"check": {"changes": report.changes, "diff": report.diff}})

    async def close(self) -> None:
        return None
