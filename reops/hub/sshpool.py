"""The hub's warm SSH pool: `reops exec` and the op commands run here while a hub runs.

A CLI process is short-lived, so its SSH connections die with it; the hub keeps one
`SshExecutor` for its lifetime, so a second command from a new CLI process finds every
connection open (bounded by `forks`, closed after `idle_timeout` unused, as in-process).
Each `ssh.run` request is one command on one host with the caller's settings; its Lines and
its one Result stream back as they are produced. Cancelling the request (the CLI's Ctrl-C,
SIGTERM) kills that remote command — and only that one — before the request's Done goes
back, so the CLI knows the kill was sent.

Authentication: the hub connects as itself. Keys named by the inventory or `--key` are read
by the hub (same user, same files); without one, the hub's ssh-agent (the SSH_AUTH_SOCK the
hub was started with) and default keys are used, never the CLI's — a refused login then
says so and what to do.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from reops.control.wire import ResultItem, SshRun
from reops.core.model import Result
from reops.hub.control import BadRequest, Session
from reops.ops.base import Op

if TYPE_CHECKING:
    from reops.hub.controller import Controller
    from reops.transports.ssh.executor import SshExecutor


def agent_hint(req: SshRun, result: Result) -> str:
    """Why a key-less login the hub refused may work from the CLI: its agents differ."""
    if result.status != "unreachable" or "authentication failed" not in result.err:
        return ""
    if req.host.key or req.settings.key:
        return ""
    mine = os.environ.get("SSH_AUTH_SOCK")
    if req.agent == mine:
        return ""
    return (f"; the hub logs in with its own ssh-agent (SSH_AUTH_SOCK={mine or 'unset'} when "
            f"it started), not this shell's ({req.agent or 'unset'}): pass --key, restart "
            "`reops hub` from this shell, or run with --no-hub")


class WarmPool:
    """One SshExecutor for the hub's lifetime, serving `ssh.run` requests."""

    def __init__(self) -> None:
        self._ssh: SshExecutor | None = None
        self.requests = 0  # served, for `ssh.pool`

    def executor(self) -> SshExecutor:
        """The pool, made on the first request (asyncssh is imported only then)."""
        if self._ssh is None:
            import logging

            from reops.transports.ssh.executor import SshExecutor

            # asyncssh logs every channel at INFO: the hub's log would grow by lines per
            # command, and writing them costs the pool more than the commands themselves
            logging.getLogger("asyncssh").setLevel(logging.WARNING)
            self._ssh = SshExecutor()
        return self._ssh

    async def run(self, s: Session) -> dict[str, Any]:
        """One command on one host; Lines as they come, then its ResultItem."""
        req = s.request
        if not isinstance(req, SshRun):
            raise BadRequest("ssh.run takes an SshRun request")
        if req.timeout is not None and req.timeout <= 0:
            raise BadRequest("timeout must be positive")
        self.requests += 1
        op = Op(name=req.op, command=req.command, ok_codes=tuple(req.ok_codes),
                stdin=req.stdin, timeout=req.timeout)
        on_line = None
        if req.lines:
            from reops.control.wire import LineItem
            from reops.core.model import Line

            def on_line(line: Line) -> None:
                s.send(LineItem(host=req.host.name, stream=line.stream, text=line.text))

        work = asyncio.ensure_future(self.executor().run(req.host, op, req.settings, on_line))

        def cancel() -> None:
            work.cancel()

        s.on_cancel.append(cancel)
        try:
            result = await asyncio.shield(work)  # a client's Cancel cancels `work` only
        except asyncio.CancelledError:
            if work.cancelled() and s.cancelled.is_set():
                return {"cancelled": True}  # the executor has stopped the remote command
            work.cancel()  # the hub is stopping: the executor's cleanup kills the command
            raise
        s.send(ResultItem(host=req.host.name, status=result.status, code=result.code,
                          out=result.out, err=result.err + agent_hint(req, result),
                          started_at=result.started_at, duration_s=result.duration_s,
                          data=result.data))
        return {"host": req.host.name}

    async def info(self, s: Session) -> dict[str, Any]:
        """What the pool holds: open connections, requests served, the hub's agent socket."""
        conns = 0
        if self._ssh is not None:
            conns = self._ssh.pool.open_count()
        return {"connections": conns, "requests": self.requests,
                "agent": os.environ.get("SSH_AUTH_SOCK")}

    async def lifetime(self) -> None:
        """Close the pool's connections when the hub stops."""
        try:
            await asyncio.Event().wait()
        finally:
            if self._ssh is not None:
                await self._ssh.close()


def attach(controller: Controller) -> WarmPool:
    """Serve `ssh.run` and `ssh.pool` from `controller`."""
    pool = WarmPool()
    controller.register("ssh.run", pool.run)
    controller.register("ssh.pool", pool.info)
    controller.run_task(pool.lifetime)
    return pool
