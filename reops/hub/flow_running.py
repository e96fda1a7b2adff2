"""One running version of a flow: its subscription, gate, firings and what it kept.

Why apart: what a version of a flow IS (and how its Results group into firings, how its
version and errors are named) is plain data the runner (reops.hub.flows) drives; it holds
no store, loop or cluster, so it is read and tested alone.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reactivex import abc

from reops.core.model import Result, RunInfo
from reops.hub.flow_gates import Gate
from reops.hub.flow_sources import Build
from reops.store.flows import FlowRecord

#: trigger events whose firing number is remembered (to group their hosts' Results)
OPEN_FIRINGS = 1024


def _trigger_of(root: Result) -> str:
    key = getattr(root.data, "key", None)
    if key is None and isinstance(root.data, dict):
        key = root.data.get("key")
    return f"{root.op} {key}" if key not in (None, "") else root.op


class Firings:
    """Groups a flow's Results into firings. A Result whose first step is a trigger event
    (op `event.…`, what `on(trigger)` makes) belongs to that event's firing; without one, a
    firing is a run of the same first step over distinct hosts (a host seen again starts
    the next firing). Bounded: the last OPEN_FIRINGS events, one entry per first-step op."""

    def __init__(self, fired: int = 0) -> None:
        self.fired = fired
        self.counts: collections.Counter[str] = collections.Counter()
        self.current = 0  # the firing `counts` is about (for "last outcome")
        self._events: collections.OrderedDict[tuple[str, float], int] = (
            collections.OrderedDict())
        self._steps: dict[str, tuple[int, set[str]]] = {}

    def new(self) -> int:
        self.fired += 1
        return self.fired

    def of(self, r: Result) -> tuple[int, str]:
        root = r.earlier[0] if r.earlier else r
        if root.op.startswith("event."):
            key = (root.op, root.started_at)
            n = self._events.get(key)
            if n is None:
                n = self._events[key] = self.new()
                while len(self._events) > OPEN_FIRINGS:
                    self._events.popitem(last=False)
            return n, _trigger_of(root)
        n, hosts = self._steps.get(root.op, (0, set()))
        if not n or r.host in hosts:
            n, hosts = self.new(), set()
            if len(self._steps) >= OPEN_FIRINGS:
                self._steps.clear()
            self._steps[root.op] = (n, hosts)
        hosts.add(r.host)
        return n, root.op


# ── one running flow ───────────────────────────────────────────────────────────────


def version_of(path: Path) -> str:
    """The flow version: the first 12 hex of the file's sha256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def where(e: BaseException, file: str) -> str:
    """`file:line: Type: message` for an error raised in the flow's code (the innermost
    frame in `file`), else at the innermost frame."""
    frames = traceback.extract_tb(e.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == Path(file)]
    chosen = mine or list(frames)
    loc = f"{chosen[-1].filename}:{chosen[-1].lineno}: " if chosen else f"{file}: "
    text = str(e).strip().splitlines()
    return f"{loc}{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


class Running:
    """A subscribed version of a flow, its gate and its firing counter."""

    def __init__(self, rec: FlowRecord, gate: Gate, firings: Firings | None = None) -> None:
        self.rec = rec
        self.gate = gate
        self.firings = firings or Firings(rec.fired)  # shared across reloads
        self.sub: abc.DisposableBase | None = None
        self.watch: asyncio.Task[None] | None = None
        self.version = rec.version
        self.retired = False  # replaced by a reload, or stopped: its end is not the flow's
        self.ended = ""  # why its stream ended ("" while it runs)
        self.live = False  # until the swap is recorded, what it emits waits in `held`
        self.held: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.gen = 0  # which version of the flow (its live sources deliver to one)
        self.build: Build | None = None  # the live sources it reads, what it kept
        self.kept: list[str] = []  # of the version before it: the stages kept …
        self.swapped: list[str] = []  # … and those built anew
        #: this version's run in `reops history` (one run per started or reloaded version)
        self.history = RunInfo(command=f"reops flows start {rec.file} {' '.join(rec.args)}"
                               .strip(), pipeline=rec.func)

    def go_live(self) -> None:
        """Deliver what it emitted while it was being swapped in, then deliver at once."""
        self.live = True
        held, self.held = self.held, []
        for fn, args in held:
            fn(*args)

    def dispose(self) -> None:
        self.retired = True
        sub, self.sub = self.sub, None
        if sub is not None:
            sub.dispose()


def kept_swapped(kept: list[str], swapped: list[str]) -> str:
    """What a reload kept and swapped, as `flows ls`, the audit and the CLI say it."""
    parts = []
    if kept:
        parts.append("kept " + "; ".join(kept))
    parts.append(("swapped " + "; ".join(swapped)) if swapped else "swapped nothing")
    return "; ".join(parts)


def _built(result: Any) -> Any:
    """The Observable a flow returned (a Stream's events); TypeError for anything else."""
    obs = getattr(result, "observable", None)
    if obs is not None and callable(getattr(obs, "subscribe", None)):
        return obs
    if callable(getattr(result, "subscribe", None)):
        return result
    raise TypeError(f"a flow run by the hub returns a Stream or an Observable, got "
                    f"{type(result).__name__}; run one-shot flows with `reops run`")

