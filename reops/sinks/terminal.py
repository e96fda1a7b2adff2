"""The terminal sink: ✔/✘ per host as each finishes, live output lines, a summary.

Output goes to stdout; the progress bar goes to stderr and only on a TTY, so pipes and
`--output json` stay clean.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import IO, Any

import reactivex
from reactivex import abc

from reops.model import Event, Line, Result
from reops.runtime import get_runtime
from reops.streams.core import Operator, Stream

#: a fan-out shows a progress bar only when it takes longer than this
PROGRESS_AFTER_S = 0.5


def _tail(text: str, n: int) -> list[str]:
    return [line for line in text.rstrip("\n").splitlines() if line.strip()][-n:] if n else []


def describe_failure(r: Result) -> str:
    """How a failure reads in a summary: `unreachable`, `timeout`, `exit 2`."""
    if r.status == "failed":
        return f"exit {r.code}"
    return r.status


class Printer:
    """Renders events with rich; one per pipeline run."""

    def __init__(self, *, tail: int = 3, file: IO[str] | None = None, total: int = 0,
                 progress: bool | None = None, show_lines: bool = True) -> None:
        from rich.console import Console

        self.console = Console(file=file or sys.stdout, highlight=False, soft_wrap=True)
        self.tail = tail
        self.total = total
        self.show_lines = show_lines
        self.width = 12
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._progress: Any = None
        self._task: Any = None
        self._want_progress = sys.stderr.isatty() if progress is None else progress
        self._timer: Any = None
        self._streamed: set[str] = set()  # hosts whose lines were shown live

    def _print(self, text: str, style: str | None = None) -> None:
        """Print a row; above the progress bar when both share the terminal."""
        try:
            if self._progress is not None and self.console.is_terminal:
                self._progress.console.print(text, style=style, highlight=False,
                                             soft_wrap=True)
            else:
                self.console.print(text, style=style)
        except SystemExit:  # rich's answer to a closed pipe (`reops exec … | head`)
            raise BrokenPipeError("output closed") from None

    def start(self) -> None:
        if self._want_progress and self.total > 1:
            rt = get_runtime()
            rt.call_soon(lambda: setattr(self, "_timer", rt.loop.call_later(
                PROGRESS_AFTER_S, self._show_progress)))

    def _show_progress(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("hosts", total=self.total,
                                             completed=sum(self.counts.values()))

    def line(self, e: Line) -> None:
        if self.show_lines:
            self._streamed.add(e.host)
            style = "dim" if e.stream == "out" else "yellow"
            self._print(f"[{style}]{e.host:>{self.width}} │[/] {_esc(e.text)}")

    def result(self, r: Result) -> None:
        self.width = max(self.width, min(len(r.host), 24))
        self.counts["ok" if r.ok else describe_failure(r)] += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1)
        mark = "[green]✔[/]" if r.ok else "[red]✘[/]"
        body = r.out if r.ok else (r.err or r.out)
        lines = [] if r.host in self._streamed and r.ok else _tail(body, self.tail)
        head = f"{mark} [bold]{_esc(r.host):<{self.width}}[/] [dim]{r.op} {r.duration_s:.2f}s"
        if not r.ok:
            head += f" {describe_failure(r)}"
        if r.changed:
            head += " changed"
        head += "[/]"
        if len(lines) == 1 and len(lines[0]) < 100:
            self._print(f"{head}  {_esc(lines[0])}")
            return
        self._print(head)
        for text in lines:
            self._print(f"    {_esc(text)}", style=None if r.ok else "red")

    def summary(self, interrupted: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        ok = self.counts.get("ok", 0)
        total = sum(self.counts.values())
        bad = {k: v for k, v in self.counts.items() if k != "ok"}
        parts = [f"[green]{ok} ok[/]"]
        if bad:
            detail = ", ".join(f"{v} {k}" for k, v in sorted(bad.items()))
            parts.append(f"[red]{total - ok} failed[/] ({detail})")
        parts.append(f"{total} hosts")
        parts.append(f"{time.monotonic() - self.started:.2f} s")
        if interrupted:
            parts.append("[yellow]interrupted[/]")
        self._print("── " + " · ".join(parts))


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def pretty(*, tail: int = 3, file: IO[str] | None = None, progress: bool | None = None,
           summary: bool = True) -> Operator:
    """Print each host's ✔/✘ and output tail as it finishes, then a summary line."""

    def apply(up: Stream) -> Stream:
        def subscribe(observer: abc.ObserverBase[Event],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            p = Printer(tail=tail, file=file, total=len(up.hosts), progress=progress)
            p.start()

            def on_next(e: Event) -> None:
                if isinstance(e, Result):
                    p.result(e)
                else:
                    p.line(e)
                observer.on_next(e)

            def on_completed() -> None:
                if summary:
                    p.summary()
                observer.on_completed()

            def on_error(exc: Exception) -> None:
                p.summary(interrupted=True)
                observer.on_error(exc)

            return up.observable.subscribe(on_next, on_error, on_completed)

        return Stream(reactivex.create(subscribe), up.hosts, lambda hs: apply(up.rebuild(hs)))

    return Operator(apply, "pretty")
