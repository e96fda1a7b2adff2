"""What one agent call is, both ways: the hub `call` request for an Op, and the Result its
answer makes, judged as SSH would judge it; with the agents-list and host-identity checks.

Pure functions shared by the agent transport (`reops.transports.agent`, async) and the
one-shot CLI (`reops.cli.quick`, blocking), so both send the same requests and read the
answers the same way; nothing here imports asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from reops.control.identity import agent_for, mismatch
from reops.control.wire import ResultItem
from reops.core.model import Host, Result, Status

if TYPE_CHECKING:
    from reops.core.settings import Settings
    from reops.ops.base import Op


def call_params(host: Host, op: Op, settings: Settings, *, stream: bool,
                hosts: list[str] | None = None) -> dict[str, Any]:
    """The hub `call` request for `op` on `host` (`hosts`: the same call on all of them,
    when `op` reads the same for each)."""
    timeout = op.timeout if op.timeout is not None else settings.command_timeout
    base: dict[str, Any] = {"hosts": hosts or [host.name], "timeout": timeout,
                            "stream": stream}
    if op.kind == "shell":
        kwargs: dict[str, Any] = {"max_output": settings.max_output}
        if op.stdin is not None:
            kwargs["stdin"] = op.stdin
        return {**base, "fn": "shell", "args": [op.command_for(host)], "kwargs": kwargs}
    if op.kind == "code" and op.code is None:
        raise ValueError("a code op carries no code")
    code = {"code": msgspec.structs.asdict(op.code)} if op.kind == "code" and op.code else {}
    return {**base, "fn": op.function or (op.code.function if op.code else ""),
            "args": list(op.args), "kwargs": dict(op.kwargs), **code}


def to_result(host: Host, op: Op, item: ResultItem, started: float, duration: float) -> Result:
    """A reops Result from the hub's result item, judged as SSH would judge it."""
    status: Status = status_of(item.status)
    code, out, err = item.code, item.out, item.err
    data: Any = item.data
    changed: bool | None = None
    if op.kind == "shell" and status in ("ok", "failed"):
        status, data, changed, err = op.judge(code, out, err, data)
    return Result(host=host.name, op=op.name, status=status, code=code, out=out, err=err,
                  started_at=item.started_at or started, duration_s=duration,
                  transport="agent", data=data, changed=changed)


def status_of(text: str) -> Status:
    """The hub's status word as a Status ("error" for a word this side does not know)."""
    known: tuple[Status, ...] = ("ok", "failed", "unreachable", "timeout", "lost", "error")
    for st in known:
        if st == text:
            return st
    return "error"


def connected_records(listed: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The hub's `agents` answer → the connected agents' records, by name."""
    return {a["name"]: dict(a) for a in listed if a.get("state") == "connected"}


def refusal(host: Host, agents: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why the connected agent named like `host` must not run its commands (another
    machine: one line), or None when it may, or when no agent of that name is connected
    (the hub then answers the call as not connected)."""
    agent = agents.get(host.name)
    if agent is None or agent_for(host, agent):
        return None
    return mismatch(host, agent) or ""


def hub_gone(host: str) -> tuple[Status, str]:
    """A call whose hub connection dropped after it was sent."""
    return "lost", (f"{host}: the connection to the hub dropped during the call (the command "
                    "may have run; check the host before running it again)")


def hub_refused(host: str, why: object) -> tuple[Status, str]:
    """A call the hub answered with an error."""
    return "error", f"{host}: the hub refused the call: {why}"


def no_result(host: str) -> tuple[Status, str]:
    """A call the hub ended without a result for `host`."""
    return "error", f"{host}: the hub ended the call without a result"
