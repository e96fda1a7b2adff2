"""Running the hub as a process: refuse a second hub, log to stderr, stop on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

from reops.control.client import HubNotRunning, ping_sync
from reops.control.settings import HubSettings
from reops.core.settings import raise_fd_limit
from reops.hub.cluster import check_store
from reops.hub.controller import Controller

log = logging.getLogger("reops.hub")


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
    attach_services(controller, settings.services)
    if ready is not None:
        ready(controller)
    await controller.serve(stop)


def attach_services(controller: Controller, names: Iterable[str]) -> None:
    """Call each `module:function` service's attach(controller), then entry points'."""
    from importlib import import_module
    from importlib.metadata import entry_points

    names = list(names)
    attaches: list[tuple[str, Callable[[Controller], object]]] = []
    for spec in names:
        module, _, attr = spec.partition(":")
        attaches.append((spec, getattr(import_module(module), attr or "attach")))
    for ep in entry_points(group="reops.hub"):
        if ep.value not in names:  # named in the settings too: attach it once
            attaches.append((ep.value, ep.load()))
    for name, attach in attaches:
        log.info("attaching service %s", name)
        attach(controller)


def run_hub(settings: HubSettings, ready: Callable[[Controller], None] | None = None,
            verbose: bool = False) -> None:
    """The `reops hub` process body: blocks until stopped."""
    raise_fd_limit()  # one connection per agent: as many open files as the hard limit allows
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s reops-hub %(levelname)s %(message)s")
    check_not_running(settings)
    check_store()  # a [store] the hub cannot use: one line now, not a hub half up
    asyncio.run(serve(settings, ready))


def settings_env(settings: HubSettings) -> dict[str, str]:
    """REOPS_HUB_* variables that give a child `python -m reops.hub` exactly `settings`."""
    env: dict[str, str] = {}
    for name in HubSettings.__struct_fields__:
        value = getattr(settings, name)
        if name == "services":
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"REOPS_HUB_{name.upper()}"] = str(value)
    env["REOPS_HUB_CONTROL"] = str(settings.control_path)
    env["REOPS_HUB_KEYS_DIR"] = str(settings.keys_path)
    return env


def start_background(settings: HubSettings, timeout: float = 15.0) -> dict[str, Any]:
    """Start a detached hub (log: <control dir>/hub.log) and return its ping answer."""
    check_not_running(settings)
    log_path = settings.control_path.parent / "hub.log"
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with log_path.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reops.hub"],
                                env={**os.environ, **settings_env(settings)},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        info = ping_sync(settings.control_path, timeout=timeout, wait=True)
    except HubNotRunning:
        proc.kill()
        tail = log_path.read_text()[-1000:] if log_path.exists() else ""
        raise RuntimeError(f"the hub did not start (log {log_path}):\n{tail}") from None
    info["log"] = str(log_path)
    return info


def stop_running(settings: HubSettings, timeout: float = 10.0) -> int | None:
    """SIGTERM the running hub and wait for it to exit; its pid, or None if none ran."""
    try:
        pid = int(ping_sync(settings.control_path, timeout=1.0)["pid"])
    except HubNotRunning:
        return None
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([fd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    return pid
