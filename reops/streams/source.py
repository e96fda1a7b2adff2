"""Turning an Op into a Stream over Hosts: transport choice, settings, dry runs.

`step(describe)` turns a function that describes an Op (`exec_("uname -a")`) into the
user-facing operation `exec_(hosts, "uname -a") -> Stream`. The transport is chosen per
host at run time: SSH, an agent, or `auto` (agent where connected, SSH for the rest, as
re-ops downgraded).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import msgspec

from reops.core.model import Host, Hosts, Line, Result
from reops.core.runtime import get_runtime
from reops.core.secrets import Secret
from reops.core.settings import Settings, load_settings
from reops.ops.base import Op
from reops.streams.stream import Stream, fanout
from reops.transports.base import Checking, DryRun, Executor

Via = Literal["ssh", "agent", "auto"]


class Defaults(msgspec.Struct, kw_only=True):
    """Per-process defaults for new streams (the CLI sets them from flags)."""

    settings: Settings = msgspec.field(default_factory=load_settings)
    via: Via = "ssh"
    lines: bool = False
    dry_run: bool = False
    check: bool = False  # ask hosts whether ops WOULD change them (read-only probes)
    diff: bool = True  # with check: fetch file contents for diffs (False: sha256 only)
    hub: str = ""  # a running hub's control socket: SSH goes through its warm pool


def defaults() -> Defaults:
    return get_runtime().resource("defaults", Defaults)


def configure(*, via: Via | None = None, lines: bool | None = None,
              dry_run: bool | None = None, check: bool | None = None,
              diff: bool | None = None, hub: str | None = None, **settings: Any
              ) -> Defaults:
    """Set process defaults: `configure(forks=50, command_timeout=30, via="auto")`;
    `hub=path` runs SSH through that hub's warm pool (the CLI's choice), `hub=""` not."""
    d = defaults()
    if hub is not None:
        d.hub = hub
    if settings:
        d.settings = d.settings.with_(**settings)
    if via is not None:
        d.via = via
    if check is not None:
        d.check = check
    if diff is not None:
        d.diff = diff
    if lines is not None:
        d.lines = lines
    if dry_run is not None:
        d.dry_run = dry_run
    return d


# Transports are imported on first use (function-level, on purpose): the SSH one costs
# ~120 ms (asyncssh), the agent one pyzmq; `reops --help`, `reops hosts` and dry runs pay neither.
def _ssh() -> Executor:
    hub = defaults().hub
    if hub:  # the hub's warm connections; this process never imports asyncssh for it
        from pathlib import Path

        from reops.transports.hubssh import HubSshExecutor

        return get_runtime().resource("ssh-hub", lambda: HubSshExecutor(Path(hub)))
    from reops.transports.ssh.executor import SshExecutor

    return get_runtime().resource("ssh", SshExecutor)


def _agent() -> Executor:
    from reops.transports.agent import AgentExecutor

    return get_runtime().resource("agent", AgentExecutor)


def chooser(via: Via, dry_run: bool, *, check: bool = False, diff: bool = True
            ) -> Callable[[Host], Executor]:
    """Which executor runs a host, decided when the host's step starts; with `check`, the
    chosen one runs only the ops' read-only probes (transports/base.py: Checking)."""
    if check and not dry_run:
        inner = chooser(via, False)
        return lambda h: Checking(inner(h), diff=diff)
    if dry_run:
        dry = DryRun()
        return lambda h: dry
    if via == "ssh":
        ssh = _ssh()
        return lambda h: ssh
    agent = _agent()
    if via == "agent":
        return lambda h: agent
    from reops.transports.agent import AgentExecutor, AutoExecutor  # lazy: see _ssh

    # the choice awaits the hub's list of agents: the event loop never blocks on it
    auto = AutoExecutor(get_runtime().resource("agent", AgentExecutor), _ssh())
    return lambda h: auto


def as_hosts(hosts: Hosts | Host | Iterable[Host]) -> Hosts:
    if isinstance(hosts, Hosts):
        return hosts
    if isinstance(hosts, Host):
        return Hosts([hosts])
    return Hosts(hosts)


class Resolved(msgspec.Struct, frozen=True, kw_only=True):
    """How a stream runs, decided once when it is built (call arguments over defaults)."""

    via: Via
    settings: Settings
    lines: bool
    dry_run: bool
    become: Secret | None = None  # the sudo password, taken out of settings (see op())
    check: bool = False
    diff: bool = True

    def op(self, op: Op) -> Op:
        """`op` as it will run: `settings.sudo` makes it sudo unless it already says how;
        a become password goes onto its stdin (never into `settings`, which travel)."""
        if self.settings.sudo and not op.sudo and not op.become_user:
            op = op.with_(sudo=True)
        return op.with_become_pass(self.become)

    def executors(self) -> Callable[[Host], Executor]:
        """Which executor runs a host (see `chooser`)."""
        return chooser(self.via, self.dry_run, check=self.check, diff=self.diff)


def resolve(*, via: Via | None = None, settings: Settings | None = None,
            lines: bool | None = None, dry_run: bool | None = None,
            check: bool | None = None, diff: bool | None = None) -> Resolved:
    """The one place a stream's via/settings/lines/dry_run/check fall back to the defaults."""
    d = defaults()
    chosen = settings or d.settings
    return Resolved(via=via or d.via, become=chosen.become_pass,
                    settings=msgspec.structs.replace(chosen, become_pass=None),
                    lines=d.lines if lines is None else lines,
                    dry_run=d.dry_run if dry_run is None else dry_run,
                    check=d.check if check is None else check,
                    diff=d.diff if diff is None else diff)


def source(hosts: Hosts | Host | Iterable[Host], op: Op, *, via: Via | None = None,
           settings: Settings | None = None, lines: bool | None = None,
           dry_run: bool | None = None, check: bool | None = None,
           diff: bool | None = None) -> Stream:
    """A cold Stream that runs `op` once on every host, each Result as soon as it is ready.

    `check=True`: only ask each host whether `op` would change it (read-only probes)."""
    hs = as_hosts(hosts)
    r = resolve(via=via, settings=settings, lines=lines, dry_run=dry_run, check=check,
                diff=diff)
    pick = r.executors()
    op = r.op(op)

    async def run_one(host: Host, on_line: Callable[[Line], None] | None) -> Result:
        return await pick(host).run(host, op, r.settings, on_line)

    def rebuild(subset: Hosts) -> Stream:
        return source(subset, op, via=r.via, settings=r.settings, lines=r.lines,
                      dry_run=r.dry_run, check=r.check, diff=r.diff)

    return Stream(fanout(hs, run_one, lines=r.lines), hs, rebuild)


class StepFn(Protocol):
    describe: Callable[..., Op]

    def __call__(self, hosts: Hosts | Host | Iterable[Host], *args: Any,
                 **kwargs: Any) -> Stream: ...


_SOURCE_KW = ("via", "settings", "lines", "dry_run", "check", "diff")


def step(describe: Callable[..., Op]) -> StepFn:
    """Make a Hosts-first operation out of an Op description."""

    @functools.wraps(describe)
    def make(hosts: Hosts | Host | Iterable[Host], *args: Any, **kwargs: Any) -> Stream:
        source_kw = {k: kwargs.pop(k) for k in _SOURCE_KW if k in kwargs}
        return source(hosts, describe(*args, **kwargs), **source_kw)

    make.describe = describe  # type: ignore[attr-defined]
    return make  # type: ignore[return-value]


def as_step(fn: Callable[..., Any]) -> Callable[..., Stream]:
    """A Hosts-first callable giving a Stream, from a step or any `f(hosts, ...)`.

    A user function may return a Stream (it composes other steps) or a bare Op.
    """
    if hasattr(fn, "describe"):
        return fn

    def call(hosts: Hosts, *args: Any, **kwargs: Any) -> Stream:
        made = fn(hosts, *args, **kwargs)
        if isinstance(made, Stream):
            return made
        if isinstance(made, Op):
            return source(hosts, made)
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} returned {type(made).__name__}; "
                        "a step must return a Stream or an Op")

    return call
