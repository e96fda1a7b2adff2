"""`in_own_thread(fn)`: await blocking user code without taking a default-executor thread.

Why: the runtime loop's default executor (a few threads: cpu count + 4) is what asyncio and
asyncssh use for short blocking calls; asyncssh builds every new connection's options there.
A step that parks one of those threads while it waits on the same loop (a provisioning
recipe calling `run(...)`, `reops agents deploy`) starves them: six such hosts at once and
no new SSH connection can open, so every one of them waits forever. Code that may block on
the loop runs here instead, on a thread of its own that ends with the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_own_thread(fn: Callable[[], T], *, name: str = "reops-blocking") -> T:
    """Run `fn()` on a new thread (with this task's context variables) and await its value."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)  # type: ignore[arg-type]

    def body() -> None:
        try:
            value = context.run(fn)
        except BaseException as e:  # handed to the awaiting task, never lost in the thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(settle, None, e)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=body, name=name, daemon=True).start()
    return await done
