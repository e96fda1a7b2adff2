"""What the live sinks share: pass a stream's events on, each Result also to the sink.

`display_live` (notebook) and `live` (terminal) each keep every host's latest Result and
draw it their own way; the subscription around that is this one.
"""

from __future__ import annotations

from collections.abc import Callable

from reactivex import abc

from reops.core.model import Event, Result
from reops.streams.stream import Stream


def follow(up: Stream, observer: abc.ObserverBase[Event], on_result: Callable[[Result], None],
           close: Callable[[], None]) -> abc.DisposableBase:
    """Subscribe to `up`: every event goes on to `observer` (each Result to `on_result`
    first); when `up` ends, completed or failed, `close()` runs before the observer hears."""

    def on_next(e: Event) -> None:
        if isinstance(e, Result):
            on_result(e)
        observer.on_next(e)

    def on_completed() -> None:
        close()
        observer.on_completed()

    def on_error(exc: Exception) -> None:
        close()
        observer.on_error(exc)

    return up.observable.subscribe(on_next, on_error, on_completed)
