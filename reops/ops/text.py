"""Shared shell-script building blocks and output parsing for ops.

Every op sends ONE script per host (one round trip, pyinfra#17) and parses its stdout.
Scripts print `::reops:: NAME` marker lines to separate sections and to report whether
they changed the host; this module writes those markers and reads them back, so every
op module speaks the same small protocol.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from typing import Final

#: the prefix of every marker line a script prints on stdout
MARK: Final = "::reops::"

# exit codes the scripts use for their own failures (sysexits.h), so the Outcome's
# `failure` groups hosts by cause
EX_USAGE: Final = 64  # bad arguments reached the script
EX_DATAERR: Final = 65  # input too big or malformed (e.g. a template over the size limit)
EX_NOINPUT: Final = 66  # the thing named does not exist (service, file)
EX_UNAVAILABLE: Final = 69  # a needed tool is missing (package manager, init system)
EX_NOPERM: Final = 77  # permission denied (run with sudo=True)

_WORD = re.compile(r"[A-Za-z0-9_.-]+")


def q(word: str) -> str:
    """Shell-quote one word (an alias kept short for readable script templates)."""
    return shlex.quote(word)


def dq(text: str) -> str:
    """Double-quote `text` for the shell (readable inside a sudo `sh -c '…'` wrapper)."""
    return '"' + re.sub(r'([\\"$`])', r"\\\1", text) + '"'


def words(items: Iterable[str]) -> str:
    """Several shell-quoted words separated by spaces."""
    return " ".join(shlex.quote(i) for i in items)


def marker(name: str) -> str:
    """The shell line that prints the marker `name` (a section or changed/unchanged)."""
    if not _WORD.fullmatch(name):
        raise ValueError(f"marker names are plain words, got {name!r}")
    return f'echo "{MARK} {name}"'


CHANGED: Final = marker("changed")
UNCHANGED: Final = marker("unchanged")


def fail(code: int, message: str) -> str:
    """Shell that explains on stderr (prefixed `reops:`) and exits with `code`."""
    return f'{{ printf "%s\\n" {dq("reops: " + message)} >&2; exit {code}; }}'


def script(*lines: str) -> str:
    """Join non-empty script lines into one readable script (what --dry-run prints)."""
    return "\n".join(line for line in lines if line)


def sections(out: str) -> dict[str, str]:
    """Split sectioned output into {name: body}; text before the first marker is dropped."""
    result: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []
    for line in out.splitlines():
        if line.startswith(MARK):
            if name is not None:
                result[name] = "\n".join(body)
            name, body = line[len(MARK):].strip(), []
        elif name is not None:
            body.append(line)
    if name is not None:
        result[name] = "\n".join(body)
    return result


def markers(out: str) -> list[str]:
    """The marker names printed, in order."""
    return [line[len(MARK):].strip() for line in out.splitlines() if line.startswith(MARK)]


def without_markers(out: str) -> str:
    """The output with every marker line removed (the command's own output)."""
    return "\n".join(line for line in out.splitlines() if not line.startswith(MARK))


def changed_marker(code: int, out: str) -> bool | None:
    """`changed` for scripts printing changed/unchanged markers: any change counts."""
    found = set(markers(out)) & {"changed", "unchanged"}
    if not found:
        return None
    return "changed" in found


def key_values(text: str, sep: str = "=") -> dict[str, str]:
    """`KEY=VALUE` lines (os-release, systemctl show) into a dict; quotes stripped."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        key, found, value = line.partition(sep)
        if not found or not key.strip():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[key.strip()] = value
    return result


def to_int(text: str | None) -> int | None:
    """An int from text, or None when it is empty or not a number."""
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def to_float(text: str | None) -> float | None:
    """A float from text, or None when it is empty or not a number."""
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None
