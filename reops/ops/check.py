"""Check mode: ask a host, with read-only commands, whether an op WOULD change it.

An op that can be checked carries a `Check` (see `Op.check`): a `probe` op that only
reads (file state, `dpkg-query`, `systemctl is-active` …) and an `answer` that turns the
probe's output into a `CheckReport` — whether anything would change and a diff a person
can read (a unified diff for text files). The diff is computed HERE, on the controller,
from the file's current content and the wanted one, so the host needs no `diff` tool.
With `diff=False` (`--no-diff`) probes fetch no content at all: only sha256 sums leave
the host, so a template holding secrets is compared without its text being shown.
An op without a Check (`exec`) cannot be checked: it "would run", counted as a change.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from reops.core.model import Host
from reops.ops.text import EX_NOPERM, MARK, fail, q, script, sections

if TYPE_CHECKING:
    from reops.ops.base import Op

#: biggest file whose content a probe fetches for a diff (bigger: compared by sha256 only)
MAX_DIFF_BYTES = 256 * 1024


class CheckReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a check found on one host: would the op change it, and how (a readable diff)."""

    changes: bool
    diff: str = ""


Answer = Callable[[Host, str, bool], CheckReport]


def no_change(host: Host, out: str, diff: bool) -> CheckReport:
    """The answer of a query: it only reads, so it changes nothing."""
    return CheckReport(changes=False)


@dataclass(frozen=True, slots=True)
class Check:
    """How to check an op: `probe(diff)` is the read-only op to run (None: the op itself,
    which only reads), `answer(host, probe stdout, diff)` the report."""

    probe: Callable[[bool], Op] | None = None
    answer: Answer = no_change


#: the Check of an op that only reads (ls, grep, facts, status …): run it, nothing changes
QUERY = Check()


def always(what: str, probe: Callable[[bool], Op]) -> Check:
    """A Check that reaches the host with `probe` (it must exist, be reachable) and then
    always reports `what` as a change (restart, reload, reboot: they always act)."""
    return Check(probe=probe, answer=lambda host, out, diff: CheckReport(changes=True,
                                                                          diff=what))


# --- files: the current state of one path, and how it differs from the wanted one ---


def probe_file(path: str, fetch: bool, *, into_dir: str = "") -> str:
    """A read-only script printing the state of `path`: absent, dir, or stat + sha256
    (+ its content base64 when `fetch` and small). `into_dir`: when `path` is a directory,
    look at `path/into_dir` (an upload of a file into a directory)."""
    into = (f'[ -d "$f" ] && f="$f"/{q(into_dir)}' if into_dir else "")
    return script(
        f"f={q(path)}",
        into,
        f'if [ ! -e "$f" ] && [ ! -L "$f" ]; then echo "{MARK} absent"; exit 0; fi',
        f'if [ -d "$f" ]; then echo "{MARK} dir"; stat -c "%a %U %G 0" -- "$f"; exit 0; fi',
        '[ -r "$f" ] || ' + fail(EX_NOPERM, f"cannot read {path} to compare it "
                                 "(run with --sudo)"),
        f'echo "{MARK} stat"',
        'stat -L -c "%a %U %G %s" -- "$f"',
        f'echo "{MARK} sha256"',
        '{ sha256sum < "$f" || shasum -a 256 < "$f"; } 2>/dev/null | cut -d " " -f 1',
        (f'if [ "$(stat -L -c %s -- "$f")" -le {MAX_DIFF_BYTES} ]; then '
         f'echo "{MARK} content"; base64 < "$f"; fi') if fetch else "",
    )


class FileState(msgspec.Struct, frozen=True, kw_only=True):
    """A remote path as a probe saw it."""

    kind: str  # absent | dir | file
    mode: str = ""
    owner: str = ""
    group: str = ""
    size: int = 0
    sha256: str = ""
    content: bytes | None = None


def parse_file(out: str) -> FileState:
    """A `probe_file` script's output into a FileState."""
    parts = sections(out)
    if "absent" in parts:
        return FileState(kind="absent")
    kind = "dir" if "dir" in parts else "file"
    fields = (parts.get("dir") or parts.get("stat") or "").split()
    mode, owner, group, size = [*fields, "", "", "", "0"][:4]
    content = parts.get("content")
    return FileState(kind=kind, mode=mode, owner=owner, group=group,
                     size=int(size) if size.isdigit() else 0,
                     sha256=parts.get("sha256", "").strip(),
                     content=None if content is None else base64.b64decode(content))


def text_of(data: bytes) -> str | None:
    """`data` as text, or None for binary content (NUL bytes, not UTF-8)."""
    if b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def unified(label: str, old: bytes | None, new: bytes) -> str:
    """A unified diff of `old` (None: absent) → `new`, or a one-line note for binaries."""
    import difflib  # (here: --check only; every exec would load it)

    before = text_of(old) if old is not None else ""
    after = text_of(new)
    if before is None or after is None:
        return f"binary {label} differs ({0 if old is None else len(old)} → {len(new)} bytes)"
    lines = difflib.unified_diff(before.splitlines(keepends=True),
                                 after.splitlines(keepends=True),
                                 "/dev/null" if old is None else f"{label} (now)",
                                 f"{label} (wanted)")
    return "".join(x if x.endswith("\n") else x + "\n\\ No newline at end of file\n"
                   for x in lines).rstrip("\n")


def file_report(label: str, state: FileState, want: bytes | None, diff: bool, *,
                mode: int | None = None, owner: str | None = None,
                group: str | None = None) -> CheckReport:
    """Would writing `want` (None: content not managed) with mode/owner/group change the
    file in `state`? `label` names it in the diff (`web1:/etc/app.conf`)."""
    import hashlib  # (here: --check only; every exec would load it)

    notes: list[str] = []
    if state.kind == "dir" and want is not None:
        return CheckReport(changes=True, diff=f"{label} is a directory: the write would fail")
    if state.kind == "absent":
        if want is None:
            notes.append(f"would create {label}")
        elif diff:
            notes.append(f"would create {label}")
            notes.append(unified(label, None, want))
        else:
            notes.append(f"would create {label} ({len(want)} bytes; diff hidden)")
    elif want is not None and state.sha256 != hashlib.sha256(want).hexdigest():
        if not diff:
            notes.append(f"{label}: content differs ({state.size} → {len(want)} bytes; "
                         "diff hidden)")
        elif state.content is None:
            notes.append(f"{label}: content differs ({state.size} → {len(want)} bytes; "
                         f"over {MAX_DIFF_BYTES} bytes, no diff)")
        else:
            notes.append(unified(label, state.content, want))
    if mode is not None and (state.kind == "absent" or state.mode != format(mode, "o")):
        notes.append(f"{label}: mode {state.mode or '-'} → {format(mode, 'o')}")
    if owner and (state.kind == "absent" or state.owner != owner):
        notes.append(f"{label}: owner {state.owner or '-'} → {owner}")
    if group and (state.kind == "absent" or state.group != group):
        notes.append(f"{label}: group {state.group or '-'} → {group}")
    return CheckReport(changes=bool(notes), diff="\n".join(notes))


# --- trees (upload of a directory, sync): which files would be created, differ, go ---


def probe_tree(path: str) -> str:
    """A read-only script listing `path`'s regular files with their sha256 (relative)."""
    return script(
        f"d={q(path)}",
        f'if [ ! -e "$d" ]; then echo "{MARK} absent"; exit 0; fi',
        f'[ -d "$d" ] || {{ echo "{MARK} notdir"; exit 0; }}',
        f'echo "{MARK} files"',
        'cd -- "$d" && find . -type f -exec sha256sum -- {} + 2>/dev/null',
    )


def local_tree(local: str) -> dict[str, str]:
    """{relative path: sha256} of the files in the local directory `local`."""
    import hashlib  # (here: --check only; every exec would load it)

    root = Path(local).expanduser()
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tree_report(label: str, out: str, want: Mapping[str, str], *, delete: bool
                ) -> CheckReport:
    """Which files a copy of `want` onto the remote tree in `out` would touch."""
    parts = sections(out)
    if "notdir" in parts:
        return CheckReport(changes=True, diff=f"{label} is not a directory: would replace it")
    have: dict[str, str] = {}
    for line in parts.get("files", "").splitlines():
        sha, _, rel = line.strip().partition("  ")
        if rel:
            have[rel[2:] if rel.startswith("./") else rel] = sha
    notes = []
    for rel, sha in want.items():
        if rel not in have:
            notes.append(f"would create {label}/{rel}")
        elif have[rel] != sha:
            notes.append(f"differs {label}/{rel}")
    if delete:
        notes += [f"would delete {label}/{rel}" for rel in sorted(have) if rel not in want]
    return CheckReport(changes=bool(notes), diff="\n".join(notes))


def marked(out: str, name: str) -> bool:
    """Whether the probe printed the marker `name`."""
    return name in sections(out)
