"""`then`: the next step per host, as soon as that host's previous step succeeded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import reactivex
from reactivex import Observable
from reactivex import operators as ops

from reops.core.model import Event, Hosts, Result
from reops.streams.source import as_step
from reops.streams.stream import Operator, Stream, derived


def then(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Operator:
    """Run the next step on each host as soon as that host's previous step succeeded.

    Never lock-step: a host does not wait for the slowest one. Hosts that failed keep
    their failure Result (it flows on unchanged). A next step's Result carries the earlier
    ones (`Result.earlier`), so `run(...)` keeps every step. Marbles (step2 takes 3 ticks;
    `x`, `z` are hosts a's and c's step2 Results)::

        --a-B---c|
        [ then(step2) ]
        ----Bx-----z|
    """
    make = as_step(fn)

    def make_events(up: Stream) -> Observable[Event]:
        def next_for(e: Event) -> Observable[Event]:
            # Lines, and events of endless sources that are not Results (agent or hypervisor
            # events), flow on untouched: only a host's successful Result has a next step
            if not isinstance(e, Result) or not e.ok:
                return reactivex.just(e)
            host = up.hosts.get(e.host)
            if host is None:
                return reactivex.just(e)
            # the next step's Results carry this one (Result.earlier): the Outcome keeps
            # every step, while operators downstream still see one Result per host
            return make(Hosts([host]), *args, **kwargs).observable.pipe(
                ops.map(lambda x: x.after(e) if isinstance(x, Result) else x))

        return up.observable.pipe(ops.flat_map(next_for))

    return derived(make_events, f"then({getattr(fn, '__name__', fn)})", shared=True)
