"""Make docs/img/repl.svg: a real `reops repl` session on a lab, rendered headless.

    python docs/img/repl_screenshot.py lab/inventory.toml [docs/img/repl.svg]

The REPL runs under a pseudo-terminal (pexpect); a terminal emulator (pyte) applies what
it prints — cursor moves, redraws, colours — and the final screen is drawn with rich's
`Console(record=True).save_svg`. Needs a running lab with hosts web1, web2 (`reops lab up`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import pexpect
import pyte
from rich.console import Console
from rich.style import Style
from rich.text import Text

COLUMNS, LINES = 110, 34
COMMANDS = [  # (typed, what to wait for before the next one)
    ('web = inv.select("group:web")', None),
    ('sub = (on(every("1s"), hosts=inv.select("web1")) | then(exec_, "cut -d\' \' -f1 '
     '/proc/loadavg")).subscribe(lambda r: print("load", r.host, r.out.strip()) '
     'if isinstance(r, Result) else None)', "load web1"),
    ('out = await exec_(web, "uname -sr")', None),
    ("out", "ok"),
    ('run(exec_(web, "sleep 300") | pretty())', "0/"),
    ("\x03", "interrupted before"),
    ("_r.interrupted", "True"),
]


def screen_text(screen: pyte.Screen) -> Text:
    """The emulated screen as rich Text, colours and bold kept."""
    out = Text()
    for y in range(screen.lines):
        row = screen.buffer[y]
        for x in range(screen.columns):
            ch = row[x]
            color = None if ch.fg == "default" else ch.fg.replace("brown", "yellow")
            out.append(ch.data, Style(color=color if color in _COLOURS else None,
                                      bold=ch.bold, dim=False))
        out.append("\n")
    return out


_COLOURS = {"black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"}


def main(inventory: str, target: str = "docs/img/repl.svg") -> None:
    screen = pyte.Screen(COLUMNS, LINES)
    stream = pyte.Stream(screen)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "REOPS_HOME": home, "TERM": "xterm-256color",
               "PROMPT_TOOLKIT_NO_CPR": "1"}
        child = pexpect.spawn("reops", ["repl", "-i", inventory], env=env, encoding="utf-8",
                              dimensions=(LINES, COLUMNS), timeout=60)

        def until(text: str | None, settle: float = 1.5) -> None:
            """Feed the emulator until `text` was shown, then for `settle` seconds more."""
            deadline, end = time.monotonic() + 60, None if text else time.monotonic() + settle
            seen = ""
            while end is None or time.monotonic() < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{text!r} never shown")
                try:
                    chunk = child.read_nonblocking(65536, timeout=0.2)
                except pexpect.TIMEOUT:
                    continue
                stream.feed(chunk)
                seen += chunk
                if end is None and text is not None and text in seen:
                    end = time.monotonic() + settle

        until(">>>")
        for typed, wait in COMMANDS:
            if typed == "\x03":
                child.sendintr()
            else:
                child.send(typed + "\r")
            until(wait)
        child.send('sub.dispose()')  # typed, not sent: the screenshot shows an open line
        until(None)
        child.terminate(force=True)
    console = Console(record=True, width=COLUMNS, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(screen_text(screen), end="")
    console.save_svg(target, title="reops repl")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(*sys.argv[1:])
