"""The agent key store, laid out like salt-key's: pending/, accepted/, rejected/.

Each file is named after the agent and holds its z85 CurveZMQ public key. The directory is
the source of truth, so `reops keys` works whether or not the hub runs; the hub reads it at
each registration. The hub's own key pair lives next to it (hub.key, hub.key_secret 0600).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reops_agent.keys import load_keypair
from reops_agent.protocol import fingerprint, valid_name

KeyState = Literal["pending", "accepted", "rejected"]
STATES: tuple[KeyState, ...] = ("accepted", "pending", "rejected")


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One agent's key and where it stands."""

    name: str
    state: KeyState
    key: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


class KeyStore:
    """Agent keys on disk; every change is a rename, so readers never see half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._rejected: tuple[float, frozenset[str]] = (-1.0, frozenset())

    def ensure(self) -> None:
        """Create the layout (0700: key names and keys are nobody else's business)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for state in STATES:
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
                out.append(KeyEntry(path.name, st, path.read_text().strip()))
        return out

    def get(self, name: str) -> KeyEntry | None:
        """Where `name`'s key stands, if anywhere."""
        for st in STATES:
            key = self._read(st, name)
            if key is not None:
                return KeyEntry(name, st, key)
        return None

    def accepted_key(self, name: str) -> str | None:
        return self._read("accepted", name)

    def add_pending(self, name: str, key: str) -> bool:
        """Record a new agent's key as pending; True when it was not pending already."""
        if self._read("pending", name) == key:
            return False
        self._write("pending", name, key)
        return True

    def accept(self, name: str) -> KeyEntry:
        """Move `name`'s pending (or rejected) key to accepted."""
        return self._move(name, "accepted", ("pending", "rejected"))

    def reject(self, name: str) -> KeyEntry:
        """Move `name`'s pending (or accepted) key to rejected."""
        return self._move(name, "rejected", ("pending", "accepted"))

    def pre_accept(self, name: str, key: str) -> KeyEntry:
        """Accept a key the operator already trusts (labs, deploy over SSH)."""
        for st in ("pending", "rejected"):
            self._path(st, name).unlink(missing_ok=True)
        self._write("accepted", name, key)
        return KeyEntry(name, "accepted", key)

    def delete(self, name: str) -> KeyEntry:
        """Forget `name`'s key wherever it is (it will show up as pending again)."""
        entry = self.get(name)
        if entry is None:
            raise KeyError(f"no key named {name!r}")
        for st in STATES:
            self._path(st, name).unlink(missing_ok=True)
        return entry

    def accept_all_pending(self) -> list[KeyEntry]:
        return [self.accept(e.name) for e in self.entries("pending")]

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
