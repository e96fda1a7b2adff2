"""The `shell` built-in: run a command, streaming stdout/stderr lines back as they come.

Lines of each stream keep their order; each stream keeps its first and last max_output/2
bytes (a visible marker says how much was cut between, in the SSH transport's words), so a
runaway command cannot exhaust the agent's memory. stdin is written while stdout/stderr are read: a
command that echoes its input (`cat`) can never fill a pipe and deadlock. A cancelled call
(timeout, Cancel) kills the command's whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

from reops_agent.protocol import (
    MAX_LINE,
    MAX_OUTPUT,
    MAX_OUTPUT_LIMIT,
    Stream,
    decode_output,
)
from reops_agent.results import FnResult

Emit = Callable[[Stream, str], Awaitable[None]]

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


async def _pump(reader: asyncio.StreamReader | None, capture: _Capture) -> None:
    if reader is None:
        return
    emit = capture.emit
    while chunk := await reader.read(_CHUNK):
        lines = capture.feed(chunk)
        if emit is not None:
            for line in lines:
                await emit(capture.stream, line)
    if emit is not None:
        for line in capture.tail_line():
            await emit(capture.stream, line)


async def _feed(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    """Write stdin, then close it; a command that exits without reading it is fine."""
    if writer is None:
        return
    try:
        writer.write(data)
        await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def shell(
    command: str,
    stdin: str | bytes | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    max_output: int = MAX_OUTPUT,
    *,
    emit: Emit | None = None,
) -> FnResult:
    """Run `command` with /bin/sh; exit code 0 is ok, anything else failed.

    `max_output` bounds the bytes kept per stream (at most MAX_OUTPUT_LIMIT)."""
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        start_new_session=True,
    )
    out, err = _Capture("out", emit, max_output), _Capture("err", emit, max_output)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    try:
        await asyncio.gather(_feed(proc.stdin, data or b"") if data is not None else _none(),
                             _pump(proc.stdout, out), _pump(proc.stderr, err))
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
    return FnResult(status="ok" if code == 0 else "failed", code=code, out=out.text(),
                    err=err.text())


async def _none() -> None:
    return None
