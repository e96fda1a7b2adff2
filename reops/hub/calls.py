"""The in-flight call table: every call sent to an agent until its one answer.

Each call ends exactly once — with the agent's Done, a hub-side deadline (its timeout plus
a grace), or its agent being lost — and its `on_done` callback then gets a plain dict in
the agent's terms (status, code, out, err, started_at, duration_s, data).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reops_agent.protocol import Call, Done, Output

OnLine = Callable[[str, str, str], None]  # host, stream, text
OnDone = Callable[[str, dict[str, Any]], None]  # host, result


@dataclass(slots=True)
class InFlight:
    """One call awaiting its agent's answer."""

    agent: str
    call: Call
    on_done: OnDone
    on_line: OnLine | None
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)
    deadline: asyncio.TimerHandle | None = None


def failure(status: str, err: str, started_at: float = 0.0, duration_s: float = 0.0,
            ) -> dict[str, Any]:
    """A result for a call that never completed on its agent (code -1)."""
    return {"status": status, "code": -1, "out": "", "err": err, "started_at": started_at,
            "duration_s": duration_s, "data": None}


class CallTable:
    """Calls by id; ids are unique for the hub's lifetime."""

    def __init__(self, max_calls: int) -> None:
        self._ids = itertools.count(1)
        self._calls: dict[int, InFlight] = {}
        self.max_calls = max_calls

    def __len__(self) -> int:
        return len(self._calls)

    def next_id(self) -> int:
        return next(self._ids)

    def get(self, call_id: int) -> InFlight | None:
        return self._calls.get(call_id)

    def add(self, entry: InFlight, expire_after: float | None) -> None:
        """Track `entry`; fail it with status timeout if no answer within `expire_after`."""
        self._calls[entry.call.id] = entry
        if expire_after is not None:
            loop = asyncio.get_running_loop()
            entry.deadline = loop.call_later(expire_after, self._expire, entry.call.id,
                                             expire_after)

    def line(self, agent: str, out: Output) -> None:
        entry = self._calls.get(out.id)
        if entry is not None and entry.agent == agent and entry.on_line is not None:
            entry.on_line(agent, out.stream, out.text)

    def done(self, agent: str, done: Done) -> bool:
        """Finish a call with its agent's answer; False if unknown or not that agent's."""
        entry = self._calls.get(done.id)
        if entry is None or entry.agent != agent:
            return False
        self._finish(entry, {"status": done.status, "code": done.code, "out": done.out,
                             "err": done.err, "started_at": done.started_at or entry.started_at,
                             "duration_s": done.duration_s, "data": done.data})
        return True

    def fail(self, call_id: int, status: str, err: str) -> None:
        entry = self._calls.get(call_id)
        if entry is not None:
            self._finish(entry, failure(status, err, entry.started_at,
                                        time.monotonic() - entry.t0))

    def fail_agent(self, agent: str, status: str, err: str) -> int:
        """Fail every call in flight on `agent` (it was lost); how many there were."""
        ids = [i for i, e in self._calls.items() if e.agent == agent]
        for i in ids:
            self.fail(i, status, err)
        return len(ids)

    def _expire(self, call_id: int, after: float) -> None:
        entry = self._calls.get(call_id)
        if entry is not None:
            entry.deadline = None
            self.fail(call_id, "timeout",
                      f"no answer from agent {entry.agent} within {after:g} s")

    def _finish(self, entry: InFlight, result: dict[str, Any]) -> None:
        del self._calls[entry.call.id]
        if entry.deadline is not None:
            entry.deadline.cancel()
        entry.on_done(entry.agent, result)
