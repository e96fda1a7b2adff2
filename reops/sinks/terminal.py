"""The terminal sink: ✔/✘ per host as each finishes, live output lines, a summary.

The one terminal sink of every command (`reops exec`, `reops facts`, …) and of `| pretty()`:
how an op's Result reads (a line, a table after the run) is its view in `sinks/views.py`.

Output goes to stdout; the progress bar goes to stderr and only on a TTY, so pipes and
`--output json` stay clean.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

from reops.core.model import Event, Line, Result
from reops.core.runtime import SHUTDOWN_GRACE_S, get_runtime, terminated
from reops.sinks import check_view
from reops.sinks.gather import (
    DEFAULT_LINES,
    Block,
    Body,
    body_of,
    cut,
    gather,
    safe,
    visible,
)
from reops.sinks.natural import fold
from reops.sinks.views import display, dry_run_command, print_after
from reops.streams.stream import Operator, Stream, derived

#: a fan-out shows a progress bar only when it takes longer than this
PROGRESS_AFTER_S = 0.5
#: live output lines waiting for a slow terminal before the next ones are counted, not shown
LINE_BUFFER = 10_000
#: failed hosts named in the summary line (the rest are counted)
SUMMARY_NAMES = 20
#: how live lines look on a terminal (as rich's "dim" and "yellow"), without rich's cost
_STYLE = {"out": "\x1b[2m", "err": "\x1b[33m"}
_RESET = "\x1b[0m"
#: the styles of the sink's own rows, written by hand (host text never goes through markup)
_ANSI = {"ok": "\x1b[32m", "bad": "\x1b[31m", "dim": "\x1b[2m", "bold": "\x1b[1m",
         "warn": "\x1b[33m", "dry": "\x1b[36m"}
_RICH = {"ok": "green", "bad": "red", "dim": "dim", "bold": "bold", "warn": "yellow",
         "dry": "cyan"}
#: what stands where lines were left out
MORE = "… {n} more line{s} (--lines N / --full)"

Segment = tuple[str, str | None]  # (text, style name in _ANSI or None)


class _Bars:
    """The progress bars on screen, and whether one may be drawn now.

    A live session (the REPL) allows them only while a command runs in the foreground:
    once its prompt is back, a bar still drawing (its pipeline interrupted, or running on
    in the background) would redraw over the line being typed.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.allowed = True
        self.drawn: set[Printer] = set()


_bars = _Bars()


def progress_bars(allowed: bool) -> None:
    """Allow progress bars (a command runs in the foreground), or stop every bar drawn and
    draw no new one (a prompt is on screen); by default they are allowed."""
    with _bars.lock:
        _bars.allowed = allowed
        drawn = [] if allowed else list(_bars.drawn)
    for printer in drawn:
        printer._stop_progress()


def describe_failure(r: Result) -> str:
    """How a failure reads in a summary: `unreachable`, `timeout`, `exit 2`."""
    if r.status == "failed":
        return f"exit {r.code}"
    return r.status


class Printer:
    """Renders events; one per pipeline run.

    Text from hosts (and host names, paths, errors) is written as it is, never through
    rich markup or emoji codes, with control characters made visible (`gather.visible`).
    Unless `live`, Results wait for the end of the run and print in natural host order,
    identical outputs gathered into one block (`gather=False`: one block per host);
    `live=None` turns live as soon as the stream carries output Lines (`lines=True`).
    """

    def __init__(self, *, tail: int | None = DEFAULT_LINES, file: IO[str] | None = None,
                 total: int = 0, progress: bool | None = None, show_lines: bool = True,
                 gather: bool = True, live: bool | None = None,
                 hosts: Sequence[str] = (), check: bool = False) -> None:
        from rich.console import Console

        self.console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True,
                               markup=False, emoji=False)
        self.color = self.console.is_terminal and not self.console.no_color
        self.tail = tail
        self.total = total or len(hosts)
        self.hosts = list(hosts)
        self.show_lines = show_lines
        self.gather = gather
        self.live = live
        self.width = 12
        self.counts: Counter[str] = Counter()
        self.failed: list[str] = []
        self.finished: set[str] = set()
        self.started = time.monotonic()
        self._progress: Any = None
        self._task: Any = None
        self._want_progress = sys.stderr.isatty() if progress is None else progress
        self._timer: Any = None
        self._done = False
        self._streamed: set[str] = set()  # hosts whose lines were shown live
        self._held: list[tuple[Result, Body]] = []  # Results waiting for the end (not live)
        self.checks: dict[str, bool | None] = {}  # a check run: host → would change (None: error)
        self._whole: set[str] = set()  # hosts whose block is never cut (check diffs)
        self.check = check  # a check run: every host answers would change / no change / error
        self._col_width = 0
        self._col = _HostColumn(0)
        self.writer: _Writer | None = None  # set by pretty(): printing off the loop thread

    def _write(self, text: str) -> None:
        f = self.console.file
        try:
            f.write(text)
            f.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:  # a closed file: as rich reports a closed pipe
            raise BrokenPipeError(f"output closed: {e}") from None

    def _emit(self, *segments: Segment) -> None:
        """Print one row of segments; above the progress bar when both share the terminal.

        Segments are plain text: nothing in them is read as markup or emoji codes."""
        progress = self._progress  # read once: a session may stop it from another thread
        if progress is not None and self.console.is_terminal:
            from rich.text import Text

            row = Text(no_wrap=False, end="\n")
            for text, style in segments:
                row.append(text, style=_RICH.get(style or "", ""))
            try:
                progress.console.print(row, soft_wrap=True)
            except SystemExit:  # rich's answer to a closed pipe
                raise BrokenPipeError("output closed") from None
            return
        if self.color:
            self._write("".join(f"{_ANSI[style]}{text}{_RESET}" if style else text
                                for text, style in segments) + "\n")
        else:
            self._write("".join(text for text, _ in segments) + "\n")

    def start(self) -> None:
        if self._want_progress and self.total > 1:
            rt = get_runtime()
            rt.call_soon(lambda: setattr(self, "_timer", rt.loop.call_later(
                PROGRESS_AFTER_S, self._progress_due)))

    def _progress_due(self) -> None:
        if self.writer is None:
            self._show_progress()
        else:
            self.writer.must(self._show_progress)

    def _show_progress(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with _bars.lock:
            if self._done or not _bars.allowed:
                return
            progress = Progress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True,
            )
            self._task = progress.add_task("hosts", total=self.total,
                                           completed=sum(self.counts.values()))
            progress.start()
            self._progress = progress
            _bars.drawn.add(self)

    def not_shown(self, n: int) -> None:
        """Where live lines were skipped because the terminal was too slow."""
        self._emit((f"… {n} lines not shown (slow terminal)", "warn"))

    def _go_live(self) -> None:
        """The stream carries output lines: from now on Results print as they come."""
        if self.live is None:
            self.live = True
            self.flush()

    def lines(self, batch: list[Line]) -> None:
        """Print live output lines in one write: rich costs ~150 µs a line (20 MB took
        32 s), too slow for a host printing megabytes. Styled by hand on a terminal; above a
        progress bar they go through rich, which keeps the bar in place."""
        self._go_live()
        if self._progress is not None and self.console.is_terminal:
            for e in batch:
                self.line(e)
            return
        for e in batch:
            self._streamed.add(e.host)
        col = self._column()
        if not safe([e.text for e in batch]):  # one C-speed scan; per line only if needed
            batch = [Line(e.host, e.stream, visible(e.text)) for e in batch]
        if self.color:
            text = "".join([f"{_STYLE.get(e.stream, '')}{col[e.host]} │{_RESET} {e.text}\n"
                            for e in batch])
        else:
            text = "".join([f"{col[e.host]} │ {e.text}\n" for e in batch])
        self._write(text)

    def _column(self) -> dict[str, str]:
        """Host names as the live lines' first column (visible, right-aligned), cached
        per width: a dict lookup per line instead of escaping and formatting the name."""
        if self._col_width != self.width:
            self._col_width = self.width
            self._col = _HostColumn(self.width)
        return self._col

    def line(self, e: Line) -> None:
        if self.show_lines:
            self._go_live()
            self._streamed.add(e.host)
            self._emit((f"{visible(e.host):>{self.width}} │", "dim" if e.stream == "out"
                        else "warn"), (f" {visible(e.text)}", None))

    def result(self, r: Result) -> None:
        self.counts[_kind(r)] += 1
        self.finished.add(r.host)
        if not r.ok:
            self.failed.append(r.host)
        progress = self._progress
        if progress is not None:
            progress.update(self._task, advance=1)
        found = check_view.report(r)
        if found is not None or (not r.ok and (self.check or self.checks)):
            changes = found["changes"] if found is not None else None
            self.checks[r.host] = changes
            if found is not None and changes:  # shown whole: its last lines would mislead
                self._whole.add(r.host)
                item = (r, Body(check_view.diff_lines(str(found["diff"])), []))
            else:
                item = (r, body_of(r, streamed=r.host in self._streamed) if changes is None
                        else Body([], []))
        else:
            item = (r, body_of(r, streamed=r.host in self._streamed))
        if self.live:
            self.width = max(self.width, min(len(r.host), 24))
            self._block(Block(r, item[1], [r]))
        else:
            self._held.append(item)

    def flush(self) -> None:
        """Print the Results held for the end: natural order, identical outputs gathered."""
        held, self._held = self._held, []
        if not held:
            return
        self._stop_progress()
        blocks = gather(held, together=self.gather)
        self.width = max(self.width, *(min(len(_label(b)), 24) for b in blocks))
        for block in blocks:
            self._block(block)

    def _block(self, b: Block) -> None:
        r = b.first
        dry = dry_run_command(r) is not None
        mark: Segment = ("○", "dry") if dry else ("✔", "ok") if r.ok else ("✘", "bad")
        took = max(x.duration_s for x in b.results)
        what = f" {r.op} dry run" if dry else (
            f" {r.op} {'≤' if len(b.results) > 1 else ''}{took:.2f}s")
        if not r.ok:
            what += f" {describe_failure(r)}"
        if r.host in self.checks and r.ok:  # a check: what it WOULD do
            what += f" {check_view.word(self.checks[r.host])}"
        elif r.changed:
            what += " changed"
        head: list[Segment] = [mark, (" ", None), (f"{_label(b):<{self.width}}", "bold"),
                               (what, "dim")]
        rows = [(x, False) for x in b.body.out] + [(x, True) for x in b.body.err]
        hidden, shown = cut(rows, None if r.host in self._whole else self.tail)
        if not hidden and len(shown) == 1 and len(shown[0][0]) < 100:
            text, is_err = shown[0]
            self._emit(*head, ("  ", None), (text, ("bad" if not r.ok else "warn")
                                             if is_err else None))
            return
        self._emit(*head)
        if hidden:
            self._emit(("    " + MORE.format(n=hidden, s="s" if hidden > 1 else ""), "warn"))
        for text, is_err in shown:
            self._emit(("    ", None), (text, ("bad" if not r.ok else "warn") if is_err
                                        else None))

    def _stop_progress(self) -> None:
        with _bars.lock:
            progress, self._progress = self._progress, None
            _bars.drawn.discard(self)
        if progress is not None:
            progress.stop()

    def summary(self, interrupted: bool = False) -> None:
        """`── 17 ok · 3 failed (2 exit 3, 1 unreachable) · 20 hosts · 0.31 s · failed:
        web[2,5],db1`; interrupted: also the hosts not finished, by name."""
        self._done = True
        if self._timer is not None:
            get_runtime().call_soon(self._timer.cancel)
        self._stop_progress()
        ok = self.counts.get("ok", 0)
        dry = self.counts.get(DRY, 0)
        total = sum(self.counts.values())
        bad = {k: v for k, v in self.counts.items() if k not in ("ok", DRY)}
        left = [h for h in self.hosts if h not in self.finished] if interrupted else []
        n_left = (len(left) if self.hosts else self.total - total) if interrupted else 0
        parts: list[Segment] = []
        if self.checks and not interrupted:
            would = sum(1 for c in self.checks.values() if c)
            same = sum(1 for c in self.checks.values() if c is False)
            # a host that failed before any check answered (a flow's pretty()) is one too
            errors = len({h for h, c in self.checks.items() if c is None} | set(self.failed))
            parts.append((check_view.summary_text(would, same, errors), "bad" if errors else
                "warn" if would else "ok"))
            parts.append((f"{total} hosts", None))
        elif dry and dry == total and not interrupted:
            parts.append((f"dry run: {dry} host{'s' if dry > 1 else ''}, nothing ran", "dry"))
        else:
            parts.append((f"{ok} ok", "ok"))
            if dry:
                parts.append((f"{dry} dry run", "dry"))
            if bad:
                detail = ", ".join(f"{v} {k}" for k, v in sorted(bad.items()))
                parts.append((f"{sum(bad.values())} failed ({detail})", "bad"))
            if n_left > 0:
                parts.append((f"{n_left} not finished", "warn"))
            parts.append((f"{self.total if interrupted else total} hosts", None))
        parts.append((f"{time.monotonic() - self.started:.2f} s", None))
        if interrupted:
            parts.append(("terminated (SIGTERM)" if terminated() else "interrupted", "warn"))
        if self.failed:
            parts.append((f"failed: {visible(fold(self.failed, SUMMARY_NAMES))}", "bad"))
        if left:
            parts.append(("not finished (running or not started): "
                          f"{visible(fold(left, SUMMARY_NAMES))}", "warn"))
        row: list[Segment] = [("── ", None)]
        for i, part in enumerate(parts):
            row.extend([(" · ", None), part] if i else [part])
        self._emit(*row)


class _HostColumn(dict[str, str]):
    """host → its name made visible and right-aligned to `width` (filled on first use)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def __missing__(self, host: str) -> str:
        shown = self[host] = f"{visible(host):>{self.width}}"
        return shown


#: the count key of dry-run Results
DRY = "dry run"


def _kind(r: Result) -> str:
    if dry_run_command(r) is not None:
        return DRY
    return "ok" if r.ok else describe_failure(r)


def _label(b: Block) -> str:
    """A block's hosts: `web1`, or `web[1-10] (10)`."""
    hosts = b.hosts
    if len(hosts) == 1:
        return visible(hosts[0])
    return f"{visible(fold(hosts))} ({len(hosts)})"


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
                p.flush()
                try:
                    print_after(p.console, seen)
                except SystemExit:  # rich's answer to a closed pipe (`reops facts … | head`)
                    raise BrokenPipeError("output closed") from None
                if summary:
                    p.summary()

            def interrupted() -> None:
                """What finished, then the summary naming what did not."""
                p.flush()
                if summary:
                    p.summary(interrupted=True)

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
            p.start()

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

            def on_next(e: Event) -> None:
                if isinstance(e, Result):
                    with cond:
                        latest[e.host] = e
                        state["dirty"] = True
                        cond.notify()
                observer.on_next(e)

            def on_completed() -> None:
                close()
                observer.on_completed()

            def on_error(exc: Exception) -> None:
                close()
                observer.on_error(exc)

            sub = up.observable.subscribe(on_next, on_error, on_completed)

            def dispose() -> None:
                sub.dispose()
                close()
                if not rt.in_loop:  # the caller's thread waits for the last frame
                    thread.join(SHUTDOWN_GRACE_S)

            return Disposable(dispose)

        return reactivex.create(subscribe)

    return derived(make, "live", shared=True)
