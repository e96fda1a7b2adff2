"""libvirt's event loop in one dedicated thread, and lifecycle events as typed values.

libvirt delivers events only while something runs its event loop. `libvirtaio` would run it
on an asyncio loop, but it can be registered only once per process, which ties every
connection to one loop forever (and breaks per-test loops). So the default implementation
runs in one daemon thread for the whole process — libvirt's own state is process-global
anyway — and each connection hands its events to its own asyncio loop with
`call_soon_threadsafe`.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

import msgspec

from reops.systems.libvirt.quiet import libvirt

EventKind = Literal["domain", "network", "pool"]


class HypervisorEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One lifecycle event: which object, what happened, why, and when libvirt told us."""

    hypervisor: str
    kind: EventKind
    name: str
    uuid: str
    event: str  # e.g. STARTED, STOPPED, DEFINED
    detail: str  # e.g. BOOTED, SHUTDOWN, DESTROYED
    time: float = msgspec.field(default_factory=time.time)


DOMAIN_EVENTS = (
    "DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED", "SHUTDOWN",
    "PMSUSPENDED", "CRASHED",
)
DOMAIN_DETAILS: dict[str, tuple[str, ...]] = {
    "DEFINED": ("ADDED", "UPDATED", "RENAMED", "FROM_SNAPSHOT"),
    "UNDEFINED": ("REMOVED", "RENAMED"),
    "STARTED": ("BOOTED", "MIGRATED", "RESTORED", "FROM_SNAPSHOT", "WAKEUP"),
    "SUSPENDED": ("PAUSED", "MIGRATED", "IOERROR", "WATCHDOG", "RESTORED", "FROM_SNAPSHOT",
                  "API_ERROR", "POSTCOPY", "POSTCOPY_FAILED"),
    "RESUMED": ("UNPAUSED", "MIGRATED", "FROM_SNAPSHOT", "POSTCOPY", "POSTCOPY_FAILED"),
    "STOPPED": ("SHUTDOWN", "DESTROYED", "CRASHED", "MIGRATED", "SAVED", "FAILED",
                "FROM_SNAPSHOT"),
    "SHUTDOWN": ("FINISHED", "GUEST", "HOST"),
    "PMSUSPENDED": ("MEMORY", "DISK"),
    "CRASHED": ("PANICKED", "CRASHLOADED"),
}
NETWORK_EVENTS = ("DEFINED", "UNDEFINED", "STARTED", "STOPPED")
POOL_EVENTS = ("DEFINED", "UNDEFINED", "STARTED", "STOPPED", "CREATED", "DELETED")


def _name(table: tuple[str, ...], i: int) -> str:
    return table[i] if 0 <= i < len(table) else str(i)


def domain_event_names(event: int, detail: int) -> tuple[str, str]:
    """("STOPPED", "DESTROYED") for libvirt's numeric (event, detail)."""
    name = _name(DOMAIN_EVENTS, event)
    return name, _name(DOMAIN_DETAILS.get(name, ()), detail)


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we raise them as exceptions instead."""


class _EventThread:
    """Starts libvirt's default event loop once, in one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure(self) -> None:
        """Register the default impl and run it; must happen before opening connections."""
        with self._lock:
            if self._thread is not None:
                return
            libvirt.registerErrorHandler(_quiet, None)
            libvirt.virEventRegisterDefaultImpl()
            self._thread = threading.Thread(
                target=self._run, name="libvirt-events", daemon=True
            )
            self._thread.start()

    @staticmethod
    def _run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()


#: the one libvirt event thread of this process (libvirt's event loop is process-global)
EVENT_THREAD = _EventThread()
