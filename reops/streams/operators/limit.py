"""`limit`: at most n items (per key, or in all) in flight through the steps it wraps."""

from __future__ import annotations

from typing import Any

from reactivex import Observable, abc

from reops.core.durations import positive
from reops.core.model import Event
from reops.streams.operators._keyed import Keyed, keyed_observable
from reops.streams.operators._keys import Key, key_of
from reops.streams.operators._through import Drained, Overflowed, Steps, Through, chain_of
from reops.streams.stream import Operator, Stream, derived

__all__ = ["MAX_QUEUE", "Drained", "Overflowed", "limit"]

#: how many items may wait per key (or in all) by default: a burst of a whole fleet's
#: events waits; an endless storm behind a slow step does not grow without bound
MAX_QUEUE = 1000


def limit(concurrency: int, *steps: Steps, key: Key | None = None,
          max_queue: int = MAX_QUEUE, ignore_own: bool | float | str = False,
          scheduler: abc.SchedulerBase | None = None) -> Operator:
    """Run `steps` with at most `concurrency` items in flight, per key (`key=`) or in all.

    `steps` are what the limit holds: a plain step (`limit(2, restart)` is
    `limit(2, then(restart))`) or operators applied in turn (`limit(1, then(a), then(b))`
    holds the slot from a's start to b's end). It wraps them because an operator cannot
    see when the rest of a pipeline is done with an item: the wrapped steps give each
    slot a clear end. Items over the limit wait in arrival order, at most `max_queue`
    per key (default 1000; 0: none wait). When a key's queue is full, its OLDEST waiting
    item is dropped to make room for the new one: said once with an `Overflowed` notice
    (`event.flow.overflowed`), and when that queue has emptied, one `Drained` with the
    number `dropped` — the way `squelch` reports its storms (put `squelch` in front of an
    endless trigger so the wait stays short). `ignore_own=True` (or a grace period,
    "30s") also drops items whose key is being acted on, as `ignoring` does. Marbles
    (the step takes 3 ticks; `A` is a's step Result)::

        abc------|
        [ limit(2, step) ]
        ---AB-C--|        (c waits for a's slot: it runs from 3 to 6)

    A full queue (the step takes 5 ticks; `O` Overflowed, `D` Drained with dropped=2: the
    a of 3 pushes out the a of 1, the a of 4 the a of 2; the a of 3 and 4 run)::

        aaaaa-----------|
        [ limit(1, step, max_queue=2) ]
        ---O-A----(AD)----A|
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"limit(concurrency): a whole number >= 1, not {concurrency!r}")
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
        raise ValueError(f"limit(max_queue): a whole number >= 0, not {max_queue!r}")
    chain = chain_of(steps, "limit")
    key_fn = key_of(key, "limit") if key is not None else None
    grace = 0.0
    if not isinstance(ignore_own, bool):
        grace = positive(ignore_own, "limit(ignore_own)")

    name = f"limit({concurrency})"

    def make(up: Stream) -> Observable[Event]:
        def machine(observer: abc.ObserverBase[Any]) -> Keyed:
            return Through(observer, scheduler, up, chain, key_fn, capacity=concurrency,
                           max_queue=max_queue, name=name,
                           ignore=ignore_own is not False, grace=grace)

        return keyed_observable(up.observable, machine)

    return derived(make, name, shared=True)
