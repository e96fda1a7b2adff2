"""A remote command's life over SSH: read its output, stop it, judge how it ended.

Split from the executor (which owns connections and the pool) so each module holds one idea.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence

from reops.core.model import Host, Result
from reops.ops.base import Op
from reops.transports.ssh.output import Capture, LineSplitter
from reops.transports.ssh.sshlib import asyncssh


async def pump(stream: asyncssh.SSHReader[bytes], capture: Capture,
                lines: LineSplitter | None) -> None:
    """Read a process stream to its end into a bounded capture, emitting Lines if asked."""
    while chunk := await stream.read(65536):
        capture.feed(chunk)
        if lines is not None:
            lines.feed(chunk)
    if lines is not None:
        lines.close()


#: when to re-send the kill signal if the command is still there: sshd signals the
#: command's process group, which does not exist yet if the command was only just forked
#: (on a loaded host that can take seconds). The waits add up to 4.8 s, under the runtime's
#: shutdown grace (5 s): closing the channel earlier would orphan the command, since sshd
#: does not stop a command without a terminal when its channel closes.
KILL_RESEND_AFTER_S = (0.05, 0.25, 0.5, 1.0, 1.5, 1.5)


async def stop(process: asyncssh.SSHClientProcess[bytes],
                readers: Sequence[asyncio.Future[None]] = ()) -> None:
    """Kill a remote command (OpenSSH honours signal requests) and close its channel;
    stop reading its output."""
    for reader in readers:
        reader.cancel()
    for wait in KILL_RESEND_AFTER_S:
        with contextlib.suppress(Exception):
            process.send_signal("KILL")
        try:
            await asyncio.wait_for(process.wait_closed(), wait)
            return
        except TimeoutError:
            continue
        except Exception:
            break
    process.close()


def signum(name: str) -> int:
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0


def finish(host: Host, op: Op, code: int, out: str, err: str, started: float,
            t0: float) -> Result:
    status, data, changed, err = op.judge(code, out, err)
    return Result(
        host=host.name, op=op.name, status=status, code=code, out=out, err=err,
        started_at=started, duration_s=time.monotonic() - t0, transport="ssh", data=data,
        changed=changed,
    )
