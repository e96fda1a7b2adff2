"""What an operation is: a transport-independent description of work on one host.

An Op says WHAT to run (a shell command, a file transfer, a named agent function) and how
to turn the raw output into typed `data`. Sources (SSH, agents) decide HOW to run it, so
the same Op runs over either, and ops can be tested without a network by checking the
commands they generate and the data their parsers return.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import msgspec

from reops.core.model import Host, Status

#: what a transport does with an Op, dispatched on by every executor (never on its name):
#: shell (run `command`), sync (make `remote` a copy of `local`), upload/download (one
#: transfer), call (an agent built-in `function`), code (shipped Python: `code`)
Kind = Literal["shell", "sync", "upload", "download", "call", "code"]
Parser = Callable[[str], Any]


class CodeRef(msgspec.Struct, frozen=True, kw_only=True):
    """Python shipped to agents: one module's source and the function in it to call.

    A typed field of the Op (kind "code"), so no transport fishes it out of `kwargs`."""

    source: str
    function: str
    module: str = "shipped"


@dataclass(frozen=True, slots=True)
class Op:
    """One step's description; `command` may depend on the host (its vars)."""

    name: str
    kind: Kind = "shell"
    command: str | Callable[[Host], str] = ""
    parse: Parser | None = None
    ok_codes: tuple[int, ...] = (0,)
    sudo: bool = False
    become_user: str | None = None
    stdin: str | None = None
    timeout: float | None = None
    # transfers and syncs: local/remote paths; calls: the agent function name and its
    # arguments; code: the shipped source (`function` is its name)
    local: str = ""
    remote: str = ""
    mode: int | None = None
    function: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    code: CodeRef | None = None
    # does a successful run mean the host changed? (None: unknown)
    changed: Callable[[int, str], bool | None] | None = None

    def command_for(self, host: Host) -> str:
        """The shell command for `host`, wrapped for sudo/become_user."""
        cmd = self.command(host) if callable(self.command) else self.command
        return privileged(cmd, sudo=self.sudo, become_user=self.become_user)

    def with_(self, **changes: Any) -> Op:
        return replace(self, **changes)

    def judge(self, code: int, out: str, err: str = "", data: Any = None
              ) -> tuple[Status, Any, bool | None, str]:
        """(status, data, changed, err) of a finished run, the same over every transport:
        ok by `ok_codes`, `data` from the parser (a parser bug is an error Result, never a
        lost host), `changed` from the op's rule."""
        status: Status = "ok" if code in self.ok_codes else "failed"
        if status == "ok" and self.parse is not None:
            try:
                data = self.parse(out)
            except Exception as e:
                return "error", data, None, (
                    f"{err}{self.name}: cannot parse output: {type(e).__name__}: {e}")
        changed = self.changed(code, out) if self.changed is not None and status == "ok" \
            else None
        return status, data, changed, err


def privileged(cmd: str, *, sudo: bool = False, become_user: str | None = None) -> str:
    """Wrap `cmd` to run as root (sudo) or as another user, non-interactively."""
    if not sudo and not become_user:
        return cmd
    who = f"-u {shlex.quote(become_user)} " if become_user else ""
    return f"sudo -n {who}-- sh -c {shlex.quote(cmd)}"


def join(argv: Sequence[str]) -> str:
    """A shell-safe command line from an argument vector."""
    return shlex.join(argv)
