"""`on(trigger)`: trigger events become Results for the hosts they concern, so the usual
steps chain on them unchanged.

    on(vm_started("typed:redis")) | then(exec_, "uptime")        # on the VM's address
    on(every("30s"), hosts=inv.select("group:web")) | then(exec_, "uptime")

Each event that concerns a host becomes one Result for that host: status ok, op
`event.<source>.<kind>`, `data` the TriggerEvent. The Stream's `hosts` learns each host as
its first event arrives (before the Result flows), which is where `then` finds the address
to run the next step on. `hosts=` does two things: events that name no host (clock, cron,
files) fire once for every host in it, and a host it names (an inventory entry, with its
user, key and jump hosts) stands in for the bare Host an event carries by the same name.

Messages from the bus are events too: a trigger event another process published is that
event again, any other message an event of source `bus` (kind: the topic's first word), a
Result's or Line's message concerning its host, by name.

An event about a host with no address yet (a VM that has not got an IP) becomes an
`unreachable` Result (code -1, err saying so): `then` passes it on without running
anything, and `run`/the terminal show why. Memory: the known hosts and each one's last
event (what `retry` re-runs from), both bounded by the fleet, never per event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, cast

import msgspec
import reactivex
from reactivex import Observable, abc

from reops.core.model import UNREACHED, Event, Host, Hosts, Result
from reops.streams.stream import Stage, Stream, staged
from reops.streams.triggers._trigger import Trigger
from reops.streams.triggers.event import BusMessage, TriggerEvent

#: sources whose events name no host: they fire for every host of `on(..., hosts=)`
HOSTLESS = ("clock", "cron", "file", "bus")


class LearnedHosts(Hosts):
    """Hosts that grow as events name them (a newer address replaces an older one)."""

    __slots__ = ()

    def learn(self, host: Host) -> None:
        self._by_name[host.name] = host


def on(trigger: Stream | Observable[Any], *,
       hosts: Hosts | Iterable[Host] | None = None) -> Stream:
    """Trigger events as Results per host, for `| then(step)`; see the module docstring.

    `trigger`: a trigger (`vm_started(...)`, `every(...)`, …) or any Stream/Observable of
    TriggerEvents (other items flow on untouched). A trigger whose events name no host
    needs `hosts=` (ValueError otherwise: nothing would run).
    """
    targets = hosts if isinstance(hosts, Hosts) else Hosts(hosts or ())
    if isinstance(trigger, Trigger) and not trigger.hosted and not len(targets):
        raise ValueError(f"on({trigger.name}): its events name no host; say where each "
                         "one runs with on(..., hosts=inventory.select(...))")
    known = LearnedHosts(targets)
    last: dict[str, Result] = {}
    source = cast("Observable[Any]",
                  trigger.observable if isinstance(trigger, Stream) else trigger)

    def subscribe(observer: abc.ObserverBase[Event],
                  scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        def on_next(item: Any) -> None:
            e = item if isinstance(item, TriggerEvent) else from_bus(item)
            if e is None:
                observer.on_next(item)  # not an event (a Line, a Result): flows on untouched
                return
            for r in _results(e, targets, known):
                last[r.host] = r
                observer.on_next(r)

        return source.subscribe(on_next, observer.on_error, observer.on_completed,
                                scheduler=scheduler)

    def rebuild(subset: Hosts) -> Stream:
        """For `retry`: the last event of each of these hosts, again (finite)."""
        again = [last[n] for n in subset.names if n in last]
        return Stream(cast("Observable[Event]", reactivex.from_iterable(again)), subset)

    # a stage ("on", the hosts it names): a reload that keeps the trigger and these hosts
    # keeps this very stream (its learned hosts and last events) too
    return staged(Stream(reactivex.create(subscribe), known, rebuild, replay=False), trigger,
                  Stage("on", targets))


def _results(e: TriggerEvent, targets: Hosts, known: LearnedHosts) -> list[Result]:
    """The Results for one event, learning their hosts first (so `then` finds them)."""
    name = e.host.name if e.host is not None else e.key
    host = targets.get(name) or e.host
    if host is None and e.source in HOSTLESS:
        for h in targets:
            known.learn(h)
        return [_ok(h.name, e) for h in targets]
    if host is None:
        return [Result(host=name, op=e.topic, status="unreachable", code=UNREACHED,
                       err=f"{e.source} event {e.kind} for {name}, which has no address "
                           "yet: nothing can run on it", started_at=e.time,
                       transport=e.transport, data=e)]
    known.learn(host)
    return [_ok(host.name, e)]


def from_bus(item: Any) -> TriggerEvent | None:
    """A bus message (`bus(...)` items: `topic`, `body`) as a trigger event, else None.

    A trigger event another process published (`event.libvirt.started`) is that event
    again. Any other message is an event of source `bus`, its kind the topic's first word
    (result, line, event, flow); a Result or Line message concerns its host, known here
    only by name (so `hosts=` gives its address, else the name is the address, as for an
    inventory host without one)."""
    topic, body = getattr(item, "topic", None), getattr(item, "body", None)
    if not isinstance(topic, str) or body is None:
        return None
    data = getattr(body, "data", None)
    if isinstance(data, dict) and "source" in data and "key" in data:
        try:  # a trigger event another process published: the same event again
            return msgspec.convert(data, TriggerEvent)
        except msgspec.ValidationError:
            pass
    name = getattr(body, "host", None)
    host = Host(name=name, address=name) if isinstance(name, str) and name else None
    key = name or getattr(body, "flow", None) or topic
    at = getattr(body, "at", 0.0)
    return TriggerEvent(source="bus", kind=topic.split(".", 1)[0], key=str(key),
                        time=at if isinstance(at, float) and at else time.time(), host=host,
                        payload=BusMessage(topic=topic, body=body))


def _ok(name: str, e: TriggerEvent) -> Result:
    return Result(host=name, op=e.topic, status="ok", code=0, started_at=e.time,
                  transport=e.transport, data=e)
