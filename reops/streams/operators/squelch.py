"""`squelch`: storm protection. Above a rate, drop items and say so once; resume by itself."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any

from reactivex import abc

from reops.core.durations import rate as parse_rate
from reops.streams.operators._keyed import Keyed, Notice, keyed_operator
from reops.streams.stream import Operator

#: the default storm limit of a trigger (flows put `squelch()` in front of their steps)
RATE = "100/10s"


class Squelched(Notice, frozen=True, kw_only=True):
    """The stream went over `rate` at `since`: items are dropped until it falls back.

    `count` is how many items came within one period when it tripped (the rate's count + 1).
    On the bus it is `event.flow.squelched` (its `source` and `kind`)."""

    rate: str
    count: int
    since: float
    time: float
    source: str = "flow"
    kind: str = "squelched"
    key: str = "squelch"


class Resumed(Notice, frozen=True, kw_only=True):
    """The rate fell back: items pass again; `dropped` were lost from `since` to `time`.

    On the bus it is `event.flow.resumed`."""

    rate: str
    dropped: int
    since: float
    time: float
    source: str = "flow"
    kind: str = "resumed"
    key: str = "squelch"


def squelch(rate: str | tuple[int, float | str] = RATE, *,
            scheduler: abc.SchedulerBase | None = None) -> Operator:
    """Pass items while at most `count` came within `period` ("100/10s"); above it, drop them.

    The item that goes over the rate is replaced by ONE `Squelched`; every item after it is
    dropped (and counted) while squelched. At each period's end the operator looks at how
    many items came in that period: at most `count`, and it emits ONE `Resumed` (with the
    number dropped) and lets items through again; more, and it stays squelched for another
    period. It holds at most `count` arrival times, whatever the storm. Completing while
    squelched emits the `Resumed` at once, so the dropped count is never lost. Lines pass
    untouched.
    Marbles (rate 2 per 4 ticks; `S` Squelched, `R` Resumed with dropped=3)::

        xxxxx-------x|
        [ squelch("2/4s") ]
        xxS-------R-x|         (checks at 6 (3 came: stay) and 10 (none came: resume))
    """
    count, period = parse_rate(rate, "squelch(rate)")
    text = rate if isinstance(rate, str) else f"{count}/{period:g}s"

    def machine(observer: abc.ObserverBase[Any]) -> Keyed:
        return _Squelch(observer, scheduler, count, period, text)

    return keyed_operator(f"squelch({text!r})", machine)


class _Squelch(Keyed):
    def __init__(self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None,
                 count: int, period: float, text: str) -> None:
        super().__init__(observer, scheduler)
        self.count = count
        self.period = period
        self.text = text
        self.passed: deque[float] = deque(maxlen=count)  # the last `count` items let through
        self.since: float | None = None  # squelched since (None: items pass)
        self.dropped = 0
        self.in_period = 0  # items that came in the current period while squelched

    def on_item(self, item: Any) -> None:
        t = self.now()
        if self.since is not None:
            self.dropped += 1
            self.in_period += 1
            return
        if len(self.passed) == self.count and t - self.passed[0] < self.period:
            self.since = t
            self.dropped = self.in_period = 1
            self.passed.clear()
            self.arm(None, self.period)
            self.observer.on_next(Squelched(rate=self.text, count=self.count + 1, since=t,
                                            time=t))
            return
        self.passed.append(t)
        self.observer.on_next(item)

    def expire(self, key: Hashable) -> None:
        """A period ended while squelched: resume, or stay squelched for another one."""
        self._check()

    def _check(self) -> None:
        if self.in_period > self.count:
            self.in_period = 0
            self.arm(None, self.period)
            return
        t = self.now()
        since = self.since if self.since is not None else t
        resumed = Resumed(rate=self.text, dropped=self.dropped, since=since, time=t)
        self.since = None
        self.dropped = self.in_period = 0
        self.observer.on_next(resumed)

    def flush(self) -> None:
        """Completion while squelched still reports what was dropped."""
        if self.since is not None:
            self.in_period = 0
            self.disarm(None)
            self._check()

    def forget(self) -> None:
        self.passed.clear()
