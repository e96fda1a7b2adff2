"""Process trees by pidfd: wait for exits, find descendants, reap our children.

Pidfds make this race-free: a pid may be reused the moment a process is reaped, a pidfd
always names the process it was opened for. Used by the lab to stop exactly what it started.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from pathlib import Path


class ProcessError(RuntimeError):
    """Processes that would not exit even after SIGKILL."""


def wait_exit(fds: dict[int, int], timeout: float) -> None:
    """Block until every pidfd in `fds` is readable (process gone); SIGKILL stragglers."""
    left = dict(fds)
    with selectors.DefaultSelector() as sel:
        for fd in left:
            sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        killed = False
        while left:
            events = sel.select(max(0.0, deadline - time.monotonic()))
            if not events:
                if killed:
                    raise ProcessError(f"processes {sorted(left.values())} did not exit")
                for fd in left:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + timeout
            for key, _ in events:
                sel.unregister(key.fd)
                left.pop(key.fd)
                reap(key.fd)


def pidfd(pid: int) -> int | None:
    """A pidfd for `pid`, or None when no such process exists."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])  # comm may hold spaces and ")"


def descendants(roots: set[int]) -> list[int]:
    """Every process below `roots`: sshd's per-connection processes and their commands."""
    if not roots:
        return []
    children: dict[int, list[int]] = {}
    for e in os.scandir("/proc"):
        if e.name.isdigit() and (ppid := parent_of(int(e.name))) is not None:
            children.setdefault(ppid, []).append(int(e.name))
    out: list[int] = []
    todo = list(roots)
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def child_exited(pid: int) -> bool | None:
    """For a child of this process: has it exited (without reaping it)? None: not a child."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return None


def reap(pidfd: int) -> None:
    """Collect the process if it is our exited child, so it does not linger as a zombie.

    By pidfd, not pid: the pid may already name some other child of this process.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
