"""`files.sync` over SSH: rsync when both ends have it, else an SFTP copy that acts alike.

The SSH source calls `run_sync` for sync ops. It runs the op's pre-check over the pooled
connection; when the host and this machine both have rsync, it runs rsync locally with
the same connection policy as the SSH source (host-key checking, known_hosts, key, port,
user, connect timeout); otherwise it walks the local tree and uploads over SFTP only what
differs by size or mtime (rsync's quick check), so both paths mean "remote becomes a copy
of local" and report changes in rsync's `--itemize-changes` form (`op.parse` reads both).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import math
import os
import posixpath
import shutil
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

#: the section of `Result.out` naming the path taken (rsync | sftp)
VIA_SECTION = "sync-via"


def sync_via(out: str) -> str:
    """Which path a sync Result took: `rsync`, `sftp` or "" (not a sync Result)."""
    return sections(out).get(VIA_SECTION, "").strip()


def ssh_options(host: Host, settings: Settings) -> list[str]:
    """ssh(1) options that match the SSH source's policy for `host` (for rsync -e):
    host-key checking, known_hosts, key, user and connect timeout from `settings`."""
    policy = settings.host_key_checking
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


def local_rsync_argv(host: Host, op: Op, settings: Settings) -> list[str]:
    """The rsync command line this machine runs for `op` on `host`."""
    target = host if settings.host_key_checking != "off" else msgspec.structs.replace(
        host, known_hosts=None)  # "off" must not read or write any known_hosts file
    return rsync_argv(op, target, ssh_options=ssh_options(host, settings))


async def run_sync(host: Host, op: Op, settings: Settings,
                   conn: asyncssh.SSHClientConnection) -> Result:
    """Carry out a `files.sync` op on `host` over `conn`; always one Result."""
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
        return await _rsync(host, op, settings, result)
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


async def _rsync(host: Host, op: Op, settings: Settings, result: Callable[..., Result]) -> Result:
    argv = local_rsync_argv(host, op, settings)
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
