"""Lab host names that resolve locally: one marked block per lab in /etc/hosts.

Real fleets are reached by name, so the lab gives each host one too
(``web1.<lab-id>.lab.reops.test``). ``.test`` is reserved (RFC 2606): such a name never
means anything to a real resolver, and the random lab id keeps two labs running at once
apart. The names live in /etc/hosts because that is what every resolver on the machine
reads first (``hosts: files dns``): ``ssh``, asyncssh and the lab's own sshd all agree.

Each lab owns exactly one block, between begin/end lines that name its root directory::

    # >>> reops lab /work/lab (k3f9a2)
    127.0.1.1 web1.k3f9a2.lab.reops.test
    # <<< reops lab /work/lab

Edits happen under an flock on the sibling ``/etc/hosts.reops.lock`` (the hosts file
itself is replaced, so a lock on it would die with the old inode; tests that edit the file
take the same lock) and go to a temporary file renamed over the original: a reader never
sees half a file. Where the hosts file is a bind mount (containers) a rename fails with
EBUSY, and the file is rewritten in place.

A crashed lab leaves its block behind; its next ``up`` or ``down`` replaces or removes it,
and any lab's ``up`` drops blocks whose root no longer holds a lab (no state.json).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from reops.lab.setup import LabError

HOSTS_FILE = Path("/etc/hosts")
#: every lab name ends in this; `.test` never reaches a real resolver with meaning
DOMAIN = "lab.reops.test"
BEGIN = "# >>> reops lab "
END = "# <<< reops lab "
_ID = re.compile(r"[a-z0-9]{1,16}")


def new_lab_id() -> str:
    """A short random label (6 hex digits) that tells this lab's names from any other's."""
    return secrets.token_hex(3)


def host_fqdn(host: str, lab_id: str) -> str:
    """The name a lab host gets: ``web1.<lab-id>.lab.reops.test``."""
    if not _ID.fullmatch(lab_id):
        raise LabError(f"lab id {lab_id!r} must be 1-16 lowercase letters or digits")
    return f"{host}.{lab_id}.{DOMAIN}"


def can_write(hosts_file: Path = HOSTS_FILE) -> bool:
    """Whether this process may edit the hosts file (in practice: whether it is root)."""
    return os.access(hosts_file, os.W_OK) and os.access(hosts_file.parent, os.W_OK)


def write_block(
    root: Path, lab_id: str, entries: Mapping[str, str], hosts_file: Path = HOSTS_FILE
) -> None:
    """Make `entries` (name -> address) the block of the lab at `root`, replacing any old
    block of that root, and drop blocks of labs that are gone (no state.json left)."""
    key = _root_key(root)
    lines = [f"{BEGIN}{key} ({lab_id})\n"]
    lines += [f"{address} {name}\n" for name, address in entries.items()]
    lines.append(f"{END}{key}\n")
    with _locked(hosts_file):
        kept = _without(_read(hosts_file), lambda r: r == key or not _lab_alive(r))
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        _replace(hosts_file, "".join(kept + lines))


def remove_block(root: Path, hosts_file: Path = HOSTS_FILE) -> bool:
    """Remove the block of the lab at `root`; False when there was none."""
    key = _root_key(root)
    with _locked(hosts_file):
        old = _read(hosts_file)
        new = _without(old, lambda r: r == key)
        if new == old:
            return False
        _replace(hosts_file, "".join(new))
    return True


def blocks(hosts_file: Path = HOSTS_FILE) -> dict[str, dict[str, str]]:
    """Every lab block in the file: root -> {name: address} (for status and tests)."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in _read(hosts_file):
        if line.startswith(BEGIN):
            current = out.setdefault(_marker_root(line, BEGIN), {})
        elif line.startswith(END):
            current = None
        elif current is not None and (fields := line.split()) and len(fields) >= 2:
            for name in fields[1:]:
                current[name] = fields[0]
    return out


# -- internals ---------------------------------------------------------------------------


def _root_key(root: Path) -> str:
    key = str(Path(root).absolute())
    if "\n" in key or "\r" in key:
        raise LabError(f"a lab directory with a line break in its name cannot be named: {key!r}")
    return key


def _marker_root(line: str, marker: str) -> str:
    rest = line[len(marker) :].rstrip("\n")
    if marker == BEGIN and rest.endswith(")") and " (" in rest:
        rest = rest[: rest.rindex(" (")]
    return rest


def _lab_alive(root: str) -> bool:
    return (Path(root) / "state.json").exists()


def _without(lines: list[str], drop: Callable[[str], bool]) -> list[str]:
    """`lines` minus the blocks whose root `drop(root)` says to drop (an unterminated
    block, from a crash mid-write of a foreign tool, runs to the end of the file)."""
    out: list[str] = []
    skipping: str | None = None
    for line in lines:
        if skipping is None and line.startswith(BEGIN):
            root = _marker_root(line, BEGIN)
            if drop(root):
                skipping = root
                continue
        if skipping is not None:
            if line.startswith(END) and _marker_root(line, END) == skipping:
                skipping = None
            continue
        out.append(line)
    return out


def _read(hosts_file: Path) -> list[str]:
    try:
        return hosts_file.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise LabError(f"cannot read {hosts_file}: {e.strerror}") from None


@contextlib.contextmanager
def _locked(hosts_file: Path) -> Iterator[None]:
    lock = hosts_file.with_name(f"{hosts_file.name}.reops.lock")  # shared with tests/
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise LabError(f"cannot lock {hosts_file} ({lock}: {e.strerror}); lab host names "
                       "need root (`reops lab up --no-names` uses IP addresses)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace(hosts_file: Path, text: str) -> None:
    """Atomically replace the file (same mode and owner); in place if it is a mount point."""
    try:
        st = hosts_file.stat()
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o644, None
    tmp = hosts_file.with_name(f".{hosts_file.name}.reops-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        try:
            os.replace(tmp, hosts_file)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                raise
            hosts_file.write_text(text)  # a bind-mounted file: rewrite in place
    except OSError as e:
        raise LabError(f"cannot write {hosts_file}: {e.strerror} (lab host names go there; "
                       "`reops lab up --no-names` uses IP addresses)") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
