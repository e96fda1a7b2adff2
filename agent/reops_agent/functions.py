"""Runs named functions for the hub: built-ins, and shipped code when allowed.

Every call is bounded three ways: a limit on calls at once, a timeout, and errors caught
into the result (a raising function gives status "error" with its traceback). `run` blocks
its caller: the agent calls it from one thread per call, never from its socket loop. No
asyncio here (it alone would add ~7 MB to an idle agent): `shell` runs its command with a
selectors loop; other built-ins and shipped code run in a helper thread the call waits on
until its deadline; shipped `async def` functions get an event loop of their own, imported
only then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from reops_agent.cancel import Cancelled, Token
from reops_agent.protocol import CodeRef, Done
from reops_agent.results import FnResult, value
from reops_agent.shell import Emit, shell
from reops_agent.shipped import CodeCache, CodeMissing

if TYPE_CHECKING:
    from reops_agent import system

#: a blocking built-in: (args, kwargs) -> its data
Builtin = Callable[..., Any]

REFUSED_CODE = (
    "shipped code refused: this agent was started without --allow-code"
)

#: the built-ins (facts, metrics and files live in `system`, imported by their first call)
BUILTINS = ("ping", "shell", "facts", "metrics", "file.read", "file.write", "file.stat",
            "file.begin", "file.append", "file.commit", "file.abort")

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
        self.concurrency = max(1, concurrency)
        self._allowed = allowed_builtins(allow)
        self.code = CodeCache()
        self._slots = threading.Condition()
        self.running = 0
        self._lazy = threading.Lock()
        self._sampler: system.Sampler | None = None
        self._uploads: system.Uploads | None = None
        # the counters metrics' first rates start from (raw text: parsed when first used)
        self._seed = (time.monotonic(), _slurp("/proc/stat"), _slurp("/proc/net/dev"))

    @property
    def sampler(self) -> system.Sampler:
        """Counter readings between metrics calls (the first from this runner's start)."""
        with self._lazy:
            if self._sampler is None:
                from reops_agent import system

                self._sampler = system.Sampler(system.parse_counters(*self._seed))
            return self._sampler

    @property
    def uploads(self) -> system.Uploads:
        """Chunked uploads in progress."""
        with self._lazy:
            if self._uploads is None:
                from reops_agent import system

                self._uploads = system.Uploads()
            return self._uploads

    def _builtin(self, fn: str) -> Builtin:
        """The blocking function behind a built-in name (importing `system` on first use:
        an idle agent does not hold it, nor what it imports)."""
        from reops_agent import system

        if fn == "metrics":
            sampler = self.sampler
            return lambda *kinds, **kw: system.metrics(sampler, *kinds, **kw)
        if fn.startswith("file.") and fn[5:] in ("begin", "append", "commit", "abort"):
            return getattr(self.uploads, fn[5:])
        table: dict[str, Builtin] = {"facts": system.facts, "file.read": system.file_read,
                                     "file.write": system.file_write,
                                     "file.stat": system.file_stat}
        return table[fn]

    @property
    def names(self) -> list[str]:
        """Built-in function names this agent serves (what Hello advertises)."""
        return sorted(n for n in BUILTINS if self._allowed is None or n in self._allowed)

    def run(
        self,
        call_id: int,
        fn: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
        code: CodeRef | None = None,
        emit: Emit | None = None,
        token: Token | None = None,
    ) -> Done:
        """Run one call to completion (blocking); never raises except CodeMissing and
        Cancelled (when `token` is cancelled)."""
        token = token or Token()
        started = time.time()
        t0 = time.monotonic()
        try:
            self._take_slot(token)
            try:
                deadline = None if timeout is None else time.monotonic() + timeout
                result = self._dispatch(fn, args, kwargs, code, emit, deadline, token)
            finally:
                self._give_slot()
        except (CodeMissing, Cancelled):
            raise
        except TimeoutError:
            result = FnResult(status="timeout", code=-1, err=f"timed out after {timeout:g} s")
        except Exception:
            import traceback  # (only on the error path: an idle agent stays smaller)

            result = FnResult(status="error", code=1, err=traceback.format_exc())
        if token.cancelled:
            raise Cancelled
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

    def _take_slot(self, token: Token) -> None:
        """Wait for one of `concurrency` slots (a cancel ends the wait)."""
        def wake() -> None:
            with self._slots:
                self._slots.notify_all()

        unhook = token.on_cancel(wake)
        try:
            with self._slots:
                while self.running >= self.concurrency and not token.cancelled:
                    self._slots.wait()
                if token.cancelled:
                    raise Cancelled
                self.running += 1
        finally:
            unhook()

    def _give_slot(self) -> None:
        with self._slots:
            self.running -= 1
            self._slots.notify()

    def _dispatch(
        self, fn: str, args: list[Any], kwargs: dict[str, Any], code: CodeRef | None,
        emit: Emit | None, deadline: float | None, token: Token,
    ) -> FnResult:
        if code is not None:
            if not self.allow_code:
                return FnResult(status="error", code=1, err=REFUSED_CODE)
            target = self.code.function(code)
            return value(_bounded(lambda: _awaited(target(*args, **kwargs)), deadline, token))
        known = fn in BUILTINS
        if known and self._allowed is not None and fn not in self._allowed:
            return FnResult(status="error", code=1,
                            err=f"function {fn!r} is not allowed on this agent (started with "
                            f"--allow {','.join(self.allow or ())})")
        if not known:
            return FnResult(status="error", code=1,
                            err=f"unknown function {fn!r}; built-ins: {', '.join(self.names)}")
        if fn == "ping":
            return value("pong", "pong")
        if fn == "shell":  # (bounded by itself: it kills its command at the deadline)
            return shell(*args, emit=emit, deadline=deadline, token=token, **kwargs)
        builtin = self._builtin(fn)
        return value(_bounded(lambda: builtin(*args, **kwargs), deadline, token))


def _slurp(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _awaited(out: Any) -> Any:
    """A shipped function's value; a coroutine (`async def`) is run on its own loop."""
    if hasattr(out, "__await__") and hasattr(out, "send"):
        import asyncio  # only for shipped async code: the idle agent never loads asyncio

        async def wait() -> Any:
            return await out

        return asyncio.run(wait())
    return out


def _bounded(work: Callable[[], Any], deadline: float | None, token: Token) -> Any:
    """`work()` run in a helper thread, waited for until `deadline` or a cancel.

    A function past its deadline keeps running in its (daemon) thread, as it would have
    in an executor: Python cannot stop a thread, but the call's answer does not wait."""
    done = threading.Event()
    box: list[Any] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            box.append(work())
        except BaseException as e:  # handed to the caller below
            failed.append(e)
        finally:
            done.set()

    unhook = token.on_cancel(done.set)
    try:
        threading.Thread(target=target, name="reops-agent-fn", daemon=True).start()
        done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    finally:
        unhook()
    if token.cancelled and not box and not failed:
        raise Cancelled
    if not done.is_set() or not (box or failed):
        raise TimeoutError
    if failed:
        raise failed[0]
    return box[0]


def _encodable(data: Any) -> Any:
    """`data` if msgpack can carry it, else its repr (shipped code may return anything)."""
    if data is None or isinstance(data, (str, int, float, bool, bytes)):
        return data
    try:
        msgspec.msgpack.encode(data)
    except (TypeError, ValueError, OverflowError):
        return repr(data)
    return data
