"""Shell commands: the op every other op can fall back to."""

from __future__ import annotations

from reops.ops.base import Op, join
from reops.ops.check import QUERY


def exec_(command: str, *args: str, sudo: bool = False, become_user: str | None = None,
          timeout: float | None = None, stdin: str | None = None) -> Op:
    """Run `command` through the login shell; extra `args` are quoted and appended.

    >>> exec_("uname", "-a").command
    'uname -a'
    """
    cmd = command if not args else f"{command} {join(args)}"
    return Op(name="exec", command=cmd, sudo=sudo, become_user=become_user, timeout=timeout,
              stdin=stdin)


sh = exec_


def ls(path: str = ".", *flags: str, sudo: bool = False) -> Op:
    """List `path`; `data` is the list of entry lines."""
    return Op(name="ls", command=join(["ls", *flags, "--", path]), sudo=sudo,
              parse=lambda out: [line for line in out.splitlines() if line], check=QUERY)
