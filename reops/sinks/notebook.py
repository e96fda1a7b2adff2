"""A stream in a notebook: one output showing each host's latest Result, updated in place.

    sub = (on(every("2s"), hosts=web) | then(exec_, "cat /proc/loadavg")
           | display_live()).subscribe()      # keeps updating while you run other cells
    sub.dispose()                             # stops it

Why a sink and not `print`: reops's events arrive on the runtime's own thread, and
ipykernel sends a thread's output with the parent header of the cell whose context started
the work, which has long finished — Jupyter files it under that old cell and headless
runners (nbclient, papermill) drop it. `display_live` shows one display (made by the cell
that subscribes) and updates it through its display handle from reops's side (rendered
off the runtime loop, so a slow view never stalls SSH I/O), with the kernel's current
parent header, so the update reaches the notebook between cells and while later cells run.
Updates are throttled (the latest frame wins), so a fast stream never floods the kernel.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping
from typing import Any

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

from reops.core.model import Event, Outcome, Result
from reops.core.runtime import get_runtime
from reops.sinks.follow import follow
from reops.streams.stream import Operator, Stream, derived

#: at most one update of the display per this many seconds (the latest frame wins)
UPDATE_EVERY_S = 0.25

Render = Callable[[Mapping[str, Result]], Any]


def latest_outcome(latest: Mapping[str, Result]) -> Outcome:
    """The default view: each host's latest Result as an Outcome (its HTML table)."""
    return Outcome.of(latest.values())


def _handle(first: Any) -> Any:
    """A display in the calling cell, and its handle (None outside IPython/Jupyter)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    if get_ipython() is None:
        return None
    return display(first, display_id=True)


def display_live(render: Render = latest_outcome, *,
                 every_s: float = UPDATE_EVERY_S) -> Operator:
    """Show `render(latest)` (each host's latest Result; default: as an Outcome table) in
    the cell that subscribes, updated in place as Results arrive, between cells too.

    Outside a notebook it passes events on and shows nothing. `every_s`: the least time
    between two updates (the last state is always shown when the stream ends).
    """

    def make(up: Stream) -> reactivex.Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            rt = get_runtime()
            latest: dict[str, Result] = {}
            lock = threading.Lock()
            state = {"due": False, "closed": False}
            handle = _handle(render({}))

            drawing = threading.Lock()  # one update at a time, so the latest lands last

            def show() -> None:
                with drawing:
                    with lock:
                        state["due"] = False
                        snapshot = dict(latest)
                    if handle is not None:
                        # an empty context: ipykernel then uses its current parent header
                        # (the running cell), not the long-finished cell that started the loop
                        contextvars.Context().run(handle.update, render(snapshot))

            def show_off_loop() -> None:
                """Render and send off the loop thread: a slow view never stalls SSH I/O."""
                rt.loop.run_in_executor(None, show)

            def due() -> None:
                """Schedule one update (on the loop), unless one is already waiting."""
                with lock:
                    if state["due"] or state["closed"]:
                        return
                    state["due"] = True
                rt.call_soon(lambda: rt.loop.call_later(every_s, show_off_loop))

            def close() -> None:
                with lock:
                    if state["closed"]:
                        return
                    state["closed"] = True
                show()

            def keep(r: Result) -> None:
                with lock:
                    latest[r.host] = r
                due()

            sub = follow(up, observer, keep, close)

            def dispose() -> None:
                sub.dispose()
                close()

            return Disposable(dispose)

        return reactivex.create(subscribe)

    return derived(make, "display_live", shared=True)  # one display however many watch
