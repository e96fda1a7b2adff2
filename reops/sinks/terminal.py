"""The terminal sink: ✔/✘ per host as each finishes, live output lines, a summary.

The one terminal sink of every command (`reops exec`, `reops facts`, …) and of `| pretty()`:
how an op's Result reads (a line, a table after the run) is its view in `sinks/views.py`.

Output goes to stdout; the progress bar goes to stderr and only on a TTY, so pipes and
`--output json` stay clean. What a run looks like is `sinks/printer.py`'s `Printer`; this
module feeds it from a stream, printing off the loop thread.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

from reops.core.model import Event, Line, Result
from reops.core.runtime import SHUTDOWN_GRACE_S, get_runtime
from reops.sinks.follow import follow  # as display_live (sinks/notebook.py)
from reops.sinks.gather import DEFAULT_LINES
from reops.sinks.printer import (  # the printing itself (re-exported: its public names)
    DRY,
    MORE,
    PROGRESS_AFTER_S,
    SUMMARY_NAMES,
    Printer,
    describe_failure,
    progress_bars,
)
from reops.sinks.views import display
from reops.streams.stream import Operator, Stream, derived

#: live output lines waiting for a slow terminal before the next ones are counted, not shown
LINE_BUFFER = 10_000


def _loop_later(delay: float, fn: Callable[[], None]) -> Callable[[], None]:
    """`Later` on the runtime's event loop (no timer thread per run)."""
    rt = get_runtime()
    handle: list[Any] = []
    rt.call_soon(lambda: handle.append(rt.loop.call_later(delay, fn)))
    return lambda: rt.call_soon(lambda: [h.cancel() for h in handle])


class _Writer:
    """Prints on its own thread, so a slow terminal never stalls the loop's SSH I/O.

    Results (and the summary) always get printed; live output lines wait in a bounded
    buffer and go out in batches, and when the terminal cannot keep up the lines that do
    not fit are counted and shown as one "… N lines not shown (slow terminal)" row in
    their place.
    """

    def __init__(self, max_lines: int, write_lines: Callable[[list[Line]], None],
                 not_shown: Callable[[int], None]) -> None:
        self._max_lines = max_lines
        self._write_lines = write_lines
        self._not_shown = not_shown
        self._items: collections.deque[Line | Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()
        self._lines = 0  # lines waiting in _items
        self._dropped = 0
        self._closed = False
        self.error: BaseException | None = None
        #: how a failed write (a closed pipe) reaches the stream; set by the sink
        self.on_error: Callable[[BaseException], None] = lambda e: None
        self._thread = threading.Thread(target=self._main, name="reops-terminal", daemon=True)
        self._thread.start()

    def _put(self, item: Line | Callable[[], None]) -> None:
        is_line = isinstance(item, Line)
        with self._cond:
            if self._closed:
                return
            if is_line and self._lines >= self._max_lines:
                self._dropped += 1
                return
            if self._dropped:
                n, self._dropped = self._dropped, 0
                self._items.append(lambda: self._not_shown(n))
            self._items.append(item)
            self._lines += is_line
            self._cond.notify()

    def line(self, e: Line) -> None:
        """Print a live output line, or count it as not shown when the buffer is full."""
        self._put(e)

    def must(self, item: Callable[[], None]) -> None:
        """Print this whatever the terminal's speed (Results, summary)."""
        self._put(item)

    def close(self, last: Callable[[], None],
              done: Callable[[BaseException | None], None]) -> None:
        """Print `last` after everything queued, then call `done(error or None)` (from the
        writer thread) and end it."""
        def finish() -> None:
            try:
                if self.error is None:
                    last()
            except BaseException as e:
                self.error = self.error or e
            done(self.error)

        self.must(finish)
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _main(self) -> None:
        while True:
            batch: list[Line] = []
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                while self._items and isinstance(self._items[0], Line):
                    batch.append(self._items.popleft())  # type: ignore[arg-type]
                item = None if batch else self._items.popleft()
                self._lines -= len(batch)
            if self.error is not None and batch:
                continue  # output is gone (closed pipe): only the closing call matters
            try:
                if batch:
                    self._write_lines(batch)
                elif item is not None and not isinstance(item, Line):
                    item()
            except BaseException as e:  # a closed pipe: end the stream with it
                if self.error is None:
                    self.error = e
                    self.on_error(e)


def pretty(*, tail: int | None = DEFAULT_LINES, file: IO[str] | None = None,
           progress: bool | None = None, summary: bool = True, max_lines: int = LINE_BUFFER,
           gather: bool = True, live: bool | None = None, check: bool | None = None
           ) -> Operator:
    """Print each host's ✔/✘ and its output, then a summary line naming failed hosts.

    Hosts print in natural order once the run ends (`web2` before `web10`), identical
    outputs gathered into one block headed `web[1-10] (10)` (`gather=False`: a block per
    host); `live=True` prints each host as it finishes instead (`--stream`; `None`: live
    once output Lines flow). At most `tail` lines per block (None: all), with
    `… N more lines` where cut. Host text is shown verbatim, controls made visible.
    Each Result reads as its op's view says (`sinks/views.py`: facts → the OS name and a
    table, exec → its output); dry runs are labelled `○ … dry run`, never ✔ ok.
    Printing happens off the runtime loop: Results flow on at once, whatever the
    terminal's speed; live lines beyond `max_lines` waiting are counted, not shown.
    A check run (`check`; None: when `configure(check=True)` and not a dry run, or when
    Results carry check data) reads `would change` / `no change` per block, each diff
    whole, and ends with `check: 3 would change · 17 no change · 0 errors`
    (`sinks/check_view.py`).
    """

    def make(up: Stream) -> reactivex.Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            rt = get_runtime()
            if check is None:
                from reops.streams.source import defaults

                d = defaults()
                checking = d.check and not d.dry_run
            else:
                checking = check
            p = Printer(tail=tail, file=file, total=len(up.hosts), progress=progress,
                        gather=gather, live=live, hosts=up.hosts.names, check=checking)
            w = _Writer(max_lines, p.lines, p.not_shown)
            p.writer = w
            state = {"ended": False}
            seen: list[Result] = []  # for the views' tables after the run

            def last() -> None:
                p.finish(seen, summary)

            def interrupted() -> None:
                p.finish_interrupted(summary)

            def end(exc: BaseException | None) -> None:
                """Deliver the stream's end once, on the loop thread."""
                def deliver() -> None:
                    if state["ended"]:
                        return
                    state["ended"] = True
                    if exc is None:
                        observer.on_completed()
                    else:
                        observer.on_error(exc if isinstance(exc, Exception)
                                          else RuntimeError(str(exc)))
                rt.call_soon(deliver)

            w.on_error = end
            p.start(_loop_later)

            def on_next(e: Event) -> None:
                if state["ended"]:
                    return
                if isinstance(e, Result):
                    seen.append(e)
                    shown = display(e)
                    w.must(lambda: p.result(shown))
                elif p.show_lines:
                    w.line(e)
                observer.on_next(e)

            def on_completed() -> None:
                w.close(last, end)

            def on_error(exc: Exception) -> None:
                w.close(interrupted, lambda _: end(exc))

            sub = up.observable.subscribe(on_next, on_error, on_completed)

            def dispose() -> None:
                sub.dispose()
                if state["ended"]:
                    return
                state["ended"] = True  # interrupted: what finished, then the summary
                w.close(interrupted, lambda _: None)
                if not rt.in_loop:  # the caller's thread may wait for the terminal
                    w.join(SHUTDOWN_GRACE_S)

            return Disposable(dispose)

        return reactivex.create(subscribe)

    return derived(make, "pretty", shared=True)  # printing is a side effect: once


def live(render: Callable[[Mapping[str, Result]], Any], *,
         file: IO[str] | None = None) -> Operator:
    """An endless stream on a terminal: one view of each host's latest Result, redrawn in
    place (`reops metrics --every`).

    Drawing happens on its own thread and the latest frame wins: a slow terminal skips
    frames, it never stalls the loop's SSH I/O nor buffers samples. `render(latest)` gives
    the rich renderable (e.g. `views.metrics_table`).
    """

    def make(up: Stream) -> reactivex.Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            from rich.console import Console
            from rich.live import Live

            rt = get_runtime()
            latest: dict[str, Result] = {}
            cond = threading.Condition()
            state = {"dirty": True, "closed": False}
            screen = Live(render({}), console=Console(file=file or sys.stdout, highlight=False),
                          auto_refresh=False)

            def draw() -> None:
                try:
                    screen.start()
                    while True:
                        with cond:
                            while not state["dirty"] and not state["closed"]:
                                cond.wait()
                            state["dirty"] = False
                            snapshot, closed = dict(latest), state["closed"]
                        screen.update(render(snapshot), refresh=True)
                        if closed:
                            return
                except (OSError, ValueError, SystemExit):  # the terminal went away: stop drawing
                    return
                finally:
                    with contextlib.suppress(OSError, ValueError, SystemExit):
                        screen.stop()

            thread = threading.Thread(target=draw, name="reops-live", daemon=True)
            thread.start()

            def close() -> None:
                with cond:
                    state["closed"] = True
                    cond.notify()

            def keep(r: Result) -> None:
                with cond:
                    latest[r.host] = r
                    state["dirty"] = True
                    cond.notify()

            sub = follow(up, observer, keep, close)

            def dispose() -> None:
                sub.dispose()
                close()
                if not rt.in_loop:  # the caller's thread waits for the last frame
                    thread.join(SHUTDOWN_GRACE_S)

            return Disposable(dispose)

        return reactivex.create(subscribe)

    return derived(make, "live", shared=True)


__all__ = ["DRY", "LINE_BUFFER", "MORE", "PROGRESS_AFTER_S", "SUMMARY_NAMES", "Printer",
           "describe_failure", "live", "pretty", "progress_bars"]
