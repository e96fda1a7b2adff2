"""Running the hub as a process: refuse a second hub, log to stderr, stop on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from reops.hub.client import HubNotRunning, ping_sync
from reops.hub.controller import Controller
from reops.hub.settings import HubSettings


class HubAlreadyRunning(RuntimeError):
    """Another hub answers on this control socket."""


def check_not_running(settings: HubSettings) -> None:
    """Raise HubAlreadyRunning when a live hub owns the control socket (a stale one is fine)."""
    path = settings.control_path
    if not path.exists():
        return
    try:
        info = ping_sync(path, timeout=1.0)
    except HubNotRunning:
        return
    raise HubAlreadyRunning(f"a hub is already running (pid {info.get('pid')}) on {path}")


async def serve(settings: HubSettings, ready: Callable[[Controller], None] | None = None,
                ) -> None:
    """Run a hub until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    controller = Controller(settings)
    if ready is not None:
        ready(controller)
    await controller.serve(stop)


def run_hub(settings: HubSettings, ready: Callable[[Controller], None] | None = None,
            verbose: bool = False) -> None:
    """The `reops hub` process body: blocks until stopped."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s reops-hub %(levelname)s %(message)s")
    check_not_running(settings)
    asyncio.run(serve(settings, ready))
