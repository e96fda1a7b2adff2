"""Value types shared by every layer: hosts, results, outcomes.

They are immutable msgspec Structs so they cross threads, processes and the wire
(JSON, msgpack) without copies or custom encoders.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    import polars as pl

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
    #: bastions to reach it through, first hop first; None: ssh_config decides; (): direct
    jump: tuple[Host, ...] | None = None
    #: fields holding only a fallback ("address": the name, "port": 22), so ssh_config's
    #: HostName/Port may replace them; a value the inventory gave always wins
    implicit: frozenset[str] = frozenset()

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

    def __rich__(self) -> Any:
        """A table of the hosts in a terminal (rich), `… N more` past 20."""
        from reops.core.display import rich_hosts

        return rich_hosts(self)

    def _repr_html_(self) -> str:
        """The same table in a notebook, host text escaped."""
        from reops.core.display import html_hosts

        return html_hosts(self)


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
    #: this host's earlier steps in the pipeline, oldest first (`then` fills it), so the
    #: Outcome keeps every step while operators still see one Result per host
    earlier: tuple[Result, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def step(self) -> int:
        """This step's index in its host's pipeline: 0 for the first."""
        return len(self.earlier)

    @property
    def steps(self) -> list[Result]:
        """Every step of this host so far, oldest first, each without its own history."""
        if not self.earlier:
            return [self]
        return [*self.earlier, msgspec.structs.replace(self, earlier=())]

    def after(self, previous: Result) -> Result:
        """This Result as the step that follows `previous` (keeps `previous`'s history)."""
        return msgspec.structs.replace(self, earlier=(*previous.steps, *self.earlier))

    def __rich__(self) -> Any:
        """✔/✘, host, op, time and status, then the last lines of out and err (rich)."""
        from reops.core.display import rich_result

        return rich_result(self)

    def _repr_html_(self) -> str:
        """The same in a notebook, output escaped."""
        from reops.core.display import html_result

        return html_result(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython's text display: the rich view without colours."""
        from reops.core.display import plain, rich_result

        p.text(plain(rich_result(self)))


class Line(msgspec.Struct, frozen=True):
    """One line of a host's output, flowing before that host's Result."""

    host: str
    stream: Literal["out", "err"]
    text: str


Event = Result | Line


def new_run_id() -> str:
    """A UUIDv7 (RFC 9562) as text: unique, and sorting by it sorts runs by start time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # (what secrets.token_bytes does)
    value = (ms & (1 << 48) - 1) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 \
        | 0b10 << 62 | rand & (1 << 62) - 1
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _local_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "")


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Who ran what, when: the identity of one run, flat so a run-history table can append it.

    `command` is the command line (CLI) or the script's argv (Python); `pipeline` names the
    steps (`ls | exec`); `selector` is the inventory selector when one was used."""

    run_id: str = msgspec.field(default_factory=new_run_id)
    command: str = ""
    pipeline: str = ""
    selector: str = ""
    user: str = msgspec.field(default_factory=_local_user)
    started_at: float = msgspec.field(default_factory=time.time)
    ended_at: float = 0.0
    check: bool = False


class Outcome(msgspec.Struct, kw_only=True):
    """A finished step in re-ops' shape: hosts, successful, failure by exit code.

    `successful`/`failure`/`results`/`out[host]` hold each host's LAST step (what exit
    codes and `pick` judge); `all` and `steps(host)` hold every step; `run` who ran it."""

    hosts: list[str] = msgspec.field(default_factory=list)
    successful: list[Result] = msgspec.field(default_factory=list)
    failure: dict[int, list[Result]] = msgspec.field(default_factory=dict)
    interrupted: bool = False
    run: RunInfo | None = None

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

    def __getitem__(self, host: str) -> Result:
        """The host's last Result (KeyError when it has none)."""
        for r in self.results:
            if r.host == host:
                return r
        raise KeyError(host)

    def steps(self, host: str) -> list[Result]:
        """Every step of `host`, oldest first ([] when it has no Result)."""
        try:
            return self[host].steps
        except KeyError:
            return []

    @property
    def all(self) -> list[Result]:
        """Every step of every host: hosts in order, each host's steps oldest first."""
        last = {r.host: r for r in self.results}
        return [s for h in self.hosts if h in last for s in last[h].steps]

    @property
    def pipeline(self) -> str:
        """The steps' op names, `ls | exec` (from the host with the most steps)."""
        longest = max(self.results, key=lambda r: r.step, default=None)
        return " | ".join(s.op for s in longest.steps) if longest else ""

    @property
    def changes(self) -> bool:
        """Whether any step of any host changed something (or, under check, would)."""
        return any(r.changed for r in self.all)

    def check(self, host: str) -> dict[str, Any]:
        """A check run's answer for `host`: {changes, diff} over all its steps (the diffs
        of the steps that would change, in order); a host whose check failed:
        {changes: None, diff: "", error}."""
        steps = self.steps(host)
        if not steps:
            return {"changes": None, "diff": "", "error": "no result"}
        reports = [_check_of(r) for r in steps]
        if reports[-1]["changes"] is None:
            return reports[-1]
        changed = [x for x in reports if x["changes"]]
        return {"changes": bool(changed), "diff": "\n".join(x["diff"] for x in changed
                                                            if x["diff"])}

    @property
    def check_exit_code(self) -> int:
        """`--check`'s exit code, like diff(1): 0 no change, 1 changes, 2 a host failed."""
        return 2 if self.failure else 1 if self.changes else 0

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

    def table(self) -> pl.DataFrame:
        """Every host-step as a polars DataFrame, one row each (the `--save` schema)."""
        from reops.core.table import to_table

        return to_table(self)

    def __rich__(self) -> Any:
        """✔/✘ per host with op, status, time and first output line, `… N more hosts`,
        and the summary line (counts per status, hosts, time) in a terminal (rich)."""
        from reops.core.display import rich_outcome

        return rich_outcome(self)

    def _repr_html_(self) -> str:
        """The same as a compact HTML table in a notebook, host text escaped."""
        from reops.core.display import html_outcome

        return html_outcome(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython's text display: the rich view without colours."""
        from reops.core.display import plain, rich_outcome

        p.text(plain(rich_outcome(self)))

    def to_json(self) -> bytes:
        """The re-ops shape (last steps), plus `run` (identity), `steps` (every step, flat,
        each with its `step` index) and, for a check, `check` ({host: {changes, diff}})."""
        def flat(rs: Iterable[Result]) -> list[dict[str, Any]]:
            return [flat_result(r, r.step) for r in rs]

        doc: dict[str, Any] = {
            "run": self.run, "hosts": self.hosts, "successful": flat(self.successful),
            "failure": {code: flat(rs) for code, rs in self.failure.items()},
            "steps": [flat_result(r, i) for h in self.hosts
                      for i, r in enumerate(self.steps(h))],
        }
        if self.run is not None and self.run.check:
            doc["check"] = {r.host: self.check(r.host) for r in self.results}
        return msgspec.json.encode(doc)


def flat_result(r: Result, step: int) -> dict[str, Any]:
    """A Result as a flat JSON object: its fields and its `step` index, no history."""
    d = msgspec.structs.asdict(r)
    del d["earlier"]
    d["step"] = step
    return d


def _check_of(r: Result) -> dict[str, Any]:
    """{changes, diff} of a check Result; a host whose check failed: changes null + error."""
    if r.ok and isinstance(r.data, dict) and isinstance(r.data.get("check"), dict):
        return {"changes": bool(r.data["check"].get("changes")),
                "diff": str(r.data["check"].get("diff", ""))}
    return {"changes": None, "diff": "", "error": r.err or r.status}


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


def run_outcome(names: Iterable[str], results: dict[str, Result], interrupted: bool,
                info: RunInfo) -> Outcome:
    """The Outcome of a run over the hosts `names` (in order, then any others), from each
    host's last Result; `interrupted`: the hosts without one fail as not finished. `info`
    (who, what, when) is completed with the pipeline's steps and the end time. The one
    builder of a run's Outcome: `streams.stream.run` and the one-shot CLI (`reops.cli.quick`)."""
    names = list(names)
    wanted = set(names)
    ordered = [results[h] for h in names if h in results]
    ordered += [r for h, r in results.items() if h not in wanted]
    if interrupted:
        ordered += [failure_result(name, "?", "interrupted before this host finished",
                                   status="error")
                    for name in names if name not in results]
    out = Outcome.of(ordered)
    out.interrupted = interrupted
    check = info.check or any(isinstance(r.data, dict) and "check" in r.data
                              for r in out.results)
    out.run = msgspec.structs.replace(info, pipeline=info.pipeline or out.pipeline,
                                      ended_at=time.time(), check=check)
    return out
