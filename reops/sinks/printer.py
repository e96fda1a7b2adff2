"""The terminal sink's printing: ✔/✘ per host, identical outputs gathered, a summary line.

`Printer` is the one renderer of a run on a terminal: the terminal sink (`sinks/terminal.py`,
a stream operator) and the one-shot CLI (`reops.cli.quick`, no event loop) both feed it
Results. It imports neither reactivex nor asyncio, and rich only where it is needed: a
progress bar on a TTY, or an op's table after the run (`Printer.console`, made on first use).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

from reops.core.model import Line, Result
from reops.sinks import check_view
from reops.sinks.gather import DEFAULT_LINES, Block, Body, body_of, cut, gather, safe, visible
from reops.sinks.natural import fold
from reops.sinks.views import dry_run_command, print_after


class Writer(Protocol):
    """Where a printer hands what must be printed when it prints on another thread."""

    def must(self, item: Callable[[], None]) -> None: ...


#: `later(delay, fn)` calls fn after delay seconds unless the function it returns is called
Later = Callable[[float, Callable[[], None]], Callable[[], None]]


def thread_later(delay: float, fn: Callable[[], None]) -> Callable[[], None]:
    """`Later` on a timer thread (no event loop needed); returns its cancel."""
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.start()
    return timer.cancel


def runtime_terminated() -> bool:
    """Whether SIGTERM ended the run, as the runtime saw it (False where it is not loaded:
    this module never loads it)."""
    runtime = sys.modules.get("reops.core.runtime")
    return bool(runtime is not None and runtime.terminated())


#: a fan-out shows a progress bar only when it takes longer than this
PROGRESS_AFTER_S = 0.5
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
                 hosts: Sequence[str] = (), check: bool = False,
                 terminated: Callable[[], bool] = runtime_terminated) -> None:
        self.file: IO[str] = file or sys.stdout
        self._console: Any = None
        self.is_terminal = self._is_terminal()
        self.color = self.is_terminal and not (
            self.console.no_color if self._console is not None
            else os.environ.get("NO_COLOR", "") != "")
        self.terminated = terminated
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
        self._cancel_timer: Callable[[], None] | None = None
        self._done = False
        self._streamed: set[str] = set()  # hosts whose lines were shown live
        self._held: list[tuple[Result, Body]] = []  # Results waiting for the end (not live)
        self.checks: dict[str, bool | None] = {}  # a check run: host → would change (None: error)
        self._whole: set[str] = set()  # hosts whose block is never cut (check diffs)
        self.check = check  # a check run: every host answers would change / no change / error
        self._col_width = 0
        self._col = _HostColumn(0)
        self.writer: Writer | None = None  # set by pretty(): printing off the loop thread

    def _is_terminal(self) -> bool:
        """rich's answer (`Console.is_terminal`), asking rich only where it can differ from
        "not a TTY": TTY_COMPATIBLE or FORCE_COLOR set, or a TTY (then the console is made)."""
        env = os.environ
        isatty = getattr(self.file, "isatty", None)
        try:
            plain = isatty is None or not isatty()
        except ValueError:  # a closed file
            plain = True
        if plain and "TTY_COMPATIBLE" not in env and "FORCE_COLOR" not in env:
            return False
        return bool(self.console.is_terminal)

    @property
    def console(self) -> Any:
        """The rich Console on this printer's file (views' tables, progress bars); made on
        first use, so a run that prints only rows never imports rich."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.file, highlight=False, soft_wrap=True,
                                    markup=False, emoji=False)
        return self._console

    def _write(self, text: str) -> None:
        f = self.file
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
        if progress is not None and self.is_terminal:
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

    def start(self, later: Later = thread_later) -> None:
        """The run began: a progress bar (stderr, a TTY) if it lasts over PROGRESS_AFTER_S."""
        if self._want_progress and self.total > 1:
            self._cancel_timer = later(PROGRESS_AFTER_S, self._progress_due)

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
        if self._progress is not None and self.is_terminal:
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
        if self._cancel_timer is not None:
            self._cancel_timer()
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
            parts.append(("terminated (SIGTERM)" if self.terminated() else "interrupted", "warn"))
        if self.failed:
            parts.append((f"failed: {visible(fold(self.failed, SUMMARY_NAMES))}", "bad"))
        if left:
            parts.append(("not finished (running or not started): "
                          f"{visible(fold(left, SUMMARY_NAMES))}", "warn"))
        row: list[Segment] = [("── ", None)]
        for i, part in enumerate(parts):
            row.extend([(" · ", None), part] if i else [part])
        self._emit(*row)


    def finish(self, results: Sequence[Result], summary: bool = True) -> None:
        """The run ended: the Results held for the end, each op's table after them (its
        view's: `sinks/views.py`; `results` as they came), then the summary line."""
        self.flush()
        try:
            print_after(_LazyConsole(self), results)
        except SystemExit:  # rich's answer to a closed pipe (`reops facts … | head`)
            raise BrokenPipeError("output closed") from None
        if summary:
            self.summary()

    def finish_interrupted(self, summary: bool = True) -> None:
        """The run was interrupted: what finished, then the summary naming what did not."""
        self.flush()
        if summary:
            self.summary(interrupted=True)


class _LazyConsole:
    """The printer's console, made only if a view prints a table with it."""

    def __init__(self, printer: Printer) -> None:
        self._printer = printer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._printer.console, name)


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
