"""Machines from blocking code (REPL, notebooks, flows): live Observables on the runtime.

    from reops.systems.live import hypervisor_events, systems
    sub = hypervisor_events("lab").subscribe(print)   # events as they happen
    systems("typed:redis & running")                 # a list of System

Through `reops hub` when one runs (events keep flowing whatever started the machines),
else in this process on the runtime loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import reactivex as rx
from reactivex.abc import ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

from reops.core.runtime import get_runtime
from reops.store.model import System
from reops.systems.api import connect
from reops.systems.libvirt.events import HypervisorEvent


def hypervisor_events(*names: str, on_ready: Callable[[], None] | None = None,
                      ) -> rx.Observable[HypervisorEvent]:
    """Lifecycle events (domain, network, pool) of the named hypervisors (default: all).

    Cold: each subscription opens its own watch (`on_ready` is called once it listens);
    disposing it stops the watch. Events are delivered on the runtime's thread.
    """
    def on_subscribe(observer: ObserverBase[HypervisorEvent],
                     scheduler: SchedulerBase | None = None) -> Disposable:
        async def watch() -> None:
            api = await connect(queue=False)
            try:
                await api.watch(names, observer.on_next, on_ready)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # unreachable hypervisor, hub gone: end the stream
                observer.on_error(e)
            finally:
                await api.aclose()

        running = get_runtime().submit(watch())

        def stop() -> None:
            running.cancel()

        return Disposable(stop)

    return rx.create(on_subscribe)


def systems(selector: str = "all") -> list[System]:
    """The recorded systems matching `selector` (from the hub when it runs)."""
    async def read() -> list[System]:
        api = await connect(queue=False)
        try:
            return await api.systems(selector)
        finally:
            await api.aclose()

    result: list[System] = get_runtime().call(read())
    return result

