"""The agent key store, laid out like salt-key's: pending/, accepted/, rejected/.

Each file is named after the agent and holds its z85 CurveZMQ public key. The directory is
the source of truth, so `reops keys` works whether or not the hub runs; the hub reads it at
each registration. The hub's own key pair lives next to it (hub.key, hub.key_secret 0600).

Enrollment keeps the FIRST key that claimed a name: a later Hello with another key for the
same pending name cannot replace it (that would let anyone swap their key in just before
`reops keys accept`); it is recorded in contested/NAME instead, and a contested name is only
accepted by fingerprint. A key may be pending under one name only, and pending/ is capped.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reops_agent.keys import load_keypair
from reops_agent.protocol import fingerprint, valid_name

_fingerprint = fingerprint  # `accept` has a parameter of that name

KeyState = Literal["pending", "accepted", "rejected"]
STATES: tuple[KeyState, ...] = ("accepted", "pending", "rejected")
#: other keys claiming a pending name (one z85 key a line)
CONTESTED = "contested"
#: contending keys remembered per name (beyond that they are only counted in the log)
MAX_CLAIMS = 8

#: what `add_pending` did: a new entry, nothing (already there), a conflict recorded (or
#: already recorded), refused because the key is pending under another name, or store full
Claim = Literal["new", "same", "contested", "known-contest", "other-name", "full"]


class ContestedName(ValueError):
    """Several keys claim a pending name: it is accepted only by fingerprint."""


def normal_fingerprint(fp: str) -> str:
    """A fingerprint compared without case and separators (as pasted from anywhere)."""
    return fp.strip().lower().replace(":", "").replace("-", "")


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One agent's key and where it stands."""

    name: str
    state: KeyState
    key: str
    contested: tuple[str, ...] = ()  # other keys claiming this pending name

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def claims(self) -> list[str]:
        """Fingerprints of every key claiming this name, the first claimant first."""
        return [fingerprint(k) for k in (self.key, *self.contested)]


class KeyStore:
    """Agent keys on disk; every change is a rename, so readers never see half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._rejected: tuple[float, frozenset[str]] = (-1.0, frozenset())
        # pending key -> name, valid while pending/ and contested/ keep these mtimes
        self._index: tuple[tuple[int, int], dict[str, str]] = ((-1, -1), {})
        # name prefix -> (accepted/'s mtime, keys accepted under names with that prefix)
        self._prefixed: dict[str, tuple[int, frozenset[str]]] = {}

    def ensure(self) -> None:
        """Create the layout (0700: key names and keys are nobody else's business)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for state in (*STATES, CONTESTED):
            (self.root / state).mkdir(exist_ok=True, mode=0o700)

    def hub_keypair(self) -> tuple[bytes, bytes]:
        """The hub's (public, secret) z85 key pair, made on first use."""
        self.ensure()
        return load_keypair(self.root, "hub")

    def hub_public_key(self) -> str:
        return self.hub_keypair()[0].decode()

    def _path(self, state: KeyState, name: str) -> Path:
        if not valid_name(name):
            raise ValueError(f"invalid agent name {name!r}")
        return self.root / state / name

    def _read(self, state: KeyState, name: str) -> str | None:
        try:
            return self._path(state, name).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _write(self, state: KeyState, name: str, key: str) -> None:
        self.ensure()
        path = self._path(state, name)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(key + "\n")
        os.replace(tmp, path)

    def entries(self, state: KeyState | None = None) -> list[KeyEntry]:
        """Every key (or those in `state`), accepted first, by name."""
        out: list[KeyEntry] = []
        for st in (state,) if state else STATES:
            folder = self.root / st
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.name.startswith(".") or not valid_name(path.name):
                    continue
                others = tuple(self.contenders(path.name)) if st == "pending" else ()
                out.append(KeyEntry(path.name, st, path.read_text().strip(), others))
        return out

    def contenders(self, name: str) -> list[str]:
        """Keys that claimed pending `name` after its first claimant, oldest first."""
        try:
            text = (self.root / CONTESTED / name).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [k for k in text.split() if k]

    def _folder_stamp(self) -> tuple[int, int]:
        stamps = []
        for folder in ("pending", CONTESTED):
            try:
                stamps.append((self.root / folder).stat().st_mtime_ns)
            except FileNotFoundError:
                stamps.append(0)
        return stamps[0], stamps[1]

    def _pending_index(self) -> dict[str, str]:
        """Pending (and contending) key -> the name it claims; re-read when a folder changes."""
        stamp = self._folder_stamp()
        if stamp != self._index[0]:
            index: dict[str, str] = {}
            for e in self.entries("pending"):
                for k in (e.key, *e.contested):
                    index.setdefault(k, e.name)
            self._index = (stamp, index)
        return self._index[1]

    def pending_name_of(self, key: str) -> str | None:
        """The name `key` is pending (or contending) under, if any."""
        return self._pending_index().get(key)

    def pending_count(self) -> int:
        """How many names are pending."""
        return len(set(self._pending_index().values()))

    def get(self, name: str) -> KeyEntry | None:
        """Where `name`'s key stands, if anywhere."""
        for st in STATES:
            key = self._read(st, name)
            if key is not None:
                return KeyEntry(name, st, key)
        return None

    def accepted_key(self, name: str) -> str | None:
        return self._read("accepted", name)

    def add_pending(self, name: str, key: str, max_pending: int = 1000) -> Claim:
        """Record `key`'s claim on `name`: the first key claiming a name keeps it."""
        first = self._read("pending", name)
        if first == key:
            return "same"
        owner = self.pending_name_of(key)
        if owner is not None and owner != name:
            return "other-name"
        if first is not None:
            others = self.contenders(name)
            if key in others:
                return "known-contest"
            if len(others) < MAX_CLAIMS:
                self._write_contested(name, [*others, key])
            return "contested"
        if self.pending_count() >= max_pending:
            return "full"
        stamp = self._folder_stamp()
        self._write("pending", name, key)
        if stamp == self._index[0]:  # nobody else changed the folder: keep the index warm
            self._index[1][key] = name
            self._index = (self._folder_stamp(), self._index[1])
        return "new"

    def _write_contested(self, name: str, keys: list[str]) -> None:
        self.ensure()
        path = self.root / CONTESTED / name
        if not valid_name(name):
            raise ValueError(f"invalid agent name {name!r}")
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text("".join(k + "\n" for k in keys))
        os.replace(tmp, path)

    def _forget_contest(self, name: str) -> None:
        if valid_name(name):
            (self.root / CONTESTED / name).unlink(missing_ok=True)

    def accept(self, name: str, fingerprint: str | None = None) -> KeyEntry:
        """Accept `name`'s pending (or rejected) key; by `fingerprint` when it is contested."""
        if fingerprint is None:
            others = self.contenders(name)
            if others and self._read("pending", name) is not None:
                raise ContestedName(
                    f"{len(others) + 1} keys claim {name}: compare their fingerprints (reops "
                    f"keys) with the agent's own (reops-agent --print-fingerprint) and accept "
                    f"one with: reops keys accept {name} --fingerprint FP")
            entry = self._move(name, "accepted", ("pending", "rejected"))
            self._forget_contest(name)
            return entry
        want = normal_fingerprint(fingerprint)
        current = self.get(name)
        candidates = ([current.key] if current else []) + self.contenders(name)
        for key in candidates:
            if normal_fingerprint(_fingerprint(key)) == want:
                if current and current.state == "accepted" and current.key != key:
                    raise ValueError(f"{name} is already accepted with another key "
                                     f"({current.fingerprint}); reops keys delete {name} first")
                return self.pre_accept(name, key)
        if current is None and not candidates:
            raise KeyError(f"no pending or rejected key named {name!r}")
        raise ValueError(f"no key claiming {name} has fingerprint {fingerprint} "
                         f"(see reops keys)")

    def reject(self, name: str) -> KeyEntry:
        """Move `name`'s pending (or accepted) key to rejected; forget contending claims."""
        entry = self._move(name, "rejected", ("pending", "accepted"))
        self._forget_contest(name)
        return entry

    def pre_accept(self, name: str, key: str) -> KeyEntry:
        """Accept a key the operator already trusts (labs, deploy over SSH)."""
        for st in ("pending", "rejected"):
            self._path(st, name).unlink(missing_ok=True)
        self._forget_contest(name)
        before = self._accepted_stamp()
        self._write("accepted", name, key)
        self._accepted_changed(before, name)
        return KeyEntry(name, "accepted", key)

    def _accepted_stamp(self) -> int:
        try:
            return (self.root / "accepted").stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def accepted_keys(self, prefix: str) -> frozenset[str]:
        """Keys accepted under names starting with `prefix` (the bus's `bus-` keys).

        Asked at every agent registration, so it must not read accepted/ each time (with
        10,000 agents that was 10,000 file reads per Hello): cached until the folder
        changes, and kept warm across this store's own writes of other names.
        """
        stamp = self._accepted_stamp()
        cached = self._prefixed.get(prefix)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys: set[str] = set()
        try:
            with os.scandir(self.root / "accepted") as it:
                for d in it:
                    if d.name.startswith(prefix) and valid_name(d.name):
                        with contextlib.suppress(FileNotFoundError):
                            keys.add(Path(d.path).read_text().strip())
        except FileNotFoundError:
            pass
        self._prefixed[prefix] = (stamp, frozenset(keys))
        return self._prefixed[prefix][1]

    def _accepted_changed(self, before: int, name: str) -> None:
        """This store wrote `name` into accepted/: caches of other prefixes stay valid if
        nobody else changed the folder meanwhile (its mtime was still theirs)."""
        after = self._accepted_stamp()
        for prefix, (stamp, keys) in list(self._prefixed.items()):
            if stamp == before and not name.startswith(prefix):
                self._prefixed[prefix] = (after, keys)

    def delete(self, name: str) -> KeyEntry:
        """Forget `name`'s key wherever it is (it will show up as pending again)."""
        entry = self.get(name)
        if entry is None:
            raise KeyError(f"no key named {name!r}")
        for st in STATES:
            self._path(st, name).unlink(missing_ok=True)
        self._forget_contest(name)
        return entry

    def accept_all_pending(self) -> list[KeyEntry]:
        """Accept every uncontested pending key (contested names need a fingerprint)."""
        return [self.accept(e.name) for e in self.entries("pending") if not e.contested]

    def _move(self, name: str, to: KeyState, sources: tuple[KeyState, ...]) -> KeyEntry:
        self.ensure()
        for st in sources:
            src = self._path(st, name)
            if src.exists():
                key = src.read_text().strip()
                os.replace(src, self._path(to, name))
                return KeyEntry(name, to, key)
        current = self.get(name)
        if current is not None and current.state == to:
            return current
        raise KeyError(f"no {' or '.join(sources)} key named {name!r}")

    def is_rejected(self, key: str) -> bool:
        """Whether `key` is in rejected/ (cached until that folder changes)."""
        folder = self.root / "rejected"
        try:
            mtime = folder.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime != self._rejected[0]:
            keys = frozenset(e.key for e in self.entries("rejected"))
            self._rejected = (mtime, keys)
        return key in self._rejected[1]
