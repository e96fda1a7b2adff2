"""Value types shared by every layer: hosts, results, outcomes.

They are immutable msgspec Structs so they cross threads, processes and the wire
(JSON, msgpack) without copies or custom encoders.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import msgspec

Status = Literal["ok", "failed", "unreachable", "timeout", "lost", "error"]
"""ok: exit 0. failed: non-zero exit. unreachable: the command never started (connect,
auth, host key, agent not connected): safe to retry. timeout: killed at its deadline.
lost: the connection (or hub, or agent) went away mid-command, so the command may or may
not have run: never retried blindly. error: reops or the op itself could not proceed."""
Transport = Literal["ssh", "agent", "libvirt", "local"]

#: exit code used when a host was never reached or the call never completed
UNREACHED = -1


class Host(msgspec.Struct, frozen=True, kw_only=True):
    """One machine we can reach: where it is, how to log in, what it is for."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key: str | None = None
    groups: tuple[str, ...] = ()
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    vars: dict[str, Any] = msgspec.field(default_factory=dict)
    known_hosts: str | None = None
    agent_key: str | None = None  # the agent's key fingerprint, pinned (see hub/identity.py)

    def __hash__(self) -> int:  # dict fields make the default hash fail; names are unique
        return hash((self.name, self.address, self.port))


class Hosts:
    """An ordered, immutable set of hosts: the input of every operation."""

    __slots__ = ("_by_name",)

    def __init__(self, hosts: Iterable[Host] = ()) -> None:
        self._by_name: dict[str, Host] = {}
        for h in hosts:
            self._by_name[h.name] = h

    def __iter__(self) -> Iterator[Host]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Host:
        return self._by_name[name]

    def __repr__(self) -> str:
        names = ", ".join(list(self._by_name)[:8])
        more = "" if len(self) <= 8 else f", … (+{len(self) - 8})"
        return f"Hosts({names}{more})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hosts) and list(self._by_name) == list(other._by_name)

    def __hash__(self) -> int:
        return hash(tuple(self._by_name))

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Host | None:
        return self._by_name.get(name)

    def where(self, pred: Callable[[Host], bool]) -> Hosts:
        """Hosts for which `pred` holds, in order."""
        return Hosts(h for h in self if pred(h))

    def only(self, names: Iterable[str]) -> Hosts:
        """Hosts whose names are in `names`, in this collection's order."""
        wanted = set(names)
        return Hosts(h for h in self if h.name in wanted)

    def glob(self, pattern: str) -> Hosts:
        return Hosts(h for h in self if fnmatch.fnmatchcase(h.name, pattern))

    def __or__(self, other: Hosts) -> Hosts:
        return Hosts([*self, *other])

    def __and__(self, other: Hosts) -> Hosts:
        return Hosts(h for h in self if h.name in other)

    def __sub__(self, other: Hosts) -> Hosts:
        return Hosts(h for h in self if h.name not in other)


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """What one step did on one host; exactly one per host per step."""

    host: str
    op: str
    status: Status
    code: int
    out: str = ""
    err: str = ""
    started_at: float = 0.0
    duration_s: float = 0.0
    transport: Transport = "ssh"
    data: Any = None
    changed: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Line(msgspec.Struct, frozen=True):
    """One line of a host's output, flowing before that host's Result."""

    host: str
    stream: Literal["out", "err"]
    text: str


Event = Result | Line


class Outcome(msgspec.Struct, kw_only=True):
    """A finished step in re-ops' shape: hosts, successful, failure by exit code."""

    hosts: list[str] = msgspec.field(default_factory=list)
    successful: list[Result] = msgspec.field(default_factory=list)
    failure: dict[int, list[Result]] = msgspec.field(default_factory=dict)
    interrupted: bool = False

    @classmethod
    def of(cls, results: Iterable[Result], hosts: Iterable[str] = ()) -> Outcome:
        out = cls(hosts=list(hosts))
        seen = set(out.hosts)
        for r in results:
            out.add(r)
            if r.host not in seen:
                seen.add(r.host)
                out.hosts.append(r.host)
        return out

    def add(self, r: Result) -> None:
        if r.ok:
            self.successful.append(r)
        else:
            self.failure.setdefault(r.code, []).append(r)

    @property
    def results(self) -> list[Result]:
        """Every Result, successful first then failures by code."""
        return [*self.successful, *(r for rs in self.failure.values() for r in rs)]

    @property
    def failed(self) -> list[Result]:
        return [r for rs in self.failure.values() for r in rs]

    @property
    def ok(self) -> bool:
        return not self.failure

    @property
    def exit_code(self) -> int:
        """0 when every host succeeded, 1 when some did not (the CLI's contract)."""
        return 1 if self.failure else 0

    def pick(self, pred: Callable[[Result], bool]) -> list[str]:
        """Names of hosts whose Result satisfies `pred`, in host order."""
        names = {r.host for r in self.results if pred(r)}
        return [h for h in self.hosts if h in names]

    def to_json(self) -> bytes:
        return msgspec.json.encode(
            {"hosts": self.hosts, "successful": self.successful, "failure": self.failure}
        )


def failure_result(
    host: str,
    op: str,
    err: str,
    *,
    status: Status = "unreachable",
    code: int = UNREACHED,
    started_at: float = 0.0,
    duration_s: float = 0.0,
    transport: Transport = "ssh",
    out: str = "",
) -> Result:
    """A Result for a host that did not complete its step (the `err` says why)."""
    return Result(
        host=host,
        op=op,
        status=status,
        code=code,
        out=out,
        err=err,
        started_at=started_at,
        duration_s=duration_s,
        transport=transport,
    )
