"""Files: transfers (SFTP, rsync, the agent's file functions) and remote file operations.

Transfers are `upload`/`download`/`sync` ops the source carries out; everything else is
one idempotent shell script per host that reports changed/unchanged markers.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from reops.core.model import Host
from reops.ops.base import Op, Parser
from reops.ops.check import (
    QUERY,
    Check,
    CheckReport,
    file_report,
    local_tree,
    parse_file,
    probe_file,
    probe_tree,
    tree_report,
)
from reops.ops.text import (
    CHANGED,
    EX_DATAERR,
    EX_NOINPUT,
    MARK,
    UNCHANGED,
    changed_marker,
    fail,
    q,
    script,
    sections,
    without_markers,
    words,
)


def upload(local: str, remote: str, *, mode: int | None = None) -> Op:
    """Copy a local file (or directory, recursively) to `remote` on each host."""
    if os.path.isdir(local):
        check = Check(probe=lambda diff: Op(name="upload", command=probe_tree(remote)),
                      answer=lambda h, out, diff: tree_report(
                          f"{h.name}:{remote}", out, local_tree(local), delete=False))
    else:
        check = Check(
            probe=lambda diff: Op(name="upload", command=probe_file(
                remote, diff, into_dir=os.path.basename(local))),
            answer=lambda h, out, diff: file_report(
                f"{h.name}:{remote}", parse_file(out), Path(local).read_bytes(), diff,
                mode=mode))
    return Op(name="upload", kind="upload", local=local, remote=remote, mode=mode,
              check=check)


def download(remote: str, local: str) -> Op:
    """Copy `remote` from each host into `local/<host>/` (one folder per host)."""
    return Op(name="download", kind="download", local=local, remote=remote,
              check=Check(probe=lambda diff: Op(name="download", command=probe_file(
                  remote, False)), answer=lambda h, out, diff: _download_report(
                      f"{h.name}:{remote}", out)))


def _download_report(label: str, out: str) -> CheckReport:
    """A download changes no host; a missing remote file would fail it: an error."""
    if parse_file(out).kind == "absent":
        raise ValueError(f"{label}: no such file (the download would fail)")
    return CheckReport(changes=False)


# --- operations on the host's filesystem (one script each; `changed` from markers) ---


class GrepMatch(msgspec.Struct, frozen=True, kw_only=True):
    """One matching line (a row in a polars table)."""

    path: str
    line: int
    text: str


def _owner_mode(var: str, mode: int | None, owner: str | None, group: str | None) -> list[str]:
    """Lines that fix mode/owner/group of "$var" only where they differ (then: changed)."""
    lines = []
    if mode is not None:
        m = format(mode, "o")
        lines.append(f'[ "$(stat -c %a -- "${var}")" = {m} ] || '
                     f'{{ chmod {m} -- "${var}" && {CHANGED}; }} || exit')
    if owner:
        lines.append(f'[ "$(stat -c %U -- "${var}")" = {q(owner)} ] || '
                     f'{{ chown {q(owner)} -- "${var}" && {CHANGED}; }} || exit')
    if group:
        lines.append(f'[ "$(stat -c %G -- "${var}")" = {q(group)} ] || '
                     f'{{ chgrp {q(group)} -- "${var}" && {CHANGED}; }} || exit')
    return lines


def _shell(name: str, cmd: str | Callable[[Host], str], sudo: bool, become_user: str | None,
           parse: Parser | None = None, ok_codes: tuple[int, ...] = (0,)) -> Op:
    return Op(name=name, command=cmd, sudo=sudo, become_user=become_user, parse=parse,
              changed=changed_marker, ok_codes=ok_codes)


def mkdir(path: str, *, mode: int | None = None, owner: str | None = None,
          group: str | None = None, sudo: bool = False, become_user: str | None = None) -> Op:
    """Make directory `path` (and parents) with `mode`/`owner`/`group`; idempotent."""
    cmd = script(
        f"p={q(path)}",
        f'if [ -d "$p" ]; then {UNCHANGED}; else mkdir -p -- "$p" && {CHANGED} || exit; fi',
        *_owner_mode("p", mode, owner, group),
    )
    return _shell("files.mkdir", cmd, sudo, become_user).with_(check=Check(
        probe=lambda diff: Op(name="files.mkdir", command=probe_file(path, False)),
        answer=lambda h, out, diff: _dir_report(f"{h.name}:{path}", out, mode, owner,
                                                group)))


def _dir_report(label: str, out: str, mode: int | None, owner: str | None,
                group: str | None) -> CheckReport:
    state = parse_file(out)
    if state.kind == "file":
        return CheckReport(changes=True, diff=f"{label} is a file: mkdir would fail")
    report = file_report(label, state, None, False, mode=mode, owner=owner, group=group)
    if state.kind == "absent":
        return CheckReport(changes=True, diff=report.diff.replace(
            f"would create {label}", f"would create directory {label}"))
    return report


def rm(*paths: str, recursive: bool = False, sudo: bool = False,
       become_user: str | None = None) -> Op:
    """Remove `paths` (directories only with `recursive`); absent paths are a no-op."""
    if not paths:
        raise ValueError("rm needs at least one path")
    flags = "-rf" if recursive else "-f"
    cmd = script(
        "found=",
        f"for p in {words(paths)}; do",
        f'  if [ -e "$p" ] || [ -L "$p" ]; then found=1; rm {flags} -- "$p" || exit; fi',
        "done",
        f'if [ -n "$found" ]; then {CHANGED}; else {UNCHANGED}; fi',
    )
    probe = script(f"for p in {words(paths)}; do",
                   f'  if [ -e "$p" ] || [ -L "$p" ]; then echo "{MARK} exists"; '
                   'printf "%s\\n" "$p"; fi',
                   "done")

    def answer(h: Host, out: str, diff: bool) -> CheckReport:
        found = [p for p in paths if p in sections_all(out, "exists")]
        return CheckReport(changes=bool(found),
                           diff="\n".join(f"would remove {h.name}:{p}" for p in found))

    return _shell("files.rm", cmd, sudo, become_user).with_(
        check=Check(probe=lambda diff: Op(name="files.rm", command=probe), answer=answer))


def sections_all(out: str, name: str) -> list[str]:
    """The bodies of every `name` section in `out` (sections() keeps only the last)."""
    bodies, current = [], None
    for line in out.splitlines():
        if line.startswith(MARK):
            current = line[len(MARK):].strip() == name
        elif current:
            bodies.append(line)
    return bodies


def cp(src: str, dest: str, *, recursive: bool = False, sudo: bool = False,
       become_user: str | None = None) -> Op:
    """Copy `src` to `dest` on the host (into it if a directory); same content: no-op."""
    flags = "-pR" if recursive else "-p"
    cmd = script(
        f"src={q(src)}; dst={q(dest)}",
        '[ -e "$src" ] || ' + fail(EX_NOINPUT, f"no such file: {src}"),
        'if [ -d "$dst" ]; then target="$dst/${src##*/}"; else target="$dst"; fi',
        'if [ -f "$src" ] && [ -f "$target" ] && cmp -s "$src" "$target"; then '
        f"{UNCHANGED}",
        f'else cp {flags} -- "$src" "$dst" && {CHANGED}; fi',
    )
    probe = script(
        f"src={q(src)}; dst={q(dest)}",
        '[ -e "$src" ] || ' + fail(EX_NOINPUT, f"no such file: {src}"),
        'if [ -d "$dst" ]; then target="$dst/${src##*/}"; else target="$dst"; fi',
        'if [ -f "$src" ] && [ -f "$target" ] && cmp -s "$src" "$target"; then '
        f'echo "{MARK} same"; else echo "{MARK} differs"; printf "%s\\n" "$target"; fi',
    )

    def answer(h: Host, out: str, diff: bool) -> CheckReport:
        parts = sections(out)
        if "same" in parts:
            return CheckReport(changes=False)
        target = parts.get("differs", dest).strip()
        return CheckReport(changes=True, diff=f"would copy {h.name}:{src} → {target}")

    return _shell("files.cp", cmd, sudo, become_user).with_(
        check=Check(probe=lambda diff: Op(name="files.cp", command=probe), answer=answer))


def grep(pattern: str, *paths: str, recursive: bool = False, ignore_case: bool = False,
         fixed: bool = False, sudo: bool = False, become_user: str | None = None) -> Op:
    """Lines matching `pattern` (ERE; `fixed` for a plain string): list of GrepMatch.

    No match is success with an empty list (grep's exit 1); a missing or unreadable path
    is a failure (exit 2) with grep's message.
    """
    if not paths:
        raise ValueError("grep needs at least one path")
    flags = "-nH" + ("r" if recursive else "") + ("i" if ignore_case else "")
    flags += "F" if fixed else "E"
    cmd = f"grep {flags} -e {q(pattern)} -- {words(paths)}"
    op = _shell("files.grep", cmd, sudo, become_user, parse=parse_grep, ok_codes=(0, 1))
    return op.with_(changed=None, check=QUERY)


_GREP = re.compile(r"^(?P<path>.*?):(?P<line>\d+):(?P<text>.*)$")


def parse_grep(out: str) -> list[GrepMatch]:
    """`grep -nH` output into GrepMatch rows."""
    rows = []
    for line in out.splitlines():
        m = _GREP.match(line)
        if m:
            rows.append(GrepMatch(path=m["path"], line=int(m["line"]), text=m["text"]))
    return rows


def extract(archive: str, dest: str, *, strip_components: int = 0, creates: str | None = None,
            sudo: bool = False, become_user: str | None = None) -> Op:
    """Unpack a tar archive (any compression tar detects) on the host into `dest`.

    `creates`: a path the archive makes; when it exists the op is a no-op. `data` is the
    list of extracted entries.
    """
    strip = f" --strip-components={int(strip_components)}" if strip_components else ""
    cmd = script(
        f"a={q(archive)}; d={q(dest)}",
        f"if [ -e {q(creates)} ]; then {UNCHANGED}; exit 0; fi" if creates else "",
        '[ -r "$a" ] || ' + fail(EX_NOINPUT, f"archive not found or not readable: {archive}"),
        'mkdir -p -- "$d" || exit',
        f'tar -xvf "$a" -C "$d"{strip} || exit',
        CHANGED,
    )
    probe = script(
        f"if [ -e {q(creates)} ]; then echo \"{MARK} done\"; exit 0; fi" if creates else "",
        f"[ -r {q(archive)} ] || "
        + fail(EX_NOINPUT, f"archive not found or not readable: {archive}"),
    )
    return _shell("files.extract", cmd, sudo, become_user,
                  parse=lambda out: [e for e in without_markers(out).splitlines() if e]
                  ).with_(check=Check(
                      probe=lambda diff: Op(name="files.extract", command=probe),
                      answer=lambda h, out, diff: CheckReport(changes=False)
                      if "done" in sections(out) else CheckReport(
                          changes=True, diff=f"would extract {archive} into {h.name}:{dest}")))


def line_in_file(path: str, line: str, *, regex: str | None = None, present: bool = True,
                 create: bool = False, sudo: bool = False,
                 become_user: str | None = None) -> Op:
    """Ensure `line` is in (or, `present=False`, absent from) the file at `path`.

    With `regex` (ERE), the first matching line is replaced by `line` (or, when absent,
    every matching line is removed); otherwise `line` is appended. Running it twice changes
    nothing the second time. The file keeps its inode, owner and mode.
    """
    if "\n" in line:
        raise ValueError("line_in_file manages one line; `line` contains a newline")
    missing = (': > "$f" || exit' if create
               else fail(EX_NOINPUT, f"no such file: {path} (create=True makes it)"))
    has_line = 'grep -qxF -e "$line" -- "$f"'
    has_re = '[ -n "$re" ] && grep -qE -e "$re" -- "$f"'
    rewrite = ('tmp=$(mktemp) && LINE="$line" RE="$re" awk {prog} "$f" > "$tmp" '
               '&& cat "$tmp" > "$f"; rc=$?; rm -f "$tmp"; [ $rc = 0 ] || exit $rc')
    if present:
        replace = q('BEGIN { l = ENVIRON["LINE"]; r = ENVIRON["RE"] } '
                    '!done && $0 ~ r { print l; done = 1; next } { print }')
        body = [
            f"if {has_line}; then {UNCHANGED}",
            f"elif {has_re}; then",
            "  " + rewrite.format(prog=replace),
            f"  {CHANGED}",
            "else",
            '  if [ -s "$f" ] && [ -n "$(tail -c 1 -- "$f")" ]; then echo >> "$f"; fi',
            f'  printf "%s\\n" "$line" >> "$f" && {CHANGED}',
            "fi",
        ]
    else:
        drop = q('BEGIN { l = ENVIRON["LINE"]; r = ENVIRON["RE"] } '
                 '$0 == l || (r != "" && $0 ~ r) { next } { print }')
        body = [
            f"if {has_line} || {{ {has_re}; }}; then",
            "  " + rewrite.format(prog=drop),
            f"  {CHANGED}",
            f"else {UNCHANGED}; fi",
        ]
    cmd = script(
        f"f={q(path)}",
        f"line={q(line)}",
        f"re={q(regex or '')}",
        f'[ -e "$f" ] || {missing}',
        *body,
    )
    return _shell("files.line_in_file", cmd, sudo, become_user).with_(check=Check(
        probe=lambda diff: Op(name="files.line_in_file", command=script(
            f"f={q(path)}", f"line={q(line)}", f"re={q(regex or '')}",
            f'[ -e "$f" ] || {{ echo "{MARK} absent"; exit 0; }}' if create else
            f'[ -e "$f" ] || {missing}',
            f'if {has_line}; then echo "{MARK} has_line"; fi',
            f'if {has_re}; then echo "{MARK} has_re"; fi',
            probe_file(path, diff).partition("\n")[2])),
        answer=lambda h, out, diff: _line_report(f"{h.name}:{path}", out, line, regex,
                                                 present, diff)))


def _line_report(label: str, out: str, line: str, regex: str | None, present: bool,
                 diff: bool) -> CheckReport:
    """Would `line_in_file` change the file? From the probe's grep markers (what the real
    script tests); the diff from simulating its edit on the fetched content."""
    parts = sections(out)
    has_line, has_re = "has_line" in parts, "has_re" in parts
    state = parse_file(out)
    if state.kind == "absent":
        return file_report(label, state, (line + "\n").encode() if present else b"", diff)
    if (present and has_line) or (not present and not has_line and not has_re):
        return CheckReport(changes=False)
    if not diff or state.content is None:
        what = ("replace the line matching the regex" if present and has_re else
                "append the line" if present else "remove matching lines")
        return CheckReport(changes=True, diff=f"{label}: would {what} (diff hidden)")
    text = state.content.decode(errors="replace")
    rows = text.splitlines()
    if present and has_re:
        at = next(i for i, r in enumerate(rows) if re.search(regex or "", r))
        rows[at] = line
        new = "\n".join(rows) + "\n"
    elif present:
        new = text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"
    else:
        new = "".join(r + "\n" for r in rows
                      if r != line and not (regex and re.search(regex, r)))
    return file_report(label, state, new.encode(), True)


def template(src: str, remote: str, *, vars: Mapping[str, Any] | None = None,
             engine: Engine = "template", mode: int | None = None, owner: str | None = None,
             group: str | None = None, sudo: bool = False,
             become_user: str | None = None) -> Op:
    """Render the local template `src` with each host's vars; write it only if it differs.

    Variables: `host` (name), `address`, the host's inventory vars, then `vars`.
    `engine="template"` is string.Template (`$name`; `$$` for a literal `$`) and
    `engine="format"` is str.format_map (`{name}`). One round trip: the per-host script
    compares the remote sha256 with the rendered text's and only then writes (atomically,
    via a temporary file and mv). A missing variable fails that host with exit 65.
    """
    text = Path(src).read_text()
    extra = dict(vars or {})

    def rendered(host: Host) -> str:
        values = {"host": host.name, "address": host.address, **host.vars, **extra}
        return render(text, values, engine)

    def command(host: Host) -> str:
        try:
            body = rendered(host)
        except (KeyError, ValueError, IndexError) as e:
            return fail(EX_DATAERR, f"template {src} for {host.name}: cannot render: {e!r}")
        return write_script(remote, body.encode(), mode=mode, owner=owner, group=group)

    def answer(host: Host, out: str, diff: bool) -> CheckReport:
        try:
            body = rendered(host)
        except (KeyError, ValueError, IndexError) as e:
            raise ValueError(f"template {src} for {host.name}: cannot render: {e!r}") from None
        return file_report(f"{host.name}:{remote}", parse_file(out), body.encode(), diff,
                           mode=mode, owner=owner, group=group)

    return _shell("files.template", command, sudo, become_user).with_(check=Check(
        probe=lambda diff: Op(name="files.template", command=probe_file(remote, diff)),
        answer=answer))


def sync(local: str, remote: str, *, delete: bool = False, exclude: Sequence[str] = (),
         sudo: bool = False, become_user: str | None = None) -> Op:
    """Make `remote` a copy of the local directory or file `local` (rsync, else SFTP).

    A transfer op: `command` is the PRECHECK the source runs on the host first; it prints
    `rsync` when the host has rsync. Then the source runs `rsync_argv(op, host, ...)`
    locally when this machine has rsync too (and parses its stdout with `op.parse`),
    else it uploads recursively over SFTP. See rsync_argv.
    """
    precheck = "if command -v rsync >/dev/null 2>&1; then echo rsync; else echo sftp; fi"
    return Op(name="files.sync", kind="sync", local=local, remote=remote, command=precheck,
              sudo=sudo, become_user=become_user, parse=parse_rsync,
              kwargs={"delete": delete, "exclude": list(exclude)},
              changed=lambda code, out: bool(parse_rsync(out)),
              check=_sync_check(local, remote, delete, exclude))


def _sync_check(local: str, remote: str, delete: bool, exclude: Sequence[str]) -> Check:
    """sync's check: the remote tree's sha256 sums against the local tree's (files only;
    `exclude` patterns are matched on the relative path and on the file name)."""
    import fnmatch

    def kept(rel: str) -> bool:
        return not any(fnmatch.fnmatch(rel, x) or fnmatch.fnmatch(os.path.basename(rel), x)
                       for x in exclude)

    def answer(h: Host, out: str, diff: bool) -> CheckReport:
        label = f"{h.name}:{remote}"
        if not os.path.isdir(local):
            return file_report(label, parse_file(out), Path(local).read_bytes(), diff)
        want = {rel: sha for rel, sha in local_tree(local).items() if kept(rel)}
        parts = sections(out)
        if "files" in parts:  # remote files that are excluded are neither compared nor gone
            parts_out = "\n".join(x for x in out.splitlines()
                                  if x.startswith(MARK) or kept(x.partition("  ")[2][2:]))
            return tree_report(label, parts_out, want, delete=delete)
        return tree_report(label, out, want, delete=delete)

    def probe(diff: bool) -> Op:
        return Op(name="files.sync", command=probe_tree(remote) if os.path.isdir(local)
                  else probe_file(remote, diff, into_dir=os.path.basename(local)))

    return Check(probe=probe, answer=answer)


class RsyncChange(msgspec.Struct, frozen=True, kw_only=True):
    """One path rsync changed (`--itemize-changes`: `>f+++++++++`, `*deleting`, …)."""

    change: str
    path: str


def parse_rsync(out: str) -> list[RsyncChange]:
    """rsync `--itemize-changes` output into the paths that changed (unchanged: skipped)."""
    rows = []
    for line in out.splitlines():
        code, _, path = line.partition(" ")
        if len(code) < 2 or not path.strip():
            continue
        if code[0] in "<>ch*" or (code[0] == "." and code[2:].strip(".")):
            rows.append(RsyncChange(change=code, path=path.strip()))
    return rows


def rsync_argv(op: Op, host: Host, *, ssh_options: Sequence[str] = ()) -> list[str]:
    """The LOCAL rsync command line a source runs for a `sync` op on `host`.

    `ssh_options` carries the source's connection policy (e.g. `-o StrictHostKeyChecking=
    accept-new`, `-o ConnectTimeout=10`). A local directory is synced by its contents, so
    both transports mean "remote becomes a copy of local".
    """
    ssh = ["ssh", "-p", str(host.port), "-o", "BatchMode=yes"]
    if host.key:
        ssh += ["-i", os.path.expanduser(host.key)]
    if host.known_hosts:
        ssh += ["-o", f"UserKnownHostsFile={host.known_hosts}"]
    argv = ["rsync", "-a", "--itemize-changes", "-e", shlex.join([*ssh, *ssh_options])]
    if op.kwargs.get("delete"):
        argv.append("--delete")
    for pattern in op.kwargs.get("exclude", ()):
        argv += ["--exclude", pattern]
    if op.sudo or op.become_user:
        who = f"-u {shlex.quote(op.become_user)} " if op.become_user else ""
        argv += ["--rsync-path", f"sudo -n {who}rsync"]
    address = f"[{host.address}]" if ":" in host.address else host.address
    target = f"{host.user}@{address}" if host.user else address
    local = op.local.rstrip("/") + "/" if os.path.isdir(op.local) else op.local
    return [*argv, "--", local, f"{target}:{op.remote}"]


Engine = Literal["template", "format"]

#: biggest heredoc body sent in one command: sshd runs `sh -c COMMAND` and Linux caps one
#: argument at 128 KiB (MAX_ARG_STRLEN); sudo's quoting needs headroom
MAX_INLINE_BYTES = 100_000


def render(text: str, values: Mapping[str, Any], engine: Engine = "template") -> str:
    """Render `text` with `values` (string.Template or str.format_map); strict."""
    if engine == "format":
        return text.format_map(values)
    return string.Template(text).substitute(values)


def write_script(remote: str, data: bytes, *, mode: int | None = None,
                 owner: str | None = None, group: str | None = None) -> str:
    """A script writing `data` to `remote` unless the remote sha256 already matches.

    Text ending in a newline goes in a quoted heredoc (readable in --dry-run); anything
    else as base64.
    """
    want = hashlib.sha256(data).hexdigest()
    as_text = data.endswith(b"\n") and b"\0" not in data and _is_utf8(data)
    body = data.decode() if as_text else base64.encodebytes(data).decode()
    if len(body) > MAX_INLINE_BYTES:
        return fail(EX_DATAERR, f"{remote}: {len(data)} bytes is over the {MAX_INLINE_BYTES}"
                                "-byte limit of a one-round-trip write; use upload()")
    eof = "REOPS_EOF"
    while eof in body.splitlines():
        eof += "_"
    writer = "cat" if as_text else "base64 -d"
    return script(
        f"dest={q(remote)}",
        f"want={want}",
        'have=$({ sha256sum -- "$dest" || shasum -a 256 -- "$dest"; } 2>/dev/null'
        " | cut -d ' ' -f 1)",
        'if [ "$have" = "$want" ]; then',
        f"  {UNCHANGED}",
        "else",
        '  tmp="$dest.reops.$$"',
        f"  {writer} > \"$tmp\" <<'{eof}' || exit\n{body}{eof}",  # body ends in \n or is ""
        '  if [ -e "$dest" ]; then chmod "$(stat -c %a -- "$dest")" "$tmp";'
        ' chown "$(stat -c %u:%g -- "$dest")" "$tmp" 2>/dev/null; fi',
        '  mv -f -- "$tmp" "$dest" || { rc=$?; rm -f -- "$tmp"; exit $rc; }',
        f"  {CHANGED}",
        "fi",
        *_owner_mode("dest", mode, owner, group),
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
