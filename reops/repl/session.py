"""The REPL loop: ptpython's editor, reops's way of running what is typed.

Why not ptpython's own loop: terminal IPython and ptpython run an event loop only while a
cell awaits, and their Ctrl-C either kills the await (losing the pipeline's partial
Outcome) or leaves it running behind the prompt. Here:

- pipelines run on reops's runtime thread, so a subscribed stream keeps running while
  the user types; the session's own asyncio loop also runs while reading (the editor runs
  in a thread), so tasks made with `asyncio.create_task` keep going between prompts too;
- everything printed goes through prompt_toolkit's `patch_stdout` (raw: rich's colours
  kept), so output from other threads lands above the prompt, never in the typed line;
- Ctrl-C goes to the command in the foreground only (`Interrupts`): a blocking `run()`
  returns its partial Outcome (interrupted=True), an awaited one is cancelled with
  `INTERRUPT`; progress bars stop before the prompt comes back (`progress_bars(False)`);
- `_` is the last value, `_r` the last Outcome the session produced (shown, or assigned),
  displayed with rich (Outcome, Result and Hosts have their own views).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prompt_toolkit.completion import merge_completers
from ptpython.repl import PythonRepl, ReplExit, exit

from reops.control.bus import BusError
from reops.control.client import HubError, HubGone, HubNotRunning
from reops.core.inventory import InventoryError
from reops.core.model import Outcome
from reops.core.pyfile import PyFileError
from reops.core.runtime import INTERRUPT, interrupted_by_user, interruptible
from reops.core.selector import SelectorError
from reops.core.settings import ConfigError
from reops.repl.above import AboveThePrompt, output_above_prompt
from reops.repl.complete import ReopsCompleter
from reops.sinks.terminal import progress_bars

_COROUTINE = 0x80  # CO_COROUTINE: the compiled cell awaits at top level
#: reops's own "you asked for something that is not there" errors: one line, as the CLI
#: says them (which file:line, which host, what to do), never a traceback
USER_ERRORS = (InventoryError, SelectorError, ConfigError, PyFileError, BusError,
               HubNotRunning, HubGone, HubError)


class Interrupts:
    """The one SIGINT handler of a session; what Ctrl-C does depends on what runs.

    reading: nothing (the editor reads Ctrl-C as a key; a stray signal must not kill it);
    a plain command: KeyboardInterrupt where it runs (`run()` turns it into its partial
    Outcome); an awaiting command: its task is cancelled with INTERRUPT, and a second
    Ctrl-C raises KeyboardInterrupt (a blocking call inside the await).
    """

    def __init__(self) -> None:
        self.mode = "read"
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pressed = 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.mode == "read":
            return
        self.pressed += 1
        task, loop = self.task, self.loop
        if self.mode == "await" and self.pressed == 1 and task is not None and loop is not None \
                and not task.done():
            loop.call_soon_threadsafe(task.cancel, INTERRUPT)
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def running(self, mode: str, task: asyncio.Task[Any] | None = None,
                loop: asyncio.AbstractEventLoop | None = None) -> Iterator[None]:
        self.mode, self.task, self.loop, self.pressed = mode, task, loop, 0
        try:
            yield
        finally:
            self.mode, self.task, self.loop = "read", None, None


class Session(PythonRepl):
    """A ptpython REPL (completion, history, multi-line editing) that runs commands the
    reops way (see the module's docstring)."""

    def __init__(self, ns: dict[str, Any], history: Path, completer: ReopsCompleter,
                 interrupts: Interrupts) -> None:
        super().__init__(get_globals=lambda: ns, history_filename=str(history))
        self.ns = ns
        self.interrupts = interrupts
        self.completer = merge_completers([completer, self.completer], deduplicate=True)
        self.confirm_exit = False  # Ctrl-D leaves, as in python
        self.show_status_bar = False  # one line of prompt: output above it stays readable
        self.insert_blank_line_after_output = False
        self.above: AboveThePrompt | None = None

    # ── the loop ────────────────────────────────────────────────────────────────────────

    def run(self) -> None:
        """Read and run commands until Ctrl-D or exit()."""
        self._add_to_namespace()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            with output_above_prompt() as self.above:
                while True:
                    try:
                        text = self._read(loop)
                    except EOFError:
                        return
                    try:
                        self.execute(text, loop)
                    except (ReplExit, SystemExit):
                        return
        finally:
            self._remove_from_namespace()
            _close(loop)

    def _read(self, loop: asyncio.AbstractEventLoop) -> str:
        """The next command; the session's loop runs its tasks meanwhile."""
        if self.above is not None:
            self.above.drain()  # the last command's output first, then the prompt
        return loop.run_until_complete(loop.run_in_executor(None, self.read))

    def execute(self, text: str, loop: asyncio.AbstractEventLoop) -> None:
        """Run one command: show its value, keep `_` and `_r`; Ctrl-C stops only it."""
        before = self._outcomes()
        value: Any = None
        progress_bars(True)
        interruptible()  # a library imported by the last command may have changed SIGINT
        try:
            value = self._evaluate(text, loop)
        except KeyboardInterrupt:
            self._say("KeyboardInterrupt")
        except asyncio.CancelledError as e:
            self._say("interrupted (Ctrl-C)" if interrupted_by_user(e) or
                      self.interrupts.pressed else "cancelled")
        except (ReplExit, SystemExit):
            raise
        except BaseException as e:
            self._traceback(e)
        finally:
            progress_bars(False)  # no bar may redraw over the prompt
        if isinstance(value, exit):
            raise ReplExit
        outcome = value if isinstance(value, Outcome) else self._assigned(before)
        if outcome is not None:
            self.ns["_r"] = outcome
        if value is not None:
            self.ns["_"] = value
            self.show(value)
        elif outcome is not None and outcome.interrupted:
            self.show(outcome)  # what Ctrl-C left: finished hosts, the others failed
        self.current_statement_index += 1

    def _evaluate(self, text: str, loop: asyncio.AbstractEventLoop) -> Any:
        try:
            code, is_expression = self._compile_with_flags(text, "eval"), True
        except SyntaxError:
            code, is_expression = self._compile_with_flags(text, "exec"), False
        if code.co_flags & _COROUTINE:
            value = self._await(eval(code, self.ns), loop)
        else:
            with self.interrupts.running("plain"):
                value = eval(code, self.ns)
        return value if is_expression else None

    def _await(self, coro: Any, loop: asyncio.AbstractEventLoop) -> Any:
        """Run an awaiting command on the session's loop; Ctrl-C cancels it (INTERRUPT)."""
        task = loop.create_task(coro)
        with self.interrupts.running("await", task, loop):
            try:
                return loop.run_until_complete(task)
            except KeyboardInterrupt:  # a second Ctrl-C: give up on it
                task.cancel(INTERRUPT)
                raise

    # ── output ──────────────────────────────────────────────────────────────────────────

    def show(self, value: Any) -> None:
        """Print a value with rich: its own view when it has one (Outcome, Result, Hosts,
        DataFrames …), else rich's pretty repr."""
        from rich.console import Console
        from rich.pretty import Pretty

        console = Console(file=sys.stdout)
        view = value if hasattr(value, "__rich__") or hasattr(value, "__rich_console__") \
            else Pretty(value)
        console.print(view)

    def _say(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def _traceback(self, e: BaseException) -> None:
        """The traceback from the command's own first frame (none of the REPL's)."""
        if isinstance(e, USER_ERRORS):
            self._say(f"reops: error: {e}")
            return
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<stdin>":
            tb = tb.tb_next
        sys.stdout.write("".join(traceback.format_exception(type(e), e, tb)))
        sys.stdout.flush()

    # ── _r ──────────────────────────────────────────────────────────────────────────────

    def _outcomes(self) -> dict[str, int]:
        return {k: id(v) for k, v in self.ns.items()
                if isinstance(v, Outcome) and k not in ("_", "_r")}

    def _assigned(self, before: dict[str, int]) -> Outcome | None:
        """The Outcome the command assigned to a name (`out = run(...)`), if any."""
        new = [k for k, i in self._outcomes().items() if before.get(k) != i]
        return self.ns[new[-1]] if new else None


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the session's leftover tasks and close its loop."""
    tasks = asyncio.all_tasks(loop)
    for t in tasks:
        t.cancel()
    with contextlib.suppress(BaseException):
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()
