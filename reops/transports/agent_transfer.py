"""File transfers over agents, in chunks: bounded memory, small frames, one deadline.

An upload is read once, CHUNK_BYTES at a time, and sent as `file.begin`, `file.append`…,
`file.commit` calls (the agent writes a temp file and renames it into place only after
checking size and SHA-256); a small file goes in one `file.write`. A download asks
`file.stat`, refuses anything but a regular file, then reads chunks into a temp file in the
host's own directory (created 0700) and renames it; its mode keeps the permission bits
only (setuid, setgid and sticky bits are dropped). The whole transfer shares the op's
timeout. Memory is about one chunk per host, on the controller and on the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from reops_agent.protocol import CHUNK_BYTES

from reops.control.wire import ResultItem
from reops.core.model import UNREACHED, Host, Result, Status
from reops.core.settings import Settings
from reops.ops.base import Op

#: files whose size says 0 (/proc, /sys) are read until their end, up to this many bytes
PSEUDO_FILE_MAX = 16 * 1024 * 1024

Caller = Callable[[str, list[Any], dict[str, Any], float | None], Awaitable[ResultItem]]


class CallFailed(Exception):
    """A hub call that gave no result (hub or agent unreachable, lost, refused)."""

    def __init__(self, status: Status, err: str) -> None:
        super().__init__(err)
        self.status: Status = status
        self.err = err


class _StepFailed(Exception):
    """The agent answered a step with a failure (its reason is the text)."""


class _Transfer:
    """One transfer's calls under one deadline."""

    def __init__(self, call: Caller, total: float | None) -> None:
        self.call = call
        self.deadline = None if total is None else time.monotonic() + total
        self.steps = 0  # calls that reached the hub

    async def step(self, fn: str, args: list[Any], kwargs: dict[str, Any] | None = None,
                   ) -> Any:
        left = None if self.deadline is None else max(0.001, self.deadline - time.monotonic())
        try:
            item = await self.call(fn, args, kwargs or {}, left)
        except CallFailed as e:
            if self.steps and e.status == "unreachable":  # earlier steps ran: partial
                raise CallFailed("lost", e.err) from None
            raise
        self.steps += 1
        status = item.status
        if status == "ok":
            return item.data
        if status == "timeout":
            raise TimeoutError
        if status in ("unreachable", "lost"):
            raise CallFailed("lost" if self.steps > 1 or status == "lost" else "unreachable",
                             item.err or status)
        lines = (item.err or status).strip().splitlines()
        raise _StepFailed(lines[-1] if lines else str(status))


async def transfer(call: Caller, host: Host, op: Op, settings: Settings) -> Result:
    """Run an upload, sync or download op on `host` through `call`; one Result, never raises."""
    started, t0 = time.time(), time.monotonic()
    total = op.timeout if op.timeout is not None else settings.command_timeout
    t = _Transfer(call, total)
    if op.kind != "download":  # upload, sync (one file over agents)
        what = f"upload {op.local} -> {host.name}:{op.remote}"
    else:
        what = f"download {host.name}:{op.remote} -> {op.local}/{host.name}/"

    def result(status: Status, code: int, err: str = "", out: str = "", data: Any = None,
               changed: bool | None = None) -> Result:
        return Result(host=host.name, op=op.name, status=status, code=code, out=out, err=err,
                      started_at=started, duration_s=time.monotonic() - t0, transport="agent",
                      data=data, changed=changed)

    try:
        async with asyncio.timeout(total):
            if op.kind != "download":
                changed = await _upload(t, op)
                return result("ok", 0, out=op.remote, data=op.remote, changed=changed)
            dest = await _download(t, host, op)
            return result("ok", 0, out=dest, data=dest)
    except TimeoutError:
        return result("timeout", UNREACHED, f"{what}: timed out after {total:g} s "
                      "(raise it with --timeout)")
    except CallFailed as e:
        return result(e.status, UNREACHED, f"{what}: {e.err}")
    except (_StepFailed, OSError, ValueError) as e:
        return result("failed", 1, f"{what}: {e}")


async def _upload(t: _Transfer, op: Op) -> bool:
    local = Path(op.local)
    if local.is_dir():
        raise ValueError("directories are not transferred over agents; use --via ssh")
    mode = {"mode": op.mode} if op.mode is not None else {}
    with local.open("rb") as f:
        chunk = await asyncio.to_thread(f.read, CHUNK_BYTES)
        if len(chunk) < CHUNK_BYTES:  # small: one call
            data = await t.step("file.write", [op.remote, chunk], {**mode})
            return bool((data or {}).get("changed", True))
        token = (await t.step("file.begin", [op.remote]))["token"]
        try:
            digest, offset = hashlib.sha256(), 0
            while chunk:  # one chunk in memory at a time
                digest.update(chunk)
                await t.step("file.append", [token, offset, chunk])
                offset += len(chunk)
                chunk = await asyncio.to_thread(f.read, CHUNK_BYTES)
            data = await t.step("file.commit", [token, offset, digest.hexdigest()], {**mode})
        except (_StepFailed, TimeoutError, OSError, asyncio.CancelledError):
            await _abort(t, token)
            raise
    return bool((data or {}).get("changed", True))


async def _abort(t: _Transfer, token: str) -> None:
    """Best effort: remove the agent's temp file now (it would expire anyway)."""
    with contextlib.suppress(Exception):
        await asyncio.shield(t.call("file.abort", [token], {}, 5.0))


async def _download(t: _Transfer, host: Host, op: Op) -> str:
    info = await t.step("file.stat", [op.remote])
    if not info.get("regular"):
        raise _StepFailed(f"{op.remote} is not a regular file")
    size = int(info.get("size") or 0)
    target = Path(op.local) / host.name
    target.mkdir(mode=0o700, parents=True, exist_ok=True)  # the host's files: private
    dest = target / Path(op.remote).name
    fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{dest.name}.reops-")
    try:
        with os.fdopen(fd, "wb") as out:
            offset, eof = 0, False
            while not eof and (offset < size or size == 0):
                want = min(CHUNK_BYTES, size - offset) if size else CHUNK_BYTES
                data = await t.step("file.read", [op.remote],
                                    {"offset": offset, "length": want})
                content: bytes = data["content"]
                await asyncio.to_thread(out.write, content)
                offset += len(content)
                eof = bool(data.get("eof")) or not content
                if size == 0 and offset > PSEUDO_FILE_MAX:
                    raise _StepFailed(f"{op.remote} reports size 0 but has more than "
                                      f"{PSEUDO_FILE_MAX} bytes; not downloaded")
            if size and offset < size:
                raise _StepFailed(f"{op.remote} shrank during the download "
                                  f"({offset} of {size} bytes); download it again")
        os.chmod(tmp, int(info.get("mode", 0o644)) & 0o777)  # no setuid/setgid/sticky
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(dest)
