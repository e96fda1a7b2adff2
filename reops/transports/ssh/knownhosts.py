"""known_hosts lookups the way `ssh` does them, from files parsed once per change.

`ssh` looks a host up by the name it connects to (its `HostName`), bare on port 22 and as
`[name]:port` elsewhere, with no fallback to the bare name on other ports, and (the default
`CheckHostIP no`) never by the peer's IP address. Names, IPv4, IPv6, wildcards, hashed
(`|1|…`, `ssh-keygen -H`), `@cert-authority` and `@revoked` entries all go through that one
lookup. asyncssh's own matcher also tries the peer IP and the port-less name, which would
trust keys `ssh` rejects, and it cannot take a name where it expects an IP (issue 10 item 1),
so reops hands asyncssh a callable (`matcher`) that answers with `lookup`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reops.transports.ssh.sshlib import asyncssh

#: what asyncssh's known_hosts callable returns: trusted keys, CA keys, revoked keys
Match = tuple[list[Any], list[Any], list[Any]]


class KnownHostsError(ValueError):
    """A known_hosts file that cannot be read or has a line asyncssh cannot parse."""


def entry(address: str, port: int) -> str:
    """How ssh names a host in known_hosts: bare on port 22, else `[address]:port`."""
    return address if port == 22 else f"[{address}]:{port}"


def hashed(name: str, salt: bytes | None = None) -> str:
    """`name` as `HashKnownHosts yes` writes it: `|1|base64(salt)|base64(HMAC-SHA1)`."""
    salt = os.urandom(20) if salt is None else salt
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@dataclass
class KnownHostsFiles:
    """Parsed known_hosts files by path, re-read only when a file's mtime changes."""

    parsed: dict[str, tuple[float, asyncssh.SSHKnownHosts | None]] = field(default_factory=dict)

    def get(self, path: str) -> asyncssh.SSHKnownHosts | None:
        """The parsed file at `path` (None when there is none)."""
        p = os.path.expanduser(path)
        try:
            mtime = os.stat(p).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        hit = self.parsed.get(p)
        if hit is None or hit[0] != mtime:
            try:
                hit = (mtime, asyncssh.read_known_hosts(p))
            except (OSError, ValueError) as e:
                raise KnownHostsError(f"{p}: cannot use this known_hosts file: {e}") from None
            self.parsed[p] = hit
        return hit[1]

    def remember(self, path: str, line: str) -> None:
        """After appending `line` to `path` ourselves: add it to the parsed copy in place
        instead of parsing the whole file again."""
        p = os.path.expanduser(path)
        hit = self.parsed.get(p)
        try:
            mtime = os.stat(p).st_mtime
        except FileNotFoundError:
            return
        if hit is None or hit[1] is None:
            return  # first entry of a new file: the next lookup parses it (once)
        hit[1].load(line)
        self.parsed[p] = (mtime, hit[1])

    def lookup(self, paths: Sequence[str], address: str, port: int) -> Match:
        """Keys, CA keys and revoked keys for `address`:`port` in `paths`, as ssh finds them."""
        name = entry(address, port)
        keys: list[Any] = []
        cas: list[Any] = []
        revoked: list[Any] = []
        for path in paths:
            known = self.get(path)
            if known is None:
                continue
            # port None: no port-less retry; the name already carries the port as ssh writes it
            found = known.match(name, "", None)
            keys += found[0]
            cas += found[1]
            revoked += found[2]
        return keys, cas, revoked

    def matcher(self, paths: Sequence[str]) -> Callable[[str, str, int | None], Match]:
        """asyncssh's `known_hosts=` callable for `paths` (it gets host, peer IP, port)."""
        chosen = tuple(paths)

        def match(host: str, _addr: str, port: int | None) -> Match:
            return self.lookup(chosen, host, port or 22)

        return match
