"""Runs named functions for the hub: built-ins, and shipped code when allowed.

Every call is bounded three ways: a semaphore (calls at once), a timeout, and errors caught
into the result (a raising function gives status "error" with its traceback).
Blocking built-ins run in worker threads so the agent's socket loop never blocks.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from reops_agent import system
from reops_agent.protocol import CodeRef, Done
from reops_agent.results import FnResult, value
from reops_agent.shell import Emit, shell
from reops_agent.shipped import CodeCache, CodeMissing

Builtin = Callable[..., Awaitable[FnResult]]

REFUSED_CODE = (
    "shipped code refused: this agent was started without --allow-code"
)

#: what each name given to `--allow` opens: transfers are several calls on the wire, and
#: `ping` is always served (the hub's liveness checks need it)
ALLOW_GROUPS: dict[str, tuple[str, ...]] = {
    "shell": ("shell",),
    "facts": ("facts",),
    "metrics": ("metrics",),
    "file.read": ("file.read", "file.stat"),
    "file.write": ("file.write", "file.begin", "file.append", "file.commit", "file.abort"),
}


def allowed_builtins(allow: tuple[str, ...] | None) -> frozenset[str] | None:
    """The built-ins an `--allow` list opens (None: all of them); unknown names raise."""
    if allow is None:
        return None
    unknown = [a for a in allow if a not in ALLOW_GROUPS]
    if unknown:
        raise ValueError(f"unknown function(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(ALLOW_GROUPS)}")
    return frozenset(("ping", *(n for a in allow for n in ALLOW_GROUPS[a])))


class Runner:
    """The agent's function table and its concurrency bound."""

    def __init__(self, *, allow_code: bool = False, concurrency: int = 16,
                 allow: tuple[str, ...] | None = None) -> None:
        self.allow_code = allow_code
        self.allow = allow
        self._allowed = allowed_builtins(allow)
        self.sampler = system.Sampler()  # rates between metrics calls
        self.code = CodeCache()
        self.uploads = system.Uploads()
        self._bound = asyncio.Semaphore(concurrency)
        self.running = 0
        self._builtins: dict[str, Builtin] = {
            "ping": self._ping,
            "shell": self._shell,
            "facts": self._threaded(system.facts),
            "metrics": self._threaded(
                lambda *kinds, **kw: system.metrics(self.sampler, *kinds, **kw)),
            "file.read": self._threaded(system.file_read),
            "file.write": self._threaded(system.file_write),
            "file.stat": self._threaded(system.file_stat),
            "file.begin": self._threaded(self.uploads.begin),
            "file.append": self._threaded(self.uploads.append),
            "file.commit": self._threaded(self.uploads.commit),
            "file.abort": self._threaded(self.uploads.abort),
        }

    @property
    def names(self) -> list[str]:
        """Built-in function names this agent serves (what Hello advertises)."""
        return sorted(n for n in self._builtins
                      if self._allowed is None or n in self._allowed)

    async def run(
        self,
        call_id: int,
        fn: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
        code: CodeRef | None = None,
        emit: Emit | None = None,
    ) -> Done:
        """Run one call to completion; never raises except CodeMissing and cancellation."""
        started = time.time()
        t0 = time.monotonic()
        try:
            async with self._bound:
                self.running += 1
                try:
                    result = await asyncio.wait_for(
                        self._dispatch(fn, args, kwargs, code, emit), timeout
                    )
                finally:
                    self.running -= 1
        except CodeMissing:
            raise
        except TimeoutError:
            result = FnResult(status="timeout", code=-1, err=f"timed out after {timeout:g} s")
        except Exception:
            result = FnResult(status="error", code=1, err=traceback.format_exc())
        return Done(
            id=call_id,
            status=result.status,
            code=result.code,
            out=result.out,
            err=result.err,
            started_at=started,
            duration_s=time.monotonic() - t0,
            data=_encodable(result.data),
        )

    async def _dispatch(
        self, fn: str, args: list[Any], kwargs: dict[str, Any], code: CodeRef | None,
        emit: Emit | None,
    ) -> FnResult:
        if code is not None:
            if not self.allow_code:
                return FnResult(status="error", code=1, err=REFUSED_CODE)
            target = self.code.function(code)
            if asyncio.iscoroutinefunction(target):
                out = await target(*args, **kwargs)
            else:
                out = await asyncio.to_thread(target, *args, **kwargs)
            return value(out)
        builtin = self._builtins.get(fn)
        if builtin is not None and self._allowed is not None and fn not in self._allowed:
            return FnResult(status="error", code=1,
                            err=f"function {fn!r} is not allowed on this agent (started with "
                            f"--allow {','.join(self.allow or ())})")
        if builtin is None:
            return FnResult(status="error", code=1,
                            err=f"unknown function {fn!r}; built-ins: {', '.join(self.names)}")
        if fn == "shell":
            return await builtin(*args, emit=emit, **kwargs)
        return await builtin(*args, **kwargs)

    @staticmethod
    async def _ping() -> FnResult:
        return value("pong", "pong")

    @staticmethod
    async def _shell(*args: Any, emit: Emit | None = None, **kwargs: Any) -> FnResult:
        return await shell(*args, emit=emit, **kwargs)

    @staticmethod
    def _threaded(fn: Callable[..., Any]) -> Builtin:
        async def run(*args: Any, **kwargs: Any) -> FnResult:
            return value(await asyncio.to_thread(fn, *args, **kwargs))

        return run


def _encodable(data: Any) -> Any:
    """`data` if msgpack can carry it, else its repr (shipped code may return anything)."""
    if data is None or isinstance(data, (str, int, float, bool, bytes)):
        return data
    try:
        msgspec.msgpack.encode(data)
    except (TypeError, ValueError, OverflowError):
        return repr(data)
    return data
