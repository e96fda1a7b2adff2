"""Run ops over SSH with asyncssh: commands, transfers and syncs, clear failures.

Over the pooled connections of `pool.py` (one per host, reused across the steps of a
pipeline and across calls in one process). Concurrency is bounded by `Settings.forks`.
Every failure mode becomes a Result with a precise `err`.

A command runs at most once: a pooled connection found dead before the exec request was
sent is replaced once, transparently; a connection lost after that gives status "lost"
(the command may have run) and is never retried. Output is read as bytes (invalid UTF-8
becomes U+FFFD) and bounded per stream by `Settings.max_output` (see `output.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from reops.core.model import UNREACHED, Host, Result, Status, failure_result
from reops.core.settings import Settings
from reops.ops.base import Op
from reops.transports.base import LineSink
from reops.transports.ssh.output import Capture, LineSplitter, StreamName, spill_path
from reops.transports.ssh.pool import Connections, Unreached, endpoint
from reops.transports.ssh.process import finish, pump, signum, stop
from reops.transports.ssh.rsync import run_sync
from reops.transports.ssh.sftp import bounded_sftp, current_umask, host_download_dir, mask_tree
from reops.transports.ssh.sshlib import asyncssh
from reops.transports.ssh.target import DEFAULT_KNOWN_HOSTS, Target

__all__ = ["DEFAULT_KNOWN_HOSTS", "SshExecutor", "Target", "Unreached"]


class SshExecutor:
    """The SSH transport: implements `reops.transports.base.Executor`."""

    transport = "ssh"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.pool = Connections()
        self._forks: asyncio.Semaphore | None = None
        self._forks_n = 0

    async def available(self, host: Host) -> bool:
        return True

    def _semaphore(self, settings: Settings) -> asyncio.Semaphore:
        if self._forks is None or self._forks_n != settings.forks:
            self._forks = asyncio.Semaphore(settings.forks)
            self._forks_n = settings.forks
        return self._forks

    def forget(self, host: Host, settings: Settings | None = None) -> None:
        """Drop `host`'s pooled connection (e.g. it is rebooting); the next op reconnects."""
        self.pool.forget(host, settings or self.settings)

    async def close(self) -> None:
        await self.pool.close()

    # -- running ops -------------------------------------------------------------------

    async def run(
        self, host: Host, op: Op, settings: Settings | None = None, on_line: LineSink | None = None
    ) -> Result:
        """Run `op` on `host`; always returns exactly one Result."""
        settings = settings or self.settings
        started = time.time()
        t0 = time.monotonic()
        async with self._semaphore(settings):
            try:
                return await self._run(host, op, settings, on_line, started, t0)
            except Unreached as e:
                return failure_result(
                    host.name, op.name, str(e), status=e.status, started_at=started,
                    duration_s=time.monotonic() - t0,
                )

    async def _run(
        self, host: Host, op: Op, settings: Settings, on_line: LineSink | None,
        started: float, t0: float,
    ) -> Result:
        for attempt in (1, 2):
            pkey, pooled = await self.pool.acquire(host, settings)
            try:
                return await self._dispatch(host, op, settings, pooled.conn, on_line, started, t0)
            except asyncssh.ChannelOpenError as e:
                if e.code == asyncssh.OPEN_REQUEST_SESSION_FAILED:
                    # the exec/subsystem request was sent: it may have run
                    if not pooled.conn.is_closed():
                        raise Unreached(f"{endpoint(pkey)} refused to start the session: "
                                        f"{e.reason}") from None
                    self.pool.drop(pkey, pooled)
                    return _lost(host, op, started, t0)
                if not pooled.conn.is_closed():  # e.g. MaxSessions: the server said no
                    raise Unreached(f"{endpoint(pkey)} refused a new session: {e.reason} "
                                    "(too many at once? lower --forks)") from None
                # a pooled connection that died while idle: reconnect once, transparently
                self.pool.drop(pkey, pooled)
                if attempt == 2 or time.monotonic() - t0 > settings.connect_timeout:
                    raise Unreached(
                        f"connection to {endpoint(pkey)} lost before the command started: "
                        f"{e.reason}") from None
            except (asyncssh.Error, ConnectionError) as e:
                # lost after the command was sent (SFTP, sync): never run it again
                if not pooled.conn.is_closed():
                    raise
                self.pool.drop(pkey, pooled)
                return _lost(host, op, started, t0, reason=getattr(e, "reason", None) or str(e))
            finally:
                self.pool.release(pkey, pooled, settings)
        raise AssertionError("unreachable")

    async def _dispatch(
        self, host: Host, op: Op, settings: Settings, conn: asyncssh.SSHClientConnection,
        on_line: LineSink | None, started: float, t0: float,
    ) -> Result:
        if op.kind == "sync":  # rsync when both ends have it, else SFTP
            return await run_sync(host, op, settings, conn, self.pool.target(host, settings))
        if op.kind == "shell":
            return await self._shell(host, op, settings, conn, on_line, started, t0)
        if op.kind in ("upload", "download"):
            return await self._transfer(host, op, settings, conn, started, t0)
        return failure_result(
            host.name, op.name, f"op kind {op.kind!r} cannot run over SSH (needs an agent)",
            status="error", started_at=started, duration_s=time.monotonic() - t0,
        )

    async def _shell(
        self, host: Host, op: Op, settings: Settings, conn: asyncssh.SSHClientConnection,
        on_line: LineSink | None, started: float, t0: float,
    ) -> Result:
        command = op.command_for(host)
        timeout = op.timeout if op.timeout is not None else settings.command_timeout
        starting = asyncio.ensure_future(conn.create_process(
            command, stdin=asyncssh.DEVNULL if op.stdin is None else asyncssh.PIPE,
            encoding=None))  # bytes: a non-UTF-8 byte must not break the connection
        try:
            process = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # the exec request may already be on its way: let it open, then kill it
            with contextlib.suppress(Exception):
                await stop(await asyncio.wait_for(starting, settings.connect_timeout))
            raise
        except (asyncssh.Error, ConnectionError):
            if conn.is_closed() and not isinstance(starting.exception(),
                                                   asyncssh.ChannelOpenError):
                return _lost(host, op, started, t0)  # lost with the exec request in flight
            raise  # _run tells "not started" (retry) from "refused"
        if op.stdin is not None:
            process.stdin.write(op.stdin.encode())
            process.stdin.write_eof()

        def capture(stream: StreamName) -> Capture:
            spill = settings.output_spill
            return Capture(settings.max_output, stream, None if spill is None else
                           lambda: spill_path(spill, host.name, op.name, stream))

        out, err = capture("stdout"), capture("stderr")
        readers = [
            asyncio.ensure_future(pump(process.stdout, out, None if on_line is None else
                                        LineSplitter(host.name, "out", on_line,
                                                     settings.max_line))),
            asyncio.ensure_future(pump(process.stderr, err, None if on_line is None else
                                        LineSplitter(host.name, "err", on_line,
                                                     settings.max_line))),
        ]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*readers)
                await process.wait_closed()
        except TimeoutError:
            await stop(process, readers)
            return Result(
                host=host.name, op=op.name, status="timeout", code=UNREACHED,
                out=out.text(), err=(
                    err.text() + f"command timed out after {timeout:g} s "
                    "(killed; raise it with --timeout)"
                ), started_at=started, duration_s=time.monotonic() - t0,
            )
        except asyncio.CancelledError:
            await stop(process, readers)
            raise
        except Exception:
            await stop(process, readers)  # every failure path stops the remote command
            if conn.is_closed():
                return _lost(host, op, started, t0, out=out.text(), err=err.text())
            raise
        finally:
            out.close()
            err.close()
        out_text, err_text = out.text(), err.text()
        code = process.exit_status
        if code is None or code < 0:
            sig = process.exit_signal
            if not sig and conn.is_closed():
                return _lost(host, op, started, t0, out=out_text, err=err_text)
            code = 128 + signum(sig[0]) if sig else UNREACHED
            err_text += (f"killed by signal {sig[0]}" if sig
                         else "command ended without an exit status")
        return finish(host, op, code, out_text, err_text, started, t0)

    async def _transfer(
        self, host: Host, op: Op, settings: Settings, conn: asyncssh.SSHClientConnection,
        started: float, t0: float,
    ) -> Result:
        timeout = op.timeout if op.timeout is not None else settings.command_timeout
        src, dst = (op.local, f"{host.name}:{op.remote}") if op.kind == "upload" else (
            f"{host.name}:{op.remote}", op.local)

        async def upload(sftp: asyncssh.SFTPClient) -> str:
            await sftp.put(op.local, op.remote, recurse=True, preserve=op.mode is None)
            if op.mode is not None:
                await sftp.chmod(op.remote, op.mode)
            return op.remote

        async def download(sftp: asyncssh.SFTPClient) -> str:
            target = host_download_dir(op.local, host.name)
            dest = target / Path(op.remote).name
            try:
                # symlinks are followed, as scp and Ansible's fetch do: /etc/os-release
                # arrives as the file, not as a link to ../usr/lib/os-release
                await sftp.get(op.remote, str(target), recurse=True, preserve=True,
                               follow_symlinks=True)
            finally:  # never leave a setuid file behind, even half-copied
                mask_tree(dest, current_umask())
            return str(dest)

        def failed(status: Status, what: str) -> Result:
            return Result(
                host=host.name, op=op.name, status=status,
                code=1 if status == "failed" else UNREACHED, err=f"{op.kind} {src} -> {dst}: "
                f"{what}", started_at=started, duration_s=time.monotonic() - t0)

        try:
            dest = await bounded_sftp(conn, upload if op.kind == "upload" else download,
                                      timeout, settings.connect_timeout)
        except TimeoutError:
            return failed("timeout", f"timed out after {timeout:g} s (stopped; raise it "
                          "with --timeout)")
        except (OSError, asyncssh.SFTPError) as e:
            reason = getattr(e, "reason", None) or str(e)
            if conn.is_closed():  # a partial copy may be there: not retried
                return _lost(host, op, started, t0, reason=f"{op.kind} {src} -> {dst}: {reason}")
            return failed("failed", reason)
        return Result(
            host=host.name, op=op.name, status="ok", code=0, out=dest, data=dest,
            started_at=started, duration_s=time.monotonic() - t0,
        )


def _lost(host: Host, op: Op, started: float, t0: float, out: str = "", err: str = "",
          reason: str | None = None) -> Result:
    """The connection went away after the command was sent: it may have run."""
    why = f" ({reason})" if reason else ""
    return Result(
        host=host.name, op=op.name, status="lost", code=UNREACHED, out=out,
        err=err + f"connection to {host.name} ({endpoint(host)}) lost mid-command{why}; "
        "the command may have run, so it was not retried: check the host before running "
        "it again",
        started_at=started, duration_s=time.monotonic() - t0, transport="ssh",
    )


def _local_user() -> str:
    import getpass

    return getpass.getuser()
