"""Stream.derive and endless streams: one way to derive, and no history kept per event.

These run on synthetic in-process sources (no hosts needed): what is under test is the
sharing layer and the derive recipe, not a transport.
"""

from __future__ import annotations

import reactivex
from reactivex import Observable
from reactivex import operators as ops

from reops.core.model import Event, Host, Hosts, Result
from reops.streams.stream import Stream, derived


def _hosts(*names: str) -> Hosts:
    return Hosts(Host(name=n, address="127.0.0.1") for n in names)


def _ok(host: str, op: str = "x") -> Result:
    return Result(host=host, op=op, status="ok", code=0)


def _static(hs: Hosts, *, replay: bool = True) -> Stream:
    """A finite source: one ok Result per host, rebuildable for fewer hosts."""
    return Stream(reactivex.from_iterable([_ok(h.name) for h in hs]), hs,
                  lambda sub: _static(sub, replay=replay), replay=replay)


def test_derive_keeps_hosts_and_rebuilds_through_make() -> None:
    hs = _hosts("a", "b", "c")
    calls: list[Hosts] = []

    def only_b(up: Stream) -> Observable[Event]:
        calls.append(up.hosts)
        return up.observable.pipe(ops.filter(lambda e: isinstance(e, Result)
                                             and e.host != "a"))

    up = _static(hs)
    down = up.derive(only_b, shared=False)
    assert down.hosts == hs
    assert [e.host for e in run_events(down)] == ["b", "c"]
    again = down.rebuild(_hosts("a", "b"))  # the recipe re-applies make to the rebuilt source
    assert again.hosts == _hosts("a", "b")
    assert [e.host for e in run_events(again)] == ["b"]
    assert calls == [hs, _hosts("a", "b")]


def test_derived_operator_and_plain_rx_operator_keep_endlessness() -> None:
    endless = _static(_hosts("a"), replay=False)
    keep = derived(lambda up: up.observable, "keep", shared=False)
    assert (endless | keep).endless
    assert (endless | ops.map(lambda e: e)).endless
    assert not (_static(_hosts("a")) | keep).endless
    assert (endless | keep).rebuild(_hosts("a")).endless


def run_events(s: Stream) -> list[Result]:
    got: list[Result] = []
    s.observable.subscribe(lambda e: got.append(e) if isinstance(e, Result) else None)
    return got
