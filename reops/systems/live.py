"""Machines from blocking code (REPL, notebooks, flows): live endless Streams on the runtime.

    from reops.systems.live import hypervisor_events, systems
    sub = hypervisor_events("lab").subscribe(print)   # events as they happen
    systems("typed:redis & running")                 # a list of System

Through `reops hub` when one runs (events keep flowing whatever started the machines),
else in this process on the runtime loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from reops.core.model import Event, Hosts
from reops.core.runtime import get_runtime
from reops.store.model import System
from reops.streams.stream import Stream, from_async
from reops.systems.api import connect
from reops.systems.display import Systems
from reops.systems.libvirt.events import HypervisorEvent

if TYPE_CHECKING:
    import reactivex as rx


def hypervisor_events(*names: str, on_ready: Callable[[], None] | None = None,
                      ) -> Stream:
    """Lifecycle events (domain, network, pool) of the named hypervisors (default: all).

    An endless Stream over no hosts (no history kept; its items are HypervisorEvents, not
    Results: filter them with `where`). Each subscription opens its own watch (`on_ready`
    is called once it listens); disposing it stops the watch. Events are delivered on the
    runtime's thread.
    """
    async def watch(emit: Callable[[HypervisorEvent], None]) -> None:
        api = await connect(queue=False)  # unreachable hypervisor, hub gone: the error ends it
        try:
            await api.watch(names, emit, on_ready)
        finally:
            await api.aclose()

    events = cast("rx.Observable[Event]", from_async(watch))  # typed payloads, not Results
    return Stream(events, Hosts(), lambda hs: hypervisor_events(*names, on_ready=on_ready),
                  replay=False)


def systems(selector: str = "all") -> Systems:
    """The recorded systems matching `selector` (from the hub when it runs): a list that
    shows as a table in the REPL and in notebooks."""
    async def read() -> list[System]:
        api = await connect(queue=False)
        try:
            return await api.systems(selector)
        finally:
            await api.aclose()

    return Systems(get_runtime().call(read()))

