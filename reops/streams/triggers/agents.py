"""Agent triggers: an agent registered, was lost (missed heartbeats) or came back.

    on(agent_lost("web*"), hosts=inv) | then(service.restart, "reops-agent")   # over SSH
    on(agent_registered()) | then(call, "facts")

Built on the hub's registry events (`reops.streams.agents.agent_events`). The key is the
agent's name and the Host is the agent as `agents()` lists it (its address as the hub saw
it, else its name); with `on(..., hosts=inv)` the inventory's entry of that name is used
instead (its user, key, jump hosts). Needs a running hub, like every agent feature.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import reactivex
from reactivex import Observable, abc

from reops.control.wire import Event as WireEvent
from reops.core.model import Host
from reops.streams.agents import agent_events
from reops.streams.triggers._trigger import Trigger
from reops.streams.triggers.event import AgentChange, TriggerEvent

#: what the hub's registry publishes on topic `agents`
KINDS = ("registered", "lost", "back", "disconnected", "dropped", "impostor", "clone")


def agent_changes(kinds: Iterable[str] = ("registered", "lost", "back"), names: str = "*",
                  *, hub: Path | None = None,
                  on_ready: Callable[[], None] | None = None) -> Trigger:
    """Registry events of agents whose name matches the glob `names`, of these `kinds`
    (registered, lost, back, disconnected, dropped, impostor, clone); `on_ready` once the
    hub streams them to this subscription."""
    wanted = tuple(kinds)
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"agent_changes(kinds=…): {unknown} are not agent events; choose "
                         f"from {', '.join(KINDS)}")

    def subscribe(observer: abc.ObserverBase[TriggerEvent],
                  scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        addresses: dict[str, str] = {}  # one per agent seen: bounded by the fleet

        def on_next(item: Any) -> None:
            if not isinstance(item, WireEvent):
                return
            if item.topic == "subscribed":
                if on_ready is not None:
                    on_ready()
                return
            event = _event(item.data, addresses)
            if event is not None and event.kind in wanted and fnmatch.fnmatchcase(
                    event.key, names):
                observer.on_next(event)

        events: Observable[Any] = agent_events(hub, ("agents",)).observable
        return events.subscribe(on_next, observer.on_error, observer.on_completed,
                                scheduler=scheduler)

    label = names if set(wanted) == {"registered", "lost", "back"} else (
        f"{names}, {'/'.join(wanted)}")
    return Trigger(reactivex.create(subscribe), f"agent_changes({label!r})", hosted=True)


def _event(data: Any, addresses: dict[str, str]) -> TriggerEvent | None:
    if not isinstance(data, dict) or not isinstance(data.get("agent"), str):
        return None
    name, kind = data["agent"], str(data.get("event", ""))
    if data.get("address"):
        addresses[name] = str(data["address"])
    address = addresses.get(name, "")
    host = Host(name=name, address=address or name)
    return TriggerEvent(source="agent", kind=kind, key=name, time=time.time(), host=host,
                        payload=AgentChange(agent=name, address=address,
                                            reason=str(data.get("reason", ""))))


def agent_registered(names: str = "*", *, hub: Path | None = None,
                     on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when an agent process registers with the hub (new, restarted, redeployed)."""
    return agent_changes(("registered",), names, hub=hub, on_ready=on_ready)


def agent_lost(names: str = "*", *, hub: Path | None = None,
               on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when the hub marks an agent lost (no heartbeat within its window)."""
    return agent_changes(("lost",), names, hub=hub, on_ready=on_ready)


def agent_back(names: str = "*", *, hub: Path | None = None,
               on_ready: Callable[[], None] | None = None) -> Trigger:
    """Fires when a lost agent is heard from again."""
    return agent_changes(("back",), names, hub=hub, on_ready=on_ready)
