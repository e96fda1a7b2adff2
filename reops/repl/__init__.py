"""`reops repl`: a live Python session with the reops API loaded and the runtime running.

One idea per module: `command` (the click command), `namespace` (what the session starts
with), `session` (the loop: running commands, Ctrl-C, display), `complete` (TAB inside
selector, system and flow strings), `hubflows` (`flows`: the hub's flows), `banner`.
"""

from __future__ import annotations

from reops.repl.command import repl

__all__ = ["repl"]
