"""The `shell` built-in: run a command, streaming stdout/stderr lines back as they come.

Lines of each stream keep their order; each stream keeps its first and last max_output/2
bytes (a visible marker says how much was cut between, in the SSH transport's words), so a
runaway command cannot exhaust the agent's memory. stdin is written while stdout/stderr are
read (one `selectors` loop in the calling thread: no asyncio, no extra threads): a command
that echoes its input (`cat`) can never fill a pipe and deadlock. A timeout or a cancelled
call (Cancel, Unschedule) kills the command's whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from reops_agent.cancel import Cancelled, Token
from reops_agent.protocol import (
    MAX_LINE,
    MAX_OUTPUT,
    MAX_OUTPUT_LIMIT,
    Stream,
    decode_output,
)
from reops_agent.results import FnResult

if TYPE_CHECKING:
    import selectors
    import subprocess

#: where streamed lines go (blocking is fine: a full outbox slows the command, by design)
Emit = Callable[[Stream, str], None]

_CHUNK = 64 * 1024


class _Capture:
    """Keeps one stream's head and tail bytes and cuts its lines for `emit`."""

    def __init__(self, stream: Stream, emit: Emit | None, limit: int = MAX_OUTPUT) -> None:
        self.stream: Stream = stream
        self.emit = emit
        limit = max(0, min(limit, MAX_OUTPUT_LIMIT))
        self.head_max = limit // 2
        self.tail_max = limit - self.head_max
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.partial = b""

    def feed(self, chunk: bytes) -> list[str]:
        """Keep `chunk` (bounded); the complete lines it finished (when streaming)."""
        self.total += len(chunk)
        rest = chunk
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += rest[:room]
            rest = rest[room:]
        if rest and self.tail_max:
            self.tail += rest[-self.tail_max:]
            if len(self.tail) > self.tail_max:
                del self.tail[: len(self.tail) - self.tail_max]
        if self.emit is None:
            return []
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        if len(self.partial) > MAX_LINE:  # a line with no end in sight: send what we have
            lines.append(self.partial)
            self.partial = b""
        return [line[:MAX_LINE].decode(errors="replace") for line in lines]

    def tail_line(self) -> list[str]:
        """The last, unterminated line (when streaming)."""
        rest, self.partial = self.partial, b""
        return [rest.decode(errors="replace")] if rest and self.emit is not None else []

    def text(self) -> str:
        """What was kept, as UTF-8 text (errors replaced), marked where bytes were cut."""
        return decode_output(bytes(self.head), bytes(self.tail), self.total, self.stream)


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def shell(
    command: str,
    stdin: str | bytes | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    max_output: int = MAX_OUTPUT,
    *,
    emit: Emit | None = None,
    deadline: float | None = None,
    token: Token | None = None,
) -> FnResult:
    """Run `command` with /bin/sh; exit code 0 is ok, anything else failed.

    `max_output` bounds the bytes kept per stream (at most MAX_OUTPUT_LIMIT). Past
    `deadline` (monotonic) the command is killed and TimeoutError raised; a cancelled
    `token` kills it too and raises Cancelled."""
    import selectors  # (here: an idle agent never needs them, ~0.5 MB)
    import subprocess

    proc = subprocess.Popen(
        command, shell=True,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=cwd, env={**os.environ, **env} if env else None, start_new_session=True,
    )
    unhook = token.on_cancel(lambda: _killpg(proc)) if token is not None else None
    out, err = _Capture("out", emit, max_output), _Capture("err", emit, max_output)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    sel = selectors.DefaultSelector()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        readers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        for fd in readers:
            sel.register(fd, selectors.EVENT_READ)
        pending = memoryview(data or b"")
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            if pending:
                sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        while readers:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                _killpg(proc)
                raise TimeoutError
            for key, _ in sel.select(wait):
                fd = int(key.fd)
                if fd in readers:
                    _read(fd, readers, sel)
                elif proc.stdin is not None:  # stdin is writable: give it the next piece
                    try:
                        pending = pending[os.write(fd, pending[:_CHUNK]):]
                    except (BrokenPipeError, ConnectionResetError):
                        pending = memoryview(b"")  # it exits without reading: fine
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
        if token is not None and token.cancelled:
            raise Cancelled
        code = proc.wait()
    finally:
        if unhook is not None:
            unhook()
        sel.close()
        _killpg(proc)
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
    if token is not None and token.cancelled:
        raise Cancelled
    return FnResult(status="ok" if code == 0 else "failed", code=code, out=out.text(),
                    err=err.text())


def _read(fd: int, readers: dict[int, _Capture], sel: selectors.BaseSelector) -> None:
    """One chunk from a readable stdout/stderr pipe; at its end, stop watching it."""
    chunk = os.read(fd, _CHUNK)
    capture = readers[fd]
    if not chunk:
        sel.unregister(fd)
        del readers[fd]
        if capture.emit is not None:
            for line in capture.tail_line():
                capture.emit(capture.stream, line)
        return
    lines = capture.feed(chunk)
    if capture.emit is not None:
        for line in lines:
            capture.emit(capture.stream, line)
