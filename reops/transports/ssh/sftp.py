"""SFTP sessions that cannot hang, and downloads that cannot plant setuid files.

A remote FIFO or a stuck filesystem makes an SFTP request wait forever, and asyncssh's own
clean-up then waits for answers that never come. `bounded_sftp` runs the work as a task and
gives up at the deadline without awaiting that clean-up. OpenSSH refuses signals to
subsystems, so a server-side sftp child blocked in open(2) stays until the file unblocks;
we close our end of the channel and move on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from reops.transports.ssh.sshlib import asyncssh

T = TypeVar("T")


async def bounded_sftp(conn: asyncssh.SSHClientConnection,
                       work: Callable[[asyncssh.SFTPClient], Awaitable[T]],
                       timeout: float | None, close_timeout: float) -> T:
    """`work(sftp)` on a new SFTP session; TimeoutError after `timeout` seconds (None: no
    limit). The session is closed on every path; a close the server never confirms is
    waited for at most `close_timeout` seconds."""
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    async with asyncio.timeout_at(deadline):
        sftp = await conn.start_sftp_client()
    task = asyncio.ensure_future(work(sftp))
    clean = False
    try:
        async with asyncio.timeout_at(deadline):
            result = await asyncio.shield(task)
        clean = True
        return result
    finally:
        if not task.done():
            task.cancel()  # abandoned: its SFTP requests may never be answered
        sftp.exit()
        if clean:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sftp.wait_closed(), close_timeout)
        else:
            _close_channel(sftp)


def _close_channel(sftp: asyncssh.SFTPClient) -> None:
    """Close the session's channel without waiting for the server (it may be stuck)."""
    handler = getattr(sftp, "_handler", None)
    writer = getattr(handler, "_writer", None)
    with contextlib.suppress(Exception):
        if writer is not None:
            writer.channel.close()


def current_umask() -> int:
    """This process's umask, read without changing it (Linux /proc; else the usual 022)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def safe_mode(mode: int, umask: int) -> int:
    """A downloaded file's local mode: no setuid/setgid/sticky, nothing the umask forbids."""
    return stat.S_IMODE(mode) & 0o777 & ~umask


def host_download_dir(local: str, host: str) -> Path:
    """`local/<host>`, private (0700): downloads are not for other local users to read,
    nor to race for while their modes are being fixed."""
    target = Path(local) / host
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.chmod(0o700)
    return target


def mask_tree(path: Path, umask: int) -> None:
    """Make every downloaded file and directory under `path` safe (see `safe_mode`)."""
    def fix(p: str) -> None:
        st = os.lstat(p)
        if not stat.S_ISLNK(st.st_mode):
            want = safe_mode(st.st_mode, umask)
            if stat.S_IMODE(st.st_mode) != want:
                os.chmod(p, want)

    if not os.path.lexists(path):
        return
    fix(str(path))
    if path.is_dir() and not path.is_symlink():
        for here, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                fix(os.path.join(here, name))
