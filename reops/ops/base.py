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
from reops.core.secrets import Secret
from reops.ops.check import Check

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
    # with a become password its first line is the password (see with_become_pass):
    # never shown in the Op's repr
    stdin: str | None = field(default=None, repr=False)
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
    # how `--check` asks the host whether this op WOULD change it, read-only (see
    # reops/ops/check.py); None: it cannot be checked (`exec`): it "would run"
    check: Check | None = None

    # the sudo password, fed on stdin (see with_become_pass); None: `sudo -n`
    become_pass: Secret | None = None

    def command_for(self, host: Host) -> str:
        """The shell command for `host`, wrapped for sudo/become_user."""
        cmd = self.command(host) if callable(self.command) else self.command
        return privileged(cmd, sudo=self.sudo, become_user=self.become_user,
                          password=self.become_pass is not None, host=host.name)

    def with_(self, **changes: Any) -> Op:
        return replace(self, **changes)

    def with_become_pass(self, secret: Secret | None) -> Op:
        """This op with sudo fed `secret` on stdin (ahead of the op's own stdin), so the
        password is never on a command line; unchanged when there is no secret, the op
        does not use sudo, it is not a shell command, or it already has one."""
        if (secret is None or self.become_pass is not None or self.kind != "shell"
                or not (self.sudo or self.become_user)):
            return self
        if "\n" in secret.reveal() or "\r" in secret.reveal():
            raise ValueError("a become password cannot contain a line break (sudo -S reads "
                             "one line)")
        return replace(self, become_pass=secret,
                       stdin=secret.reveal() + "\n" + (self.stdin or ""))

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


def privileged(cmd: str, *, sudo: bool = False, become_user: str | None = None,
               password: bool = False, host: str = "this host") -> str:
    """Wrap `cmd` to run as root (sudo) or as another user.

    Without `password`: `sudo -n` (fails at once where a password is needed). With it,
    the first line of stdin is the password (see Op.with_become_pass) and the wrapper
    (1) reads it into a shell variable (`read` is a builtin: no process ever has it in
    its argv); (2) when sudo needs no password here, drops it and runs `sudo -n`, so the
    command never reads the password as its input; (3) checks it once with stdin holding
    nothing but it, so a wrong one fails at once (sudo -S would retry on the op's own
    stdin) as `sudo: incorrect password on HOST`; (4) runs the command through
    `sudo -k -S -p ''` (-k: never a cached credential, so sudo always reads the line),
    the password line first, then the rest of stdin (`cat`).
    """
    if not sudo and not become_user:
        return cmd
    who = f"-u {shlex.quote(become_user)} " if become_user else ""
    run = f"{who}-- sh -c {shlex.quote(cmd)}"
    if not password:
        return f"sudo -n {run}"
    wrong = shlex.quote(f"sudo: incorrect password on {host}")
    other = shlex.quote(f"sudo on {host}: ")
    return "\n".join([
        "IFS= read -r reops_pw || :",
        f"if sudo -n -k {who}true 2>/dev/null; then unset reops_pw; exec sudo -n {run}; fi",
        "reops_err=$(printf '%s\\n' \"$reops_pw\" |",
        f"  LC_ALL=C sudo -k -S -p '' {who}true 2>&1) || {{",
        '  case $reops_err in *"incorrect password"*|*"Sorry, try again"*)',
        f"    echo {wrong} >&2 ;;",
        f"  *) printf '%s%s\\n' {other} \"$reops_err\" >&2 ;; esac",
        "  exit 1",
        "}",
        f"{{ printf '%s\\n' \"$reops_pw\"; unset reops_pw; exec cat; }} | sudo -k -S -p '' {run}",
    ])


def join(argv: Sequence[str]) -> str:
    """A shell-safe command line from an argument vector."""
    return shlex.join(argv)
