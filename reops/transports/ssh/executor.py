"""Run ops over SSH with asyncssh: pooled connections, verified host keys, clear failures.

One connection per host, reused across the steps of a pipeline and across calls in one
process; idle connections close after `Settings.idle_timeout`, and at most `Settings.forks`
stay open (the least recently used idle one closes first). Concurrency is bounded by
`Settings.forks`. Every failure mode becomes a Result with a precise `err`.

A command runs at most once: a pooled connection found dead before the exec request was
sent is replaced once, transparently; a connection lost after that gives status "lost"
(the command may have run) and is never retried. Output is read as bytes (invalid UTF-8
becomes U+FFFD) and bounded per stream by `Settings.max_output` (see `output.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reops.core.model import UNREACHED, Host, Result, Status, failure_result
from reops.core.settings import Settings
from reops.ops.base import Op
from reops.transports.base import LineSink
from reops.transports.ssh.auth import explain_auth_failure, explain_host_key
from reops.transports.ssh.knownhosts import KnownHostsError, KnownHostsFiles, entry, hashed
from reops.transports.ssh.output import Capture, LineSplitter, StreamName, spill_path
from reops.transports.ssh.process import finish, pump, signum, stop
from reops.transports.ssh.rsync import run_sync
from reops.transports.ssh.sftp import bounded_sftp, current_umask, host_download_dir, mask_tree
from reops.transports.ssh.sshlib import asyncssh
from reops.transports.ssh.target import DEFAULT_KNOWN_HOSTS, Target, TargetError, Targets

__all__ = ["DEFAULT_KNOWN_HOSTS", "SshExecutor", "Target", "Unreached"]


#: AES-GCM first (AES-NI makes it ~35% cheaper per command in asyncssh than
#: chacha20-poly1305, its default first choice); every OpenSSH server since 6.2 has it
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
    "aes128-ctr", "aes192-ctr", "aes256-ctr",
)


class Unreached(Exception):
    """A host could not be reached; `status` and the message go into the Result."""

    def __init__(self, message: str, status: Status = "unreachable") -> None:
        super().__init__(message)
        self.status: Status = status


def _endpoint(host: Host | Target) -> str:
    return f"{host.address}:{host.port}"


@dataclass
class _Pooled:
    """A live connection and how many commands use it right now."""

    conn: asyncssh.SSHClientConnection
    users: int = 0
    idle: asyncio.TimerHandle | None = None
    #: the bastion this connection tunnels through, held (one use) while it is open
    via: tuple[Target, _Pooled, float] | None = None


#: seconds between looks at a key file's inode/mtime (a replaced key is noticed within this)
KEY_RECHECK_S = 1.0


@dataclass
class _Caches:
    """Parsed files, so 200 connects parse known_hosts and keys once, not 200 times.
    Key files are parsed again when their inode, mtime or size changes (a lab brought down
    and up again has a new key at the same path), looked at most once per KEY_RECHECK_S."""

    known: KnownHostsFiles = field(default_factory=KnownHostsFiles)
    keys: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Any]] = field(
        default_factory=dict)
    options: dict[tuple[Any, ...], asyncssh.SSHClientConnectionOptions] = field(
        default_factory=dict
    )
    #: path -> (when looked, (inode, mtime_ns, size) or None)
    stamps: dict[str, tuple[float, tuple[int, int, int] | None]] = field(default_factory=dict)
    #: (keys, certs) -> the files' stamps when `keys` was filled
    key_stamps: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[Any, ...]] = field(
        default_factory=dict)

    def stamp(self, paths: tuple[str, ...]) -> tuple[Any, ...]:
        """The files' (inode, mtime, size), each stat'ed at most once per KEY_RECHECK_S."""
        now = time.monotonic()
        out = []
        for path in paths:
            hit = self.stamps.get(path)
            if hit is None or now - hit[0] >= KEY_RECHECK_S:
                try:
                    st = os.stat(os.path.expanduser(path))
                    hit = (now, (st.st_ino, st.st_mtime_ns, st.st_size))
                except OSError:
                    hit = (now, None)
                self.stamps[path] = hit
            out.append(hit[1])
        return tuple(out)

    def keypairs(self, keys: tuple[str, ...], certs: tuple[str, ...]) -> list[Any]:
        """Private keys with their certificates (`KEY-cert.pub` beside a key, or `certs`)."""
        stamp = self.stamp(keys + certs)
        hit = self.keys.get((keys, certs))
        if hit is not None and self.key_stamps.get((keys, certs)) != stamp:
            hit = None
        if hit is None:
            hit = []
            for path in keys:
                p = os.path.expanduser(path)
                try:
                    hit += asyncssh.load_keypairs(p, certlist=[os.path.expanduser(c)
                                                               for c in certs])
                except (OSError, ValueError, asyncssh.KeyImportError) as e:
                    raise Unreached(f"cannot load SSH key {p}: "
                                    f"{getattr(e, 'strerror', None) or e}") from None
            self.keys[(keys, certs)] = hit
            self.key_stamps[(keys, certs)] = stamp
        return hit


class SshExecutor:
    """The SSH transport: implements `reops.transports.base.Executor`."""

    transport = "ssh"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._pool: dict[Target, _Pooled] = {}
        self._connecting: dict[Target, asyncio.Future[_Pooled]] = {}
        self._caches = _Caches()
        self._targets = Targets()
        self._forks: asyncio.Semaphore | None = None
        self._forks_n = 0
        self._accept_lock: asyncio.Lock | None = None

    async def available(self, host: Host) -> bool:
        return True

    def _semaphore(self, settings: Settings) -> asyncio.Semaphore:
        if self._forks is None or self._forks_n != settings.forks:
            self._forks = asyncio.Semaphore(settings.forks)
            self._forks_n = settings.forks
        return self._forks

    # -- connections -------------------------------------------------------------------

    def _target(self, host: Host, settings: Settings) -> Target:
        try:
            return self._targets.get(host, settings)
        except TargetError as e:
            raise Unreached(str(e), status="error") from None

    def _options(self, t: Target, settings: Settings) -> Any:
        """Connection options shared by every host with the same login, identities,
        timeouts and known_hosts files, so asyncssh prepares them once per fleet."""
        # asyncssh reads $SSH_AUTH_SOCK when it prepares options: a new agent, new options
        okey = (t.user, t.keys, t.certs, t.identities_only, t.agent, t.known_hosts, t.policy,
                settings.connect_timeout, settings.keepalive_interval,
                os.environ.get("SSH_AUTH_SOCK"), self._caches.stamp(t.keys + t.certs))
        opts = self._caches.options.get(okey)
        if opts is None:
            agent: Any = ()  # asyncssh's default: $SSH_AUTH_SOCK
            if t.identities_only or (t.agent or "").lower() == "none":
                agent = None
            elif t.agent and t.agent != "SSH_AUTH_SOCK":
                agent = os.path.expanduser(t.agent)
            kwargs: dict[str, Any] = {
                "username": t.user,
                "connect_timeout": settings.connect_timeout,
                "keepalive_interval": settings.keepalive_interval,
                "config": None,  # ssh_config is applied once per fleet (target.py)
                "agent_path": agent,
                "encryption_algs": PREFERRED_CIPHERS,
                # looked up as ssh does (knownhosts.py); strict with no file trusts nothing
                "known_hosts": None if t.policy == "off" else self._caches.known.matcher(
                    t.known_hosts),
            }
            if t.keys:
                kwargs["client_keys"] = self._caches.keypairs(t.keys, t.certs)
            opts = asyncssh.SSHClientConnectionOptions(**kwargs)
            self._caches.options[okey] = opts
        return opts

    def _listed(self, t: Target) -> tuple[bool, bool]:
        """Whether known_hosts has a key (or CA) for this host, and whether it lists a
        revoked key for it: says which error it is."""
        try:
            keys, cas, revoked = self._caches.known.lookup(t.known_hosts, t.address, t.port)
        except KnownHostsError as e:
            raise Unreached(str(e)) from None
        return bool(keys or cas), bool(revoked)

    async def _connect(self, t: Target, settings: Settings) -> _Pooled:
        policy = t.policy
        listed, revoked = (False, False) if policy == "off" else self._listed(t)
        options = self._options(t, settings)
        first_seen = policy == "accept-new" and not listed
        extra: dict[str, Any] = {"known_hosts": None} if first_seen else {}
        via: tuple[Target, _Pooled, float] | None = None
        if t.via is not None:
            try:
                vkey, vpooled = await self._acquire_target(t.via, settings)
            except Unreached as e:
                raise Unreached(f"bastion {t.via.label or t.via.endpoint} for "
                                f"{t.label or t.endpoint} is unreachable: {e}") from None
            via = (vkey, vpooled, settings.idle_timeout)
            extra["tunnel"] = vpooled.conn
        elif t.proxy_command:
            extra["proxy_command"] = t.proxy_command
        try:
            conn = await self._open(t, settings, options, extra, listed, revoked)
        except BaseException:
            if via is not None:
                self._release_idle(*via)
            raise
        if first_seen:
            await self._remember_host_key(t, conn)
        return _Pooled(conn, via=via)

    async def _open(self, t: Target, settings: Settings, options: Any, extra: dict[str, Any],
                    listed: bool, revoked: bool) -> asyncssh.SSHClientConnection:
        """asyncssh.connect, every failure as an Unreached with one clear line."""
        where = f"{t.endpoint}{t.chain()}"
        try:
            return await asyncssh.connect(t.address, t.port, options=options, **extra)
        except asyncssh.HostKeyNotVerifiable as e:
            raise Unreached(explain_host_key(t, str(e.reason), listed, revoked)) from None
        except asyncssh.PermissionDenied:
            raise Unreached(explain_auth_failure(t, self._caches.keys.get((t.keys, t.certs)),
                                                 where)) from None
        except ConnectionRefusedError:
            raise Unreached(f"connection refused by {where} (is sshd running there?)") from None
        except socket.gaierror as e:
            raise Unreached(f"cannot resolve {t.address!r}{t.chain()}: {e.strerror}") from None
        except TimeoutError:
            raise Unreached(
                f"no SSH answer from {where} within {settings.connect_timeout:g} s "
                "(connect timeout; raise it with --connect-timeout)",
                status="timeout",
            ) from None
        except (OSError, asyncssh.Error) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
            raise Unreached(f"cannot connect to {where}: {reason}") from None

    async def _remember_host_key(self, t: Target, conn: asyncssh.SSHClientConnection) -> None:
        """accept-new: record a first-seen key so the next connect is checked strictly."""
        key = conn.get_server_host_key()
        if key is None:
            return
        path = Path(os.path.expanduser(t.known_hosts[0]))
        name = entry(t.address, t.port)
        public = key.export_public_key("openssh").decode().strip()
        line = f"{hashed(name) if t.hash_known_hosts else name} {public}\n"
        if self._accept_lock is None:
            self._accept_lock = asyncio.Lock()
        async with self._accept_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(line)
            self._caches.known.remember(str(path), line)

    async def _acquire(self, host: Host, settings: Settings) -> tuple[Target, _Pooled]:
        return await self._acquire_target(self._target(host, settings), settings)

    async def _acquire_target(self, pkey: Target, settings: Settings
                              ) -> tuple[Target, _Pooled]:
        pooled = self._pool.pop(pkey, None)
        if pooled is not None:
            if not pooled.conn.is_closed():
                self._pool[pkey] = pooled  # most recently used last
                return pkey, self._use(pooled)
            self._unhook(pooled)
        pending = self._connecting.get(pkey)
        if pending is None:
            self._make_room(settings.forks)
            pending = asyncio.get_running_loop().create_future()
            self._connecting[pkey] = pending
            try:
                pooled = await self._connect(pkey, settings)
            except BaseException as e:
                self._connecting.pop(pkey, None)
                if not pending.done():
                    pending.set_exception(e)
                    pending.exception()  # mark retrieved: waiters may be none
                raise
            self._connecting.pop(pkey, None)
            self._pool[pkey] = pooled
            pending.set_result(pooled)
            return pkey, self._use(pooled)
        return pkey, self._use(await asyncio.shield(pending))

    def _make_room(self, bound: int) -> None:
        """Before a new connection: close least recently used idle ones so at most `bound`
        are open or opening (busy ones are never closed; they end when their users do)."""
        for pkey in list(self._pool):
            if len(self._pool) + len(self._connecting) < bound:
                return
            pooled = self._pool[pkey]
            if pooled.users == 0:
                self._drop(pkey, pooled)

    def _drop(self, pkey: Target, pooled: _Pooled) -> None:
        """Take `pooled` out of the pool and close it."""
        if self._pool.get(pkey) is pooled:
            del self._pool[pkey]
        if pooled.idle is not None:
            pooled.idle.cancel()
            pooled.idle = None
        pooled.conn.close()
        self._unhook(pooled)

    def _unhook(self, pooled: _Pooled) -> None:
        """A closed connection lets go of its bastion (which may then idle out)."""
        if pooled.via is not None:
            via, pooled.via = pooled.via, None
            self._release_idle(*via)

    def _use(self, pooled: _Pooled) -> _Pooled:
        pooled.users += 1
        if pooled.idle is not None:
            pooled.idle.cancel()
            pooled.idle = None
        return pooled

    def _release(self, pkey: Target, pooled: _Pooled, settings: Settings) -> None:
        self._release_idle(pkey, pooled, settings.idle_timeout)

    def _release_idle(self, pkey: Target, pooled: _Pooled, idle_timeout: float) -> None:
        pooled.users -= 1
        if pooled.users == 0 and self._pool.get(pkey) is pooled:
            loop = asyncio.get_running_loop()
            pooled.idle = loop.call_later(idle_timeout, self._expire, pkey, pooled)

    def _expire(self, pkey: Target, pooled: _Pooled) -> None:
        if pooled.users == 0 and self._pool.get(pkey) is pooled:
            del self._pool[pkey]
            pooled.conn.close()
            self._unhook(pooled)

    def forget(self, host: Host, settings: Settings | None = None) -> None:
        """Drop `host`'s pooled connection (e.g. it is rebooting); the next op reconnects."""
        try:
            pkey = self._target(host, settings or self.settings)
        except Unreached:
            return
        pooled = self._pool.get(pkey)
        if pooled is not None:
            self._drop(pkey, pooled)

    async def close(self) -> None:
        for p in self._pool.values():
            p.via = None  # every connection closes here, bastions included
        conns = [p.conn for p in self._pool.values()]
        self._pool.clear()
        for c in conns:
            c.close()
        for c in conns:
            with contextlib.suppress(Exception):
                await c.wait_closed()

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
            pkey, pooled = await self._acquire(host, settings)
            try:
                return await self._dispatch(host, op, settings, pooled.conn, on_line, started, t0)
            except asyncssh.ChannelOpenError as e:
                if e.code == asyncssh.OPEN_REQUEST_SESSION_FAILED:
                    # the exec/subsystem request was sent: it may have run
                    if not pooled.conn.is_closed():
                        raise Unreached(f"{_endpoint(pkey)} refused to start the session: "
                                        f"{e.reason}") from None
                    self._drop(pkey, pooled)
                    return _lost(host, op, started, t0)
                if not pooled.conn.is_closed():  # e.g. MaxSessions: the server said no
                    raise Unreached(f"{_endpoint(pkey)} refused a new session: {e.reason} "
                                    "(too many at once? lower --forks)") from None
                # a pooled connection that died while idle: reconnect once, transparently
                self._drop(pkey, pooled)
                if attempt == 2 or time.monotonic() - t0 > settings.connect_timeout:
                    raise Unreached(
                        f"connection to {_endpoint(pkey)} lost before the command started: "
                        f"{e.reason}") from None
            except (asyncssh.Error, ConnectionError) as e:
                # lost after the command was sent (SFTP, sync): never run it again
                if not pooled.conn.is_closed():
                    raise
                self._drop(pkey, pooled)
                return _lost(host, op, started, t0, reason=getattr(e, "reason", None) or str(e))
            finally:
                self._release(pkey, pooled, settings)
        raise AssertionError("unreachable")

    async def _dispatch(
        self, host: Host, op: Op, settings: Settings, conn: asyncssh.SSHClientConnection,
        on_line: LineSink | None, started: float, t0: float,
    ) -> Result:
        if op.kind == "sync":  # rsync when both ends have it, else SFTP
            return await run_sync(host, op, settings, conn, self._target(host, settings))
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
        err=err + f"connection to {host.name} ({_endpoint(host)}) lost mid-command{why}; "
        "the command may have run, so it was not retried: check the host before running "
        "it again",
        started_at=started, duration_s=time.monotonic() - t0, transport="ssh",
    )


def _local_user() -> str:
    import getpass

    return getpass.getuser()
