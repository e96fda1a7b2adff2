"""Which agents the hub knows: registered connections, their last beat, lost or not.

The routing id ROUTER gives each connection is the only address the hub sends to; a name is
bound to it at registration (after the key check). A peer can choose its routing id, so the
fleet also checks every message's authenticated key against the record's `key`.

A hub holds 10,000 of these (issue 13: <= 25 KB per idle agent, nearly all of it libzmq's),
so a record keeps little of its own: the values agents share (their function list, OS,
Python and agent versions) are stored once, and a record makes no empty containers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from reops_agent.protocol import Beat, Hello, fingerprint

AgentState = Literal["connected", "lost"]


@dataclass(slots=True)
class AgentRecord:
    """One agent as the hub sees it (mutable: beats update it)."""

    name: str
    key: str
    routing: bytes
    address: str
    hello: Hello
    registered_at: float = field(default_factory=time.time)
    last_beat: float = field(default_factory=time.time)
    last_mono: float = field(default_factory=time.monotonic)
    load: float = 0.0
    running: int = 0
    dropped: int = 0
    state: AgentState = "connected"
    code: set[str] | None = None  # shipped module hashes it already has (None: none yet)

    def info(self) -> dict[str, Any]:
        """What `reops agents` shows."""
        h = self.hello
        return {
            "name": self.name, "address": self.address, "state": self.state,
            "fingerprint": fingerprint(self.key),
            "hostname": h.hostname, "os": h.os, "python": h.python, "version": h.version,
            "pid": h.pid, "allow_code": h.allow_code, "functions": h.functions,
            "registered_at": self.registered_at, "last_beat": self.last_beat,
            "load": self.load, "running": self.running, "dropped": self.dropped,
        }


#: distinct function lists (and short strings) shared among records; more are kept as sent
SHARED_VALUES = 256
#: strings longer than this are never shared (a version or an OS name is short), nor lists
#: longer than SHARED_LIST: the tables stay small whatever agents send
SHARED_LEN = 200
SHARED_LIST = 512


class Registry:
    """Agents by name and by connection."""

    def __init__(self) -> None:
        self.by_name: dict[str, AgentRecord] = {}
        self.by_routing: dict[bytes, AgentRecord] = {}
        self._lists: dict[tuple[str, ...], list[str]] = {}
        self._strings: dict[str, str] = {}

    def _share(self, hello: Hello) -> Hello:
        """`hello` with the values many agents send alike stored once (bounded tables)."""
        fns = tuple(hello.functions)
        shared = self._lists.get(fns)
        if (shared is None and len(self._lists) < SHARED_VALUES and len(fns) <= SHARED_LIST
                and all(len(f) <= SHARED_LEN for f in fns)):
            shared = self._lists[fns] = list(fns)
        if shared is not None:
            hello.functions = shared  # (never mutated: info() hands it out to be encoded)
        hello.os, hello.python, hello.version = (
            self._string(hello.os), self._string(hello.python), self._string(hello.version))
        return hello

    def _string(self, value: str) -> str:
        shared = self._strings.get(value)
        if shared is None:
            if len(self._strings) >= SHARED_VALUES or len(value) > SHARED_LEN:
                return value
            shared = self._strings[value] = value
        return shared

    def __iter__(self) -> Iterator[AgentRecord]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def connected(self, name: str) -> AgentRecord | None:
        rec = self.by_name.get(name)
        return rec if rec is not None and rec.state == "connected" else None

    def register(self, routing: bytes, key: str, address: str, hello: Hello) -> tuple[
        AgentRecord, str
    ]:
        """Bind `hello.name` to this connection; the event: registered (a new process),
        back (after being lost) or again (the same process, on the same or a new connection)."""
        old = self.by_name.get(hello.name)
        if old is not None:
            self.by_routing.pop(old.routing, None)
        rec = AgentRecord(name=hello.name, key=key, routing=routing, address=address,
                          hello=self._share(hello))
        if old is not None and old.hello.pid == hello.pid and old.key == key:
            rec.code = old.code if old.routing == routing else None
        self.by_name[hello.name] = rec
        self.by_routing[routing] = rec
        if old is None or old.hello.pid != hello.pid or old.key != key:
            return rec, "registered"  # a new agent process (restarted, redeployed)
        return rec, "back" if old.state == "lost" else "again"

    def detach(self, rec: AgentRecord) -> None:
        """`rec`'s connection is gone (its routing id now names another peer): unbind it."""
        if self.by_routing.get(rec.routing) is rec:
            del self.by_routing[rec.routing]
        rec.routing = b""  # sends to it fail at once ("not connected")

    def beat(self, routing: bytes, beat: Beat | None = None) -> tuple[AgentRecord | None, bool]:
        """Note a sign of life; (record, whether it came back from lost)."""
        rec = self.by_routing.get(routing)
        if rec is None:
            return None, False
        rec.last_beat, rec.last_mono = time.time(), time.monotonic()
        if beat is not None:
            rec.load, rec.running, rec.dropped = beat.load, beat.running, beat.dropped
        came_back = rec.state == "lost"
        rec.state = "connected"
        return rec, came_back

    def silent(self, window: float) -> list[AgentRecord]:
        """Connected agents not heard from for more than `window` seconds: mark them lost."""
        now = time.monotonic()
        lost = [r for r in self.by_name.values()
                if r.state == "connected" and now - r.last_mono > window]
        for r in lost:
            r.state = "lost"
        return lost

    def forget(self, name: str) -> AgentRecord | None:
        rec = self.by_name.pop(name, None)
        if rec is not None:
            self.by_routing.pop(rec.routing, None)
        return rec
