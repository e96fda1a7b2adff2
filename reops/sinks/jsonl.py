"""JSON Lines: one Result per line, written as each host finishes (for tail -f and jq).

Every step of a host is a line with its `step` index (a `then` pipeline writes a host's
earlier steps when its last one arrives), and `run_id` when the run's identity is given."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

import msgspec
import reactivex
from reactivex import Observable, abc

from reops.core.model import Event, Result, RunInfo, flat_result
from reops.streams.stream import Operator, Stream, derived

_encoder = msgspec.json.Encoder()


def jsonl(target: str | Path | IO[str] | None = None, *, lines: bool = False,
          run: RunInfo | None = None) -> Operator:
    """Append each Result (and Line, if `lines`) as JSON to a file or stdout; pass events on.

    A Result is written as one line per step (its fields, `step`, and `run_id` from `run`)."""
    extra = {"run_id": run.run_id} if run is not None else {}

    def make(up: Stream) -> Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            owned = isinstance(target, (str, Path))
            f: IO[str] = (open(Path(target).expanduser(), "a")  # noqa: SIM115
                          if isinstance(target, (str, Path)) else (target or sys.stdout))

            def close() -> None:
                if owned and not f.closed:
                    f.close()
                elif not f.closed:
                    f.flush()

            def on_next(e: Event) -> None:
                if isinstance(e, Result):
                    for i, s in enumerate(e.steps):
                        f.write(_encoder.encode({**flat_result(s, i), **extra}).decode() + "\n")
                    f.flush()  # a Result is visible to `tail -f` as soon as it is known
                elif lines:  # Lines go out with the OS buffer: a flush each costs a syscall
                    f.write(_encoder.encode(e).decode() + "\n")
                observer.on_next(e)

            def on_error(exc: Exception) -> None:
                close()
                observer.on_error(exc)

            def on_completed() -> None:
                close()
                observer.on_completed()

            return up.observable.subscribe(on_next, on_error, on_completed)

        return reactivex.create(subscribe)

    return derived(make, "jsonl", shared=True)  # shared: the file is written once
