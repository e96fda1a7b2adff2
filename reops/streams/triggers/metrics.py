"""Metric thresholds: `threshold(samples, "cpu.busy > 90", for_="2m")` fires once when a
host's samples have met the condition for that long, and once when they stop meeting it.

    load = collect(web, ["cpu"], every=5)                 # or schedule(web, "metrics", …)
    on(threshold(load, "cpu.busy > 90", for_="2m")) | then(exec_, "top -bn1 | head -20")

`samples` is any Stream of Results whose `data` holds the numbers (`collect`'s and
`schedule(…, "metrics")`'s Metrics). The metric is a dotted path into `data`
(`cpu.busy_pct`, `memory.used_pct`, `load.load1`; a trailing `_pct` may be left out, and
`cpu`, `memory`, `load`, `disk` name the usual one), or give a function of the Result.
Per host only its state is kept (since when the condition holds, whether it fired): no
sample history, however long it runs. Failed samples and samples without the metric
change nothing. Time is the sample's arrival on `scheduler` (virtual time in tests),
else the wall clock.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from typing import Any

import reactivex
from reactivex import Observable, abc

from reops.core.durations import seconds
from reops.core.model import Host, Result
from reops.streams.stream import Stream
from reops.streams.triggers._trigger import Trigger, scheduler_now
from reops.streams.triggers.event import Crossing, TriggerEvent

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
#: short names for the usual metric of each kind
ALIASES = {"cpu": "cpu.busy_pct", "memory": "memory.used_pct", "mem": "memory.used_pct",
           "load": "load.load1", "disk": "disk_max_used_pct"}
_MISSING = object()


class _State:
    """One host's place in the threshold: since when it holds, whether it fired."""

    __slots__ = ("firing", "since")

    def __init__(self) -> None:
        self.since: float | None = None
        self.firing = False


def threshold(samples: Stream, condition: str | Callable[[Result], bool], *,
              for_: str | float = 0, scheduler: abc.SchedulerBase | None = None) -> Trigger:
    """Events `crossed` (the condition held for `for_`) and `recovered` (it stopped
    holding after having crossed), per host of `samples`; see the module docstring.
    A condition that does not parse raises ValueError here."""
    hold = seconds(for_, "threshold(for_)")  # >= 0; 0: fire at the first sample that holds
    if isinstance(condition, str):
        label = condition.strip()
        test = _parse(label)
    else:
        label = getattr(condition, "__name__", "condition")
        test = _judged(condition)

    def subscribe(observer: abc.ObserverBase[TriggerEvent],
                  _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        states: dict[str, _State] = {}  # one per host: bounded by the fleet

        def on_next(e: Any) -> None:
            if not isinstance(e, Result) or not e.ok:
                return
            seen = test(e)
            if seen is None:
                return
            holds, value = seen
            now = scheduler_now(scheduler)
            st = states.setdefault(e.host, _State())
            if holds:
                if st.since is None:
                    st.since = now
                if not st.firing and now - st.since >= hold:
                    st.firing = True
                    observer.on_next(_event("crossed", e.host, samples, label, value,
                                            st.since, now))
                return
            if st.firing:
                observer.on_next(_event("recovered", e.host, samples, label, value, now,
                                        now))
            st.since, st.firing = None, False

        source: Observable[Any] = samples.observable
        return source.subscribe(on_next, observer.on_error, observer.on_completed)

    name = f"threshold({label!r}" + (f", for_={for_!r})" if hold else ")")
    return Trigger(reactivex.create(subscribe), name, hosted=True)


def _event(kind: str, name: str, samples: Stream, label: str, value: float | None,
           since: float, now: float) -> TriggerEvent:
    host = samples.hosts.get(name) or Host(name=name, address=name)
    return TriggerEvent(source="metric", kind=kind, key=name, time=now, host=host,
                        payload=Crossing(condition=label, value=value, since=since))


Test = Callable[[Result], tuple[bool, float | None] | None]


def _judged(fn: Callable[[Result], bool]) -> Test:
    """A condition given as a function of the Result: it holds or not, no value."""
    return lambda r: (bool(fn(r)), None)


def _parse(text: str) -> Test:
    m = _CONDITION.match(text)
    if m is None:
        raise ValueError(f"threshold: cannot read condition {text!r}; write METRIC OP NUMBER, "
                         "e.g. \"cpu.busy > 90\" or \"memory.used_pct >= 80\"")
    path, op, limit = ALIASES.get(m[1], m[1]), _COMPARE[m[2]], float(m[3])

    def test(r: Result) -> tuple[bool, float | None] | None:
        v = metric(r.data, path)
        return None if v is None else (op(v, limit), v)

    return test


def metric(data: Any, path: str) -> float | None:
    """The number at dotted `path` in `data` (also tried with `_pct`, and as a column of
    `data.row()`), or None when there is none."""
    for candidate in (path, path + "_pct"):
        v = _walk(data, candidate.split("."))
        if v is _MISSING and hasattr(data, "row"):
            v = data.row().get(candidate.replace(".", "_"), _MISSING)
        if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v):
            return float(v)
    return None


def _walk(obj: Any, parts: list[str]) -> Any:
    for part in parts:
        obj = obj.get(part, _MISSING) if isinstance(obj, dict) else getattr(obj, part, _MISSING)
        if obj is _MISSING or obj is None:
            return _MISSING
    return obj
