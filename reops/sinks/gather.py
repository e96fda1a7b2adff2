"""What pretty output shows of a Result, honestly: visible controls, every cut marked, and
identical outputs gathered into one block per set of hosts (as ClusterShell's `clubak -b`).

Text from hosts is never interpreted: no markup, no emoji codes, and control characters
(ESC sequences, `\\r`, NUL, bidi overrides) are shown as `^[`, `^M`, `^@`, `<U+202E>`
instead of driving the user's terminal (`-o json/jsonl` keep the exact text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from reops.core.model import Result
from reops.sinks.natural import natural_key
from reops.sinks.views import dry_run_command

#: lines of output shown per host (block) unless --lines N / --full
DEFAULT_LINES = 10
#: how the executor's own max_output cut reads in a Result's text (transports/ssh/output.py)
_CUT_MARKER = re.compile(r"^… \[reops: cut \d+ bytes of \w+;.*\] …$")


def _control_table() -> dict[int, str]:
    table = {c: "^" + chr(c + 64) for c in range(0x20) if c != 0x09}  # keep tabs
    table[0x7F] = "^?"
    table.update({c: "M-^" + chr(c - 0x80 + 64) for c in range(0x80, 0xA0)})
    for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028,
              0x2029, 0xFEFF):
        table[c] = f"<U+{c:04X}>"
    return table


_CONTROLS = _control_table()
_UNSAFE = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(_CONTROLS)) + "]")
_ASCII_SAFE = bytes(range(0x20, 0x7F)) + b"\t"


def visible(text: str) -> str:
    """`text` with control characters shown (`^[`, `^M`, `<U+202E>`), like `cat -v`.

    Printable text (the common case) costs one `isprintable()` call.
    """
    if text.isprintable():
        return text
    return text.translate(_CONTROLS)


def safe(texts: list[str]) -> bool:
    """Whether `visible` would leave every one of `texts` as it is: one scan of them all
    at C speed (the live lines' hot path: a 200-host stream must not get slower)."""
    probe = "".join(texts)
    if probe.isascii():
        return not probe.encode("ascii").translate(None, _ASCII_SAFE)
    return _UNSAFE.search(probe) is None


def split_lines(text: str) -> list[str]:
    """Lines on `\\n` only (a `\\r` stays in its line, to be shown as `^M`); the final
    newline ends the last line, it does not start an empty one."""
    if not text:
        return []
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n")


@dataclass(frozen=True)
class Body:
    """A host's output lines as shown: a marker where cut, then the last lines."""

    out: list[str]  # stdout lines (already visible())
    err: list[str]  # stderr lines (already visible())


def body_of(r: Result, *, streamed: bool = False) -> Body:
    """The lines a Result shows: stdout then stderr; hosts whose lines were shown live
    show only a failure's stderr (its stdout is already on the screen)."""
    if streamed:
        return Body([], [visible(x) for x in split_lines(r.err)] if not r.ok else [])
    return Body([visible(x) for x in split_lines(r.out)],
                [visible(x) for x in split_lines(r.err)])


def cut(lines: Sequence[tuple[str, bool]], limit: int | None
        ) -> tuple[int, list[tuple[str, bool]]]:
    """The last `limit` of `lines` (None: all), plus how many were left out before them.

    The executor's own cut markers (`… [reops: cut N bytes …] …`) are kept even when
    they fall in the part left out, so no cut is ever hidden.
    """
    if limit is None or len(lines) <= limit:
        return 0, list(lines)
    hidden, shown = lines[:len(lines) - limit], list(lines[len(lines) - limit:])
    markers = [x for x in hidden if _CUT_MARKER.match(x[0])]
    return len(hidden) - len(markers), [*markers, *shown]


@dataclass
class Block:
    """Results whose shown output is identical (same op, status, exit code, change)."""

    first: Result
    body: Body
    results: list[Result] = field(default_factory=list)

    @property
    def hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.results:
            seen.setdefault(r.host)
        return list(seen)


def key_of(r: Result, body: Body) -> tuple[object, ...]:
    """What must match for two Results to share a block: status and exit code included, so
    an ok host and a failed one with the same text never merge."""
    return (r.op, r.status, r.code, r.changed, dry_run_command(r) is not None,
            tuple(body.out), tuple(body.err))


def gather(items: Iterable[tuple[Result, Body]], *, together: bool = True) -> list[Block]:
    """Blocks in natural order of their first host; `together=False`: one per Result."""
    blocks: dict[object, Block] = {}
    ordered = sorted(items, key=lambda rb: natural_key(rb[0].host))
    out: list[Block] = []
    for r, body in ordered:
        k: object = key_of(r, body) if together else id(r)
        block = blocks.get(k)
        if block is None:
            block = blocks[k] = Block(r, body)
            out.append(block)
        block.results.append(r)
    return out
