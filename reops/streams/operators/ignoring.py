"""`ignoring`: drop the events our own action causes (Salt's `disable_during_state_run`)."""

from __future__ import annotations

from typing import Any

from reactivex import Observable, abc

from reops.core.durations import seconds
from reops.core.model import Event
from reops.streams.operators._keyed import Keyed, keyed_observable
from reops.streams.operators._keys import Key, key_of
from reops.streams.operators._through import Steps, Through, chain_of
from reops.streams.stream import Operator, Stream, derived


def ignoring(own: Steps, *more: Steps, grace: float | str = 0, key: Key = "key",
             scheduler: abc.SchedulerBase | None = None) -> Operator:
    """Run `own` (a step, or operators) per item; drop items whose key it is acting on.

    The rule: while a key's action runs, and for `grace` after it ended (seconds or "30s"),
    new items of that key are dropped: they are the echo of our own action (restarting a
    service fires "service down"; provisioning a VM fires its lifecycle events). Items of
    other keys run at once. Nothing else is guessed: an event of the same key from an
    unrelated cause in that span is dropped too, so keep `grace` short. Marbles (key a;
    the step takes 3 ticks, grace 2; `A` the step's Result)::

        a-a-a--a-|
        [ ignoring(step, grace=2) ]
        ---A------(A|)    (a at 2: in flight; a at 4: in grace until 5; a at 7 runs)
    """
    chain = chain_of((own, *more), "ignoring")
    key_fn = key_of(key, "ignoring")
    span = seconds(grace, "ignoring(grace)")  # 0: only while the action runs

    def make(up: Stream) -> Observable[Event]:
        def machine(observer: abc.ObserverBase[Any]) -> Keyed:
            return Through(observer, scheduler, up, chain, key_fn, ignore=True, grace=span)

        return keyed_observable(up.observable, machine)

    return derived(make, f"ignoring({getattr(own, 'name', own)!r})", shared=True)
