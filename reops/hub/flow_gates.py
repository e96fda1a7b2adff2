"""A flow's action slots: at most `concurrency` executor runs of one flow at once.

Why apart: the gate is the one place a flow's steps are bounded and drained (SIGTERM closes
it, a reload waits for it to settle). It reaches the steps through a context variable the
flow's subscription carries, so the executors (wrapped by `install_gates`) need not know
which flow runs them (reops.hub.flows builds each flow under its gate).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from reops.core.model import Host, Result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.ops.base import Op


class Gate:
    """A flow's action slots, on the runtime loop: at most `limit` at once; closed = none
    new (they wait until the flow is disposed, which cancels them)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.in_flight = 0
        self.entered = 0  # actions waiting for a slot or running (what a reload waits for)
        self.closed = False
        self._sem: asyncio.Semaphore | None = None
        self._idle: asyncio.Event | None = None
        self._settled: asyncio.Event | None = None

    def _ready(self) -> tuple[asyncio.Semaphore, asyncio.Event]:
        if self._sem is None or self._idle is None:
            self._sem, self._idle = asyncio.Semaphore(self.limit), asyncio.Event()
            self._idle.set()
        return self._sem, self._idle

    async def run(self, action: Callable[[], Awaitable[Result]]) -> Result:
        sem, idle = self._ready()
        if self._settled is None:
            self._settled = asyncio.Event()
        self.entered += 1
        self._settled.clear()
        try:
            async with sem:
                if self.closed:  # draining: start nothing; disposal cancels this wait
                    await asyncio.get_running_loop().create_future()
                self.in_flight += 1
                idle.clear()
                try:
                    return await action()
                finally:
                    self.in_flight -= 1
                    if not self.in_flight:
                        idle.set()
        finally:
            self.entered -= 1
            if not self.entered:
                self._settled.set()

    async def settle(self) -> None:
        """Return once no action waits or runs (a replaced version finishing its steps)."""
        for _ in range(3):  # steps its last events scheduled get to ask for a slot
            await asyncio.sleep(0)
        if self.entered and self._settled is not None:
            await self._settled.wait()

    async def drain(self) -> None:
        """Close, then return once no action is in flight."""
        self.closed = True
        await self._ready()[1].wait()


_gate: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("reops_flow_gate",
                                                                   default=None)


class GatedExecutor:
    """An executor whose runs take a slot of the calling flow's gate (none outside flows)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.transport = inner.transport

    async def run(self, host: Host, op: Op, settings: Settings, on_line: Any = None
                  ) -> Result:
        gate = _gate.get()
        if gate is None:
            result: Result = await self.inner.run(host, op, settings, on_line)
            return result
        return await gate.run(lambda: self.inner.run(host, op, settings, on_line))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install_gates() -> None:
    """Make this process's SSH and agent executors gated (before any flow runs a step)."""
    rt = get_runtime()

    def ssh() -> GatedExecutor:
        from reops.transports.ssh.executor import SshExecutor

        return GatedExecutor(SshExecutor())

    def agent() -> GatedExecutor:
        from reops.transports.agent import AgentExecutor

        return GatedExecutor(AgentExecutor())

    rt.resource("ssh", ssh)
    rt.resource("agent", agent)

