"""The runtime: one asyncio event loop, in a background thread, that owns all I/O.

A plain REPL, IPython, Jupyter, a click command and a long-running flow all talk to the
same loop: blocking callers through `Runtime.call`, async callers by awaiting
`Runtime.wrap`. Pipelines keep running while the caller's thread does other things.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: how long process exit waits for connections to close politely
SHUTDOWN_GRACE_S = 5.0


class Runtime:
    """A daemon thread running an event loop until the process exits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._resources: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.thread = threading.Thread(target=self._main, name="reops-runtime", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        # Ctrl-C and SIGTERM must reach the caller's (main) thread, never this one
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    @property
    def in_loop(self) -> bool:
        """Whether the caller runs on the runtime's own thread."""
        return threading.current_thread() is self.thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and block until it is done (Ctrl-C cancels it)."""
        if self.in_loop:
            coro.close()
            raise RuntimeError("blocking call from the runtime thread: await it instead")
        fut = self.submit(coro)
        interruptible()
        try:
            return fut.result()
        except KeyboardInterrupt:
            fut.cancel()
            raise

    async def wrap(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the runtime loop from any other loop."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop thread, from any thread."""
        if self.in_loop:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task on the loop (call from the loop thread) that `settle` can wait for."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _settle(self, grace: float) -> None:
        cancelling = [t for t in self._tasks if t.cancelling()]
        if cancelling:
            await asyncio.wait(cancelling, timeout=grace)
        await asyncio.sleep(0)  # let cancelled work flush what it wrote (signals, closes)

    def settle(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Block until cancelled tasks have cleaned up (remote commands killed), bounded."""
        if not self.in_loop:
            with contextlib.suppress(Exception):
                self.submit(self._settle(grace)).result(timeout=grace + 1)

    def barrier(self) -> None:
        """Return once everything the loop was running when called has run."""
        if not self.in_loop:
            self.submit(asyncio.sleep(0)).result()

    def resource(self, name: str, factory: Callable[[], T]) -> T:
        """A per-runtime singleton (e.g. the SSH connection pool), made on first use."""
        res = self._resources.get(name)
        if res is None:
            res = self._resources[name] = factory()
            close = getattr(res, "close", None)
            if close is not None:
                self.on_close(close)
        return res

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Register an async cleanup (e.g. closing connections) run at shutdown."""
        self._closers.append(closer)

    async def _close_all(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):  # cleanup must not mask the real exit
                await closer()
        self._closers.clear()

    def shutdown(self) -> None:
        """Close registered resources and stop the loop; idempotent."""
        if not self.loop.is_running():
            return
        if not self.in_loop:
            with contextlib.suppress(Exception):
                self.submit(self._close_all()).result(timeout=SHUTDOWN_GRACE_S)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=SHUTDOWN_GRACE_S)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so both take the same cleanup path."""


_terminated = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _terminated
    _terminated = True
    raise Terminated("terminated (SIGTERM)")


def terminate_like_interrupt() -> None:
    """Make SIGTERM (systemd, CI, `timeout`) do what Ctrl-C does: cancel what runs, kill
    the remote commands, report the partial outcome. Main thread only (Python's rule)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """Whether this process got SIGTERM through `terminate_like_interrupt` (exit 143)."""
    return _terminated


#: the message of a cancellation that means "the user pressed Ctrl-C" (`task.cancel(INTERRUPT)`
#: by a live session): an awaited pipeline then ends with its partial Outcome, as `run()` does
INTERRUPT = "reops: interrupted (Ctrl-C)"


def interrupted_by_user(e: BaseException) -> bool:
    """Whether `e` is the cancellation a live session makes for Ctrl-C (see INTERRUPT)."""
    return isinstance(e, asyncio.CancelledError) and INTERRUPT in e.args


def interruptible() -> None:
    """Make Ctrl-C and SIGTERM wake the main thread's blocking wait (a `run()`) at once.

    A library may put its own C handler in front of Python's for SIGINT, flagged
    SA_RESTART: polars does when imported (to stop its queries; its handler then calls
    Python's). Python's handler only sets a flag; with SA_RESTART the kernel restarts the
    main thread's lock wait instead of returning EINTR, so KeyboardInterrupt waited for the
    pipeline to end (30 s for `sleep 30`). Clearing SA_RESTART keeps their handler in place
    and lets the wait return, so Python raises at once. Main thread only; cheap (two
    sigaction calls per signal), so waits call it every time: polars may be imported late.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no siginterrupt
            signal.siginterrupt(sig, True)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done (e.g. a subscribe whose disposable
    we need); a signal arriving meanwhile is delivered right after, and one arriving
    during the wait that follows interrupts it (`interruptible`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        interruptible()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime, started on first use."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime()
                atexit.register(_runtime.shutdown)
    return _runtime
