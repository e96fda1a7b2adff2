"""The `shell` built-in: run a command, streaming stdout/stderr lines back as they come.

Lines of each stream keep their order; the captured text is capped at MAX_OUTPUT so a
runaway command cannot exhaust the agent's memory. A cancelled call (timeout, Cancel)
kills the command's whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

from reops_agent.protocol import MAX_LINE, MAX_OUTPUT, Stream
from reops_agent.results import FnResult

Emit = Callable[[Stream, str], Awaitable[None]]

_CHUNK = 64 * 1024


class _Capture:
    """Collects one stream's text up to a cap and cuts it into lines for `emit`."""

    def __init__(self, stream: Stream, emit: Emit | None) -> None:
        self.stream: Stream = stream
        self.emit = emit
        self.parts: list[bytes] = []
        self.size = 0
        self.cut = False
        self.partial = b""

    def feed(self, chunk: bytes) -> list[str]:
        """Keep `chunk`; the complete lines it finished (when streaming)."""
        if self.size < MAX_OUTPUT:
            keep = chunk[: MAX_OUTPUT - self.size]
            self.parts.append(keep)
            self.size += len(keep)
            self.cut = self.cut or len(keep) < len(chunk)
        else:
            self.cut = True
        if self.emit is None:
            return []
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        if len(self.partial) > MAX_LINE:  # a line with no end in sight: send what we have
            lines.append(self.partial)
            self.partial = b""
        return [line[:MAX_LINE].decode(errors="replace") for line in lines]

    def tail(self) -> list[str]:
        """The last, unterminated line (when streaming)."""
        rest, self.partial = self.partial, b""
        return [rest.decode(errors="replace")] if rest and self.emit is not None else []

    def text(self) -> str:
        text = b"".join(self.parts).decode(errors="replace")
        return text + (f"\n[output cut at {MAX_OUTPUT} bytes]\n" if self.cut else "")


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
        for line in capture.tail():
            await emit(capture.stream, line)


async def shell(
    command: str,
    stdin: str | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    *,
    emit: Emit | None = None,
) -> FnResult:
    """Run `command` with /bin/sh; exit code 0 is ok, anything else failed."""
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        start_new_session=True,
    )
    out, err = _Capture("out", emit), _Capture("err", emit)
    try:
        if stdin is not None and proc.stdin is not None:
            proc.stdin.write(stdin.encode())
            await proc.stdin.drain()
            proc.stdin.close()
        await asyncio.gather(_pump(proc.stdout, out), _pump(proc.stderr, err))
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
    return FnResult(status="ok" if code == 0 else "failed", code=code, out=out.text(),
                    err=err.text())
