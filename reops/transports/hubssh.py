"""SSH through the running hub: a new CLI process uses the hub's warm connections.

`reops exec` and the op commands pick this executor when a `reops hub` answers on the
control socket (see `hub_socket`); each host's command goes to the hub as one `ssh.run`
request (host, final command, the CLI's settings) and its Lines and Result stream back.
The Op stays here: the hub judges only the exit code, the Op parses and judges again.
Transfers and syncs (local files) run over direct SSH in this process.

What can go wrong, and what the host's Result says then:

- the hub went away (killed, crashed) after the request was sent: `lost` — the command may
  have run; it is never re-sent, over the hub or direct SSH;
- the hub is gone before a request is sent: `unreachable` (nothing ran; --retry asks the
  hub again, never direct SSH);
- Ctrl-C / SIGTERM: the request is cancelled, the hub kills that command and says so;
  we wait for that (bounded) so the remote command is stopped when the CLI exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from reops.control.replies import fail_waiters_when_gone, route_replies
from reops.control.settings import load_hub_settings
from reops.control.wire import (
    AnyReply,
    Cancel,
    Done,
    Error,
    Invoke,
    LineItem,
    ResultItem,
    SshRun,
    Update,
    encoder,
)
from reops.core.model import UNREACHED, Host, Line, Result, failure_result
from reops.core.settings import Settings, load_table
from reops.ops.base import Op
from reops.transports.base import Executor, LineSink

if TYPE_CHECKING:
    import zmq.asyncio

# pyzmq is imported when a hub is used (function-level, on purpose): deciding that no hub
# runs (one connect) must not cost the direct path its ~15 ms import.

#: how long the first command waits for the hub's answer to a ping (a wedged hub)
HANDSHAKE_S = 5.0
#: how long a cancelled request waits for the hub to confirm the remote kill (under the
#: runtime's shutdown grace, so the CLI still exits in time if the hub never answers)
CANCEL_WAIT_S = 4.5


class HubUse(msgspec.Struct, kw_only=True):
    """`use_hub = false` in the config's [ssh] table (or REOPS_USE_HUB=false) opts out."""

    use_hub: bool = True


def hub_wanted(no_hub: bool = False) -> bool:
    """Whether this call may use a running hub: not with --no-hub, REOPS_NO_HUB=1 or
    `use_hub = false`."""
    if no_hub or os.environ.get("REOPS_NO_HUB", "").lower() not in ("", "0", "false", "no"):
        return False
    return load_table(HubUse, "ssh", "REOPS_").use_hub


def answers(path: Path) -> bool:
    """Whether something listens on the control socket: one connect, no wait (a stale
    socket file of a dead hub refuses at once)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def hub_socket(no_hub: bool = False) -> Path | None:
    """The running hub's control socket for `reops exec`, or None: direct SSH."""
    if not hub_wanted(no_hub):
        return None
    path = load_hub_settings().control_path
    return path if answers(path) else None


class HubLost(ConnectionError):
    """The hub's connection went away while requests were in flight."""


class _Link:
    """One DEALER connection to the hub, bound to the runtime's loop; many requests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[AnyReply | BaseException]] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[None] | None = None
        self.gone = False

    def _open(self) -> zmq.asyncio.Socket:
        if self._sock is not None and not self.gone:
            return self._sock
        import zmq
        import zmq.asyncio

        if self.gone:
            self._close()
            if not answers(self.path):
                raise HubLost(f"the reops hub on {self.path} is gone")
            self.gone = False
        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        # a refused reconnect counts too: the hub died between our probe and this connect
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED)
        sock.connect(f"ipc://{self.path}")
        self._sock = sock
        self._tasks = [asyncio.ensure_future(route_replies(sock, self._queues)),
                       asyncio.ensure_future(fail_waiters_when_gone(monitor, self._queues,
                                                                    self._lost))]
        self._ready = asyncio.ensure_future(self._handshake())
        return sock

    async def _handshake(self) -> None:
        """One ping before the first command: a hub that accepts connections but does not
        answer (stopped, wedged) fails every host at once instead of hanging them."""
        rid = next(self._ids)
        queue: asyncio.Queue[AnyReply | BaseException] = asyncio.Queue()
        self._queues[rid] = queue
        try:
            self._send(Invoke(id=rid, method="ping"))
            async with asyncio.timeout(HANDSHAKE_S):
                reply = await queue.get()
        except TimeoutError:
            raise HubLost(f"the reops hub on {self.path} does not answer (within "
                          f"{HANDSHAKE_S:g} s)") from None
        finally:
            self._queues.pop(rid, None)
        if isinstance(reply, BaseException):
            raise HubLost(f"the reops hub on {self.path} went away") from None
        if not isinstance(reply, Done):
            raise HubLost(f"the reops hub on {self.path} did not answer its ping: {reply}")

    def _lost(self) -> HubLost:
        self.gone = True
        return HubLost("the reops hub went away mid-command")

    def _send(self, payload: Any) -> None:
        import zmq

        sock = self._sock
        if sock is None or sock.closed:
            raise HubLost("the connection to the hub is closed")
        try:
            sock.send(encoder.encode(payload), flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            raise HubLost(f"cannot reach the hub: {e}") from None

    async def run(self, req: SshRun, on_line: LineSink | None) -> ResultItem | None:
        """Send `req`; its Lines to `on_line`; its ResultItem (None if it sent none).

        HubLost: the request never left (nothing ran); _Sent: the hub went away after it
        left (it may have run); _Refused: the hub answered with an error (nothing ran)."""
        self._open()
        assert self._ready is not None
        await asyncio.shield(self._ready)
        rid = next(self._ids)
        req = msgspec.structs.replace(req, id=rid)
        queue: asyncio.Queue[AnyReply | BaseException] = asyncio.Queue()
        self._queues[rid] = queue
        result: ResultItem | None = None
        try:
            self._send(req)
        except HubLost:
            self._queues.pop(rid, None)
            raise
        try:
            while True:
                reply = await queue.get()
                if isinstance(reply, BaseException):
                    raise _Sent(str(reply))
                if isinstance(reply, Update):
                    item = reply.item
                    if isinstance(item, LineItem):
                        if on_line is not None:
                            on_line(Line(item.host, item.stream, item.text))
                    elif isinstance(item, ResultItem):
                        result = item
                elif isinstance(reply, Error):
                    raise _Refused(reply.message)
                elif isinstance(reply, Done):
                    return result
        except asyncio.CancelledError:
            await self._cancel(rid, queue)
            raise
        finally:
            self._queues.pop(rid, None)

    async def _cancel(self, rid: int, queue: asyncio.Queue[AnyReply | BaseException]) -> None:
        """Ask the hub to kill request `rid`'s command and wait (bounded) until it has."""
        with contextlib.suppress(HubLost):
            self._send(Cancel(id=0, target=rid))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_WAIT_S):
                    while not isinstance(await queue.get(), (Done, Error, BaseException)):
                        pass

    def _close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # retrieved: a failed handshake was reported per host
        elif self._ready is not None:
            self._ready.cancel()
        self._ready = None
        self._sock = None
        if self._ctx is not None:  # closes the DEALER and its monitor, never waits
            self._ctx.destroy(linger=0)
            self._ctx = None

    async def close(self) -> None:
        tasks = self._tasks
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close()


class _Sent(ConnectionError):
    """The hub went away after the request was sent: the command may have run."""


class _Refused(RuntimeError):
    """The hub answered the request with an error: nothing ran."""


class HubSshExecutor:
    """The SSH transport through the hub's warm pool: implements `Executor`."""

    transport = "ssh"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._link = _Link(path)
        self._direct: Executor | None = None

    async def available(self, host: Host) -> bool:
        return True

    def direct(self) -> Executor:
        """In-process SSH for what the hub does not run (transfers: they read local files)."""
        if self._direct is None:
            from reops.transports.ssh.executor import SshExecutor

            self._direct = SshExecutor()
        return self._direct

    async def run(self, host: Host, op: Op, settings: Settings,
                  on_line: LineSink | None = None) -> Result:
        """Run a shell op on `host` through the hub; always one Result."""
        if op.kind != "shell":
            return await self.direct().run(host, op, settings, on_line)
        started, t0 = time.time(), time.monotonic()
        req = SshRun(id=0, host=host, op=op.name, command=op.command_for(host),
                     settings=settings, ok_codes=list(op.ok_codes), stdin=op.stdin,
                     timeout=op.timeout, lines=on_line is not None,
                     agent=os.environ.get("SSH_AUTH_SOCK"))
        try:
            item = await self._link.run(req, on_line)
        except _Sent:
            return Result(
                host=host.name, op=op.name, status="lost", code=UNREACHED,
                err=f"the reops hub ({self.path}) went away while {host.name} ran the "
                "command; it may have run, so it was not retried: check the host before "
                "running it again", started_at=started, duration_s=time.monotonic() - t0)
        except HubLost as e:
            return failure_result(
                host.name, op.name, f"{e}; the command was not sent (start `reops hub` "
                "again, or run with --no-hub)", status="unreachable", started_at=started,
                duration_s=time.monotonic() - t0)
        except _Refused as e:
            return failure_result(
                host.name, op.name, f"the reops hub refused the command: {e}; nothing was "
                "sent to the host (a hub older than this reops? restart it: reops hub --stop; "
                "reops hub --background — or run with --no-hub)", status="unreachable",
                started_at=started, duration_s=time.monotonic() - t0)
        if item is None:
            return failure_result(host.name, op.name, "the hub sent no result", status="error",
                                  started_at=started, duration_s=time.monotonic() - t0)
        status, data, changed, err = item.status, item.data, None, item.err
        if status in ("ok", "failed"):  # the command ran to its end: the Op judges it
            status, data, changed, err = op.judge(item.code, item.out, item.err)
        return Result(host=host.name, op=op.name, status=status,  # type: ignore[arg-type]
                      code=item.code, out=item.out, err=err, started_at=item.started_at,
                      duration_s=item.duration_s, transport="ssh", data=data, changed=changed)

    async def close(self) -> None:
        await self._link.close()
        if self._direct is not None:
            await self._direct.close()
