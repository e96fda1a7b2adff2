"""The in-flight call table: every call sent to an agent until its one answer.

Each call ends exactly once — with the agent's Done, a hub-side deadline (its timeout plus
a grace), or its agent's connection going away — and its `on_done` callback then gets a
plain dict in the agent's terms (status, code, out, err, started_at, duration_s, data).
A call that was sent and then lost its agent ends "lost": it may have run.
A large result arrives as ordered Output parts before its Done; they are joined here
(bounded per call).

Deadlines are kept in buckets of DEADLINE_STEP seconds with one timer per bucket, not one
per call: a fan-out to 10,000 agents made 10,000 TimerHandles (and as many cancels) for
deadlines that all fall within the same instant. A call expires at most one step late.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reops_agent.protocol import MAX_OUTPUT_LIMIT, Call, Done, Output

OnLine = Callable[[str, str, str], None]  # host, stream, text
OnDone = Callable[[str, dict[str, Any]], None]  # host, result
OnExpire = Callable[["InFlight"], None]

#: most characters of output parts kept per call (agents keep at most MAX_OUTPUT_LIMIT bytes
#: per stream, never more characters than that)
MAX_PART_CHARS = 2 * MAX_OUTPUT_LIMIT + 64 * 1024
#: deadline resolution: calls whose deadlines fall in the same step share one timer
DEADLINE_STEP = 0.1


@dataclass(slots=True)
class InFlight:
    """One call awaiting its agent's answer."""

    agent: str
    call: Call
    on_done: OnDone
    on_line: OnLine | None
    routing: bytes = b""  # the connection it was sent on
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)
    deadline: int | None = None  # its deadline bucket (loop time / DEADLINE_STEP, rounded up)
    expire_after: float = 0.0
    parts: dict[str, list[str]] = field(default_factory=dict)
    part_chars: int = 0


def failure(status: str, err: str, started_at: float = 0.0, duration_s: float = 0.0,
            ) -> dict[str, Any]:
    """A result for a call that never completed on its agent (code -1)."""
    return {"status": status, "code": -1, "out": "", "err": err, "started_at": started_at,
            "duration_s": duration_s, "data": None}


class CallTable:
    """Calls by id; ids are unique for the hub's lifetime."""

    def __init__(self, max_calls: int, on_expire: OnExpire | None = None) -> None:
        self._ids = itertools.count(1)
        self._calls: dict[int, InFlight] = {}
        self.max_calls = max_calls
        self.on_expire = on_expire  # tells the agent to stop a call the hub gave up on
        # deadline bucket -> (its one timer, the ids of the calls due then)
        self._buckets: dict[int, tuple[asyncio.TimerHandle, set[int]]] = {}

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
            bucket = math.ceil((loop.time() + expire_after) / DEADLINE_STEP)
            due = self._buckets.get(bucket)
            if due is None:
                timer = loop.call_at(bucket * DEADLINE_STEP, self._expire_bucket, bucket)
                due = self._buckets[bucket] = (timer, set())
            due[1].add(entry.call.id)
            entry.deadline, entry.expire_after = bucket, expire_after

    def line(self, agent: str, out: Output) -> None:
        """A streamed line (to `on_line`) or a part of the result (kept, bounded)."""
        entry = self._calls.get(out.id)
        if entry is None or entry.agent != agent:
            return
        if out.part:
            if entry.part_chars + len(out.text) <= MAX_PART_CHARS:
                entry.parts.setdefault(out.stream, []).append(out.text)
                entry.part_chars += len(out.text)
            return
        if entry.on_line is not None:
            entry.on_line(agent, out.stream, out.text)

    def done(self, agent: str, done: Done) -> bool:
        """Finish a call with its agent's answer; False if unknown or not that agent's."""
        entry = self._calls.get(done.id)
        if entry is None or entry.agent != agent:
            return False
        out = "".join([*entry.parts.get("out", ()), done.out])
        err = "".join([*entry.parts.get("err", ()), done.err])
        self._finish(entry, {"status": done.status, "code": done.code, "out": out,
                             "err": err, "started_at": done.started_at or entry.started_at,
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

    def fail_routing(self, routings: set[bytes], status: str, err: str) -> list[str]:
        """Fail every call sent on one of `routings` (connections that went away);
        the agents they were on (once each)."""
        hit = [(i, e.agent) for i, e in self._calls.items() if e.routing in routings]
        for i, agent in hit:
            self.fail(i, status, err.format(agent=agent))
        return sorted({agent for _, agent in hit})

    def _expire_bucket(self, bucket: int) -> None:
        _, ids = self._buckets.pop(bucket, (None, set()))
        for call_id in sorted(ids):  # (in the order they were sent)
            entry = self._calls.get(call_id)
            if entry is not None:
                entry.deadline = None
                if self.on_expire is not None:
                    self.on_expire(entry)
                self.fail(call_id, "timeout", f"no answer from agent {entry.agent} within "
                          f"{entry.expire_after:g} s")

    def _finish(self, entry: InFlight, result: dict[str, Any]) -> None:
        del self._calls[entry.call.id]
        if entry.deadline is not None:
            due = self._buckets.get(entry.deadline)
            if due is not None:
                due[1].discard(entry.call.id)
                if not due[1]:  # the last call due then: its timer is not needed
                    due[0].cancel()
                    del self._buckets[entry.deadline]
        entry.on_done(entry.agent, result)
