"""SSH connections, one per host, pooled: opened once, shared, closed when idle.

What `SshExecutor` runs ops over. A connection is opened with options prepared once per
fleet (same login, keys, known_hosts: asyncssh parses them once), verified against
known_hosts as OpenSSH would (accept-new records a first-seen key), through a bastion or
ProxyCommand when the host has one. Idle connections close after `Settings.idle_timeout`,
at most `Settings.forks` stay open (the least recently used idle one closes first), and
concurrent first uses of a host share one handshake. Every failure is an `Unreached` with
one clear line.
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

from reops.core.model import Host, Status
from reops.core.settings import Settings
from reops.transports.ssh.auth import explain_auth_failure, explain_host_key
from reops.transports.ssh.knownhosts import KnownHostsError, KnownHostsFiles, entry, hashed
from reops.transports.ssh.sshlib import asyncssh
from reops.transports.ssh.target import Target, TargetError, Targets


class Unreached(Exception):
    """A host could not be reached; `status` and the message go into the Result."""

    def __init__(self, message: str, status: Status = "unreachable") -> None:
        super().__init__(message)
        self.status: Status = status


def endpoint(host: Host | Target) -> str:
    return f"{host.address}:{host.port}"


#: AES-GCM first (AES-NI makes it ~35% cheaper per command in asyncssh than
#: chacha20-poly1305, its default first choice); every OpenSSH server since 6.2 has it
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
    "aes128-ctr", "aes192-ctr", "aes256-ctr",
)


@dataclass
class Pooled:
    """A live connection and how many commands use it right now."""

    conn: asyncssh.SSHClientConnection
    users: int = 0
    idle: asyncio.TimerHandle | None = None
    #: the bastion this connection tunnels through, held (one use) while it is open
    via: tuple[Target, Pooled, float] | None = None


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



class Connections:
    """The pool: a connection per Target, shared by every op on that host."""

    def __init__(self) -> None:
        self._pool: dict[Target, Pooled] = {}
        self._connecting: dict[Target, asyncio.Future[Pooled]] = {}
        self._caches = _Caches()
        self._targets = Targets()
        self._accept_lock: asyncio.Lock | None = None


    def target(self, host: Host, settings: Settings) -> Target:
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

    async def _connect(self, t: Target, settings: Settings) -> Pooled:
        policy = t.policy
        listed, revoked = (False, False) if policy == "off" else self._listed(t)
        options = self._options(t, settings)
        first_seen = policy == "accept-new" and not listed
        extra: dict[str, Any] = {"known_hosts": None} if first_seen else {}
        via: tuple[Target, Pooled, float] | None = None
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
        return Pooled(conn, via=via)

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

    async def acquire(self, host: Host, settings: Settings) -> tuple[Target, Pooled]:
        return await self._acquire_target(self.target(host, settings), settings)

    async def _acquire_target(self, pkey: Target, settings: Settings
                              ) -> tuple[Target, Pooled]:
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
                self.drop(pkey, pooled)

    def drop(self, pkey: Target, pooled: Pooled) -> None:
        """Take `pooled` out of the pool and close it."""
        if self._pool.get(pkey) is pooled:
            del self._pool[pkey]
        if pooled.idle is not None:
            pooled.idle.cancel()
            pooled.idle = None
        pooled.conn.close()
        self._unhook(pooled)

    def _unhook(self, pooled: Pooled) -> None:
        """A closed connection lets go of its bastion (which may then idle out)."""
        if pooled.via is not None:
            via, pooled.via = pooled.via, None
            self._release_idle(*via)

    def _use(self, pooled: Pooled) -> Pooled:
        pooled.users += 1
        if pooled.idle is not None:
            pooled.idle.cancel()
            pooled.idle = None
        return pooled

    def release(self, pkey: Target, pooled: Pooled, settings: Settings) -> None:
        self._release_idle(pkey, pooled, settings.idle_timeout)

    def _release_idle(self, pkey: Target, pooled: Pooled, idle_timeout: float) -> None:
        pooled.users -= 1
        if pooled.users == 0 and self._pool.get(pkey) is pooled:
            loop = asyncio.get_running_loop()
            pooled.idle = loop.call_later(idle_timeout, self._expire, pkey, pooled)

    def _expire(self, pkey: Target, pooled: Pooled) -> None:
        if pooled.users == 0 and self._pool.get(pkey) is pooled:
            del self._pool[pkey]
            pooled.conn.close()
            self._unhook(pooled)

    def open_count(self) -> int:
        """Connections open now (`reops hub status`, the warm pool's `ssh.pool`)."""
        return sum(1 for p in self._pool.values() if not p.conn.is_closed())

    def forget(self, host: Host, settings: Settings) -> None:
        """Drop `host`'s pooled connection (e.g. it is rebooting); the next op reconnects."""
        try:
            pkey = self.target(host, settings)
        except Unreached:
            return
        pooled = self._pool.get(pkey)
        if pooled is not None:
            self.drop(pkey, pooled)

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
