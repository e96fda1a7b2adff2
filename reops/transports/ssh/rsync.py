"""`files.sync` over SSH: rsync when both ends have it, else an SFTP copy that acts alike.

The SSH source calls `run_sync` for sync ops. It runs the op's pre-check over the pooled
connection; when the host and this machine both have rsync, it runs rsync locally; otherwise
it walks the local tree and uploads over SFTP only what differs by size or mtime (rsync's
quick check), so both paths mean "remote becomes a copy of local" and report changes in
rsync's `--itemize-changes` form (`op.parse` reads both).

rsync's ssh reaches exactly the `Target` the executor resolved (inventory > flags >
ssh_config > defaults): `target_config` writes it as a private ssh_config (mode 0600, in
$TMPDIR, removed when rsync ends) with one `Host reops-N` alias per hop: HostName, Port,
User, IdentityFile/CertificateFile/IdentitiesOnly/IdentityAgent, UserKnownHostsFile (and
GlobalKnownHostsFile /dev/null: reops reads only the Target's files), StrictHostKeyChecking
from the policy, HashKnownHosts, and `ProxyJump reops-(N-1)` to the previous hop (each hop
with its own resolved settings) or the Target's ProxyCommand. ssh gets only that file
(`-F`, so neither ~/.ssh/config nor /etc/ssh/ssh_config adds anything; ssh passes `-F` on to
the ProxyJump hops). A value ssh_config cannot carry (a `"` or a line break in a path or
name: the format has no escape for them) falls back to SFTP over the pooled connection,
which already goes the resolved way; `sync_via` says which path was taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import math
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence

import msgspec

from reops.core.model import UNREACHED, Host, Result, Status
from reops.core.settings import Settings
from reops.ops.base import Op
from reops.ops.files import rsync_argv
from reops.ops.text import MARK, sections
from reops.transports.ssh.sftp import bounded_sftp
from reops.transports.ssh.sshlib import asyncssh
from reops.transports.ssh.target import Target

#: the section of `Result.out` naming the path taken (rsync | sftp)
VIA_SECTION = "sync-via"


def sync_via(out: str) -> str:
    """Which path a sync Result took: `rsync`, `sftp` or "" (not a sync Result)."""
    return sections(out).get(VIA_SECTION, "").strip()


def ssh_options(host: Host, settings: Settings) -> list[str]:
    """ssh(1) options for `host` from `settings` alone (no ssh_config, no bastion):
    host-key checking, known_hosts, key, user and connect timeout. `run_sync` uses
    `target_config` instead, which carries the whole resolved Target."""
    policy = settings.host_key_checking or "strict"
    opts = ["-F", "/dev/null",  # like the SSH source: no ~/.ssh/config surprises
            "-o", f"ConnectTimeout={max(1, math.ceil(settings.connect_timeout))}"]
    if policy == "off":
        opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR"]
    else:
        opts += ["-o", "StrictHostKeyChecking=" + ("yes" if policy == "strict" else "accept-new")]
        if not host.known_hosts and settings.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={os.path.expanduser(settings.known_hosts)}"]
    if not host.key and settings.key:  # rsync_argv passes the host's own key
        opts += ["-i", os.path.expanduser(settings.key)]
    if host.key or settings.key:
        opts += ["-o", "IdentitiesOnly=yes"]
    if not host.user and settings.user:
        opts += ["-o", f"User={settings.user}"]
    return opts


class Inexpressible(ValueError):
    """A Target value an ssh_config file cannot carry (`"` or a line break)."""


def _value(text: str, tokens: bool = True) -> str:
    """One ssh_config argument: `%` escaped where ssh expands tokens, quoted if spaced."""
    if any(c in text for c in '"\r\n'):
        raise Inexpressible(text)
    if tokens:
        text = text.replace("%", "%%")
    return f'"{text}"' if any(c.isspace() or c == "#" for c in text) or not text else text


#: ssh's StrictHostKeyChecking for reops' policies
STRICT_SSH = {"strict": "yes", "accept-new": "accept-new", "off": "no"}


def target_config(t: Target, settings: Settings) -> tuple[str, str]:
    """(ssh_config text, alias of `t`) that make `ssh -F FILE ALIAS` connect as reops does:
    the same address, port, user, identities, known_hosts, policy and jump chain."""
    blocks: list[str] = []

    def block(hop: Target) -> str:
        via = block(hop.via) if hop.via is not None else None
        alias = f"reops-{len(blocks)}"
        lines = [f"Host {alias}", f"  HostName {_value(hop.address)}", f"  Port {hop.port}",
                 f"  User {_value(hop.user)}", "  BatchMode yes", "  CheckHostIP no",
                 "  ConnectTimeout " + str(max(1, math.ceil(settings.connect_timeout))),
                 f"  StrictHostKeyChecking {STRICT_SSH[hop.policy]}",
                 "  GlobalKnownHostsFile /dev/null",
                 f"  HashKnownHosts {'yes' if hop.hash_known_hosts else 'no'}"]
        if hop.policy == "off":  # off reads and writes no known_hosts file
            lines += ["  UserKnownHostsFile /dev/null", "  LogLevel ERROR"]
        else:
            files = " ".join(_value(os.path.expanduser(p)) for p in hop.known_hosts)
            lines.append(f"  UserKnownHostsFile {files}")
        lines += [f"  IdentityFile {_value(os.path.expanduser(k))}" for k in hop.keys]
        lines += [f"  CertificateFile {_value(os.path.expanduser(c))}" for c in hop.certs]
        if hop.identities_only:
            lines.append("  IdentitiesOnly yes")
        if hop.identities_only or (hop.agent or "").lower() == "none":
            lines.append("  IdentityAgent none")
        elif hop.agent:
            lines.append(f"  IdentityAgent {_value(hop.agent)}")
        if via is not None:
            lines.append(f"  ProxyJump {via}")
        elif hop.proxy_command:
            if any(c in hop.proxy_command for c in "\r\n"):
                raise Inexpressible(hop.proxy_command)
            lines.append(f"  ProxyCommand {hop.proxy_command}")
        blocks.append("\n".join(lines) + "\n")
        return alias

    alias = block(t)
    return "\n".join(blocks), alias


def target_rsync_argv(t: Target, host: Host, op: Op, config: str, alias: str) -> list[str]:
    """The rsync command line for `op` to `t` through the ssh_config file `config`."""
    via_alias = Host(name=host.name, address=alias, port=t.port)
    return rsync_argv(op, via_alias, ssh_options=["-F", config])


def local_rsync_argv(host: Host, op: Op, settings: Settings) -> list[str]:
    """The rsync command line this machine runs for `op` on `host`."""
    target = host if settings.host_key_checking != "off" else msgspec.structs.replace(
        host, known_hosts=None)  # "off" must not read or write any known_hosts file
    return rsync_argv(op, target, ssh_options=ssh_options(host, settings))


async def run_sync(host: Host, op: Op, settings: Settings,
                   conn: asyncssh.SSHClientConnection, target: Target) -> Result:
    """Carry out a `files.sync` op on `host` (resolved as `target`) over `conn`;
    always one Result."""
    started = time.time()
    t0 = time.monotonic()

    def result(status: Status, code: int, out: str = "", err: str = "") -> Result:
        data = op.parse(out) if status == "ok" and op.parse else None
        changed = op.changed(code, out) if status == "ok" and op.changed else None
        return Result(host=host.name, op=op.name, status=status, code=code, out=out, err=err,
                      started_at=started, duration_s=time.monotonic() - t0, transport="ssh",
                      data=data, changed=changed)

    if not os.path.exists(op.local):
        return result("failed", 1, err=f"sync: no such local file or directory: {op.local}")
    precheck = op.with_(sudo=False, become_user=None).command_for(host)
    try:
        async with asyncio.timeout(settings.connect_timeout):
            pre = await conn.run(precheck, check=False, errors="replace")
    except TimeoutError:
        return result("timeout", UNREACHED, err=f"sync pre-check got no answer within "
                      f"{settings.connect_timeout:g} s")
    remote_rsync = str(pre.stdout or "").strip() == "rsync"
    if remote_rsync and shutil.which("rsync") and shutil.which("ssh"):
        try:
            text, alias = target_config(target, settings)
        except Inexpressible:
            pass  # SFTP over the pooled connection goes the resolved way (see the docstring)
        else:
            return await _rsync(host, op, settings, result, target, text, alias)
    if op.sudo or op.become_user:
        where = "this machine" if remote_rsync else host.name
        return result("failed", 69, err=f"sync with sudo needs rsync on both ends ({where} "
                      "has none) and SFTP cannot sudo")
    timeout = op.timeout if op.timeout is not None else settings.command_timeout
    try:
        changes = await bounded_sftp(conn, lambda sftp: _sftp_copy(sftp, op), timeout,
                                     settings.connect_timeout)
    except TimeoutError:
        return result("timeout", UNREACHED, err=f"sync {op.local} -> {host.name}:{op.remote} "
                      f"(sftp) timed out after {timeout:g} s (stopped; raise it with --timeout)")
    except (OSError, asyncssh.SFTPError) as e:
        reason = getattr(e, "reason", None) or str(e)
        if conn.is_closed():  # a partial copy may be there: never re-run blindly
            return result("lost", UNREACHED, err=f"sync {op.local} -> {host.name}:{op.remote} "
                          f"(sftp): connection lost mid-copy ({reason}); check the host "
                          "before running it again")
        return result("failed", 1, err=f"sync {op.local} -> {host.name}:{op.remote} "
                      f"(sftp): {reason}")
    return result("ok", 0, out="".join(f"{c}\n" for c in changes) + _via("sftp"))


def _via(name: str) -> str:
    return f"{MARK} {VIA_SECTION}\n{name}\n"


async def _rsync(host: Host, op: Op, settings: Settings, result: Callable[..., Result],
                 target: Target, config: str, alias: str) -> Result:
    fd, path = tempfile.mkstemp(prefix="reops-ssh-", suffix=".conf")  # 0600, ours only
    try:
        with os.fdopen(fd, "w") as f:
            f.write(config)
        return await _rsync_with(op, settings, result,
                                 target_rsync_argv(target, host, op, path, alias))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _rsync_with(op: Op, settings: Settings, result: Callable[..., Result],
                      argv: list[str]) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    timeout = op.timeout if op.timeout is not None else settings.command_timeout
    try:
        async with asyncio.timeout(timeout):
            out_b, err_b = await proc.communicate()
    except TimeoutError:
        await _kill(proc)
        return result("timeout", UNREACHED, err=f"rsync timed out after {timeout:g} s "
                      "(killed; raise it with --timeout)")
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
    code = proc.returncode if proc.returncode is not None else UNREACHED
    if code != 0:
        return result("failed", code, out=out, err=err or f"rsync exited with {code}")
    return result("ok", 0, out=out + _via("rsync"), err=err)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


def _excluded(patterns: Sequence[str], name: str, rel: str) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p.strip("/"))
               for p in patterns)


async def _sftp_copy(sftp: asyncssh.SFTPClient, op: Op) -> list[str]:
    """Upload what differs; returns rsync-style itemized changes."""
    excludes: list[str] = list(op.kwargs.get("exclude", ()))
    delete = bool(op.kwargs.get("delete"))
    if not os.path.isdir(op.local):
        target = op.remote
        if await sftp.isdir(target):
            target = posixpath.join(target, os.path.basename(op.local))
        change = await _put(sftp, op.local, target, os.path.basename(op.local))
        return [change] if change else []
    changes: list[str] = []
    if not await sftp.exists(op.remote):
        await sftp.makedirs(op.remote, exist_ok=True)
        changes.append("cd+++++++++ ./")
    for here, dirs, names in os.walk(op.local):
        rel_dir = os.path.relpath(here, op.local)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirs[:] = [d for d in dirs
                   if not _excluded(excludes, d, posixpath.join(rel_dir, d))]
        names = [n for n in names if not _excluded(excludes, n, posixpath.join(rel_dir, n))]
        remote_dir = posixpath.join(op.remote, rel_dir) if rel_dir else op.remote
        if delete:
            changes += await _delete_extra(sftp, remote_dir, rel_dir, {*dirs, *names}, excludes)
        for d in dirs:
            rpath = posixpath.join(remote_dir, d)
            if os.path.islink(os.path.join(here, d)):
                names.append(d)  # a symlink to a directory is copied as a link
                continue
            if not await sftp.isdir(rpath):
                await sftp.mkdir(rpath)
                changes.append(f"cd+++++++++ {posixpath.join(rel_dir, d)}/")
        for n in names:
            change = await _put(sftp, os.path.join(here, n), posixpath.join(remote_dir, n),
                                posixpath.join(rel_dir, n))
            if change:
                changes.append(change)
    return changes


async def _put(sftp: asyncssh.SFTPClient, local: str, remote: str, rel: str) -> str | None:
    """Copy one file or symlink unless the remote one already matches; its change line."""
    st = os.lstat(local)
    try:
        have: asyncssh.SFTPAttrs | None = await sftp.lstat(remote)
    except asyncssh.SFTPNoSuchFile:
        have = None
    if os.path.islink(local):
        link = os.readlink(local)
        if have is not None:
            with contextlib.suppress(asyncssh.SFTPError):
                if await sftp.readlink(remote) == link:
                    return None
            await sftp.remove(remote)
        await sftp.symlink(link, remote)
        return f"cL{'+' * 9 if have is None else '.' * 9} {rel} -> {link}"
    if have is not None and have.size == st.st_size and have.mtime == int(st.st_mtime):
        return None
    await sftp.put(local, remote, preserve=True)
    return f">f{'+' * 9 if have is None else '.st......'} {rel}"


async def _delete_extra(sftp: asyncssh.SFTPClient, remote_dir: str, rel_dir: str,
                        keep: set[str], excludes: Sequence[str]) -> list[str]:
    """`delete=True`: remove remote entries the local directory does not have."""
    if not await sftp.isdir(remote_dir):
        return []
    gone = []
    for name in sorted(await sftp.listdir(remote_dir)):
        rel = posixpath.join(rel_dir, name)
        if name in (".", "..") or name in keep or _excluded(excludes, name, rel):
            continue
        path = posixpath.join(remote_dir, name)
        if await sftp.isdir(path) and not await sftp.islink(path):
            await sftp.rmtree(path)
            rel += "/"
        else:
            await sftp.remove(path)
        gone.append(f"*deleting   {rel}")
    return gone
