"""Calls across controllers: two real `reops hub` processes on one real PostgreSQL
(tests/pg_server.py), a real agent connected to ctl2 only. `reops exec --via agent` made
through ctl1 runs on that agent (routed through the store's `remote_calls` table) and
answers as a local call would; ctl2 killed (-9) during a `sleep 30` there → ctl1 says
`lost` once ctl2 stops beating (well before the command could have ended). A streamed
call's lines reach ctl1's client while the command still runs (it waits on a fifo the
test writes only once it saw the line), and stay bounded in the store when ctl1 does not
read them (SIGSTOP). Waits poll a condition with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hubs import until
from test_hub_cluster import Ctl, both

from reops.control.client import HubClient
from reops.control.wire import LineItem, ResultItem
from reops.hub.remote_calls import MAX_LINES
from reops.lab.agents import LabAgents, start_agents, wait_for_agents
from reops.store.pg_flows import PgFlowStore

AGENT = "far1"


@pytest.fixture
def two(tmp_path: Path, pg_url: str) -> Iterator[tuple[Ctl, Ctl, LabAgents]]:
    a, b = Ctl(tmp_path, "ctl1", pg_url), Ctl(tmp_path, "ctl2", pg_url)
    PgFlowStore(pg_url).close()  # migrated here: the hubs start on the current schema
    agents: LabAgents | None = None
    try:
        both(a.start, b.start)
        agents = start_agents([AGENT], b.lab_hub.bind, b.lab_hub.key, b.lab_hub.keys_dir,
                              workdir=tmp_path / "agents", extra=["--heartbeat", "0.5"])
        wait_for_agents(b.lab_hub.control_path, [AGENT])
        yield a, b, agents
    finally:
        if agents is not None:
            agents.stop()
        both(lambda: a.stop(signal.SIGKILL), lambda: b.stop(signal.SIGKILL))


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        return [tuple(r) for r in db.execute(sql.encode()).fetchall()]


async def call_then_cancel(a: Ctl, pg_url: str) -> None:
    """Start `sleep 30` on the agent through ctl1, then leave once ctl2 runs it."""
    client = HubClient(a.lab_hub.control_path)

    async def consume() -> None:
        async for _ in client.pieces("call", hosts=[AGENT], fn="shell", args=["sleep 30"],
                                     kwargs={}, timeout=60.0, stream=False):
            pass
    task = asyncio.create_task(consume())
    try:
        await asyncio.to_thread(until, lambda: rows(
            pg_url, "SELECT state FROM remote_calls") == [("running",)], "ctl2 taking it")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def test_a_call_on_ctl1_runs_on_an_agent_held_by_ctl2_and_is_lost_when_ctl2_dies(
        two: tuple[Ctl, Ctl, LabAgents], tmp_path: Path, pg_url: str) -> None:
    a, b, _ = two
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(f'[hosts.{AGENT}]\naddress = "127.0.0.1"\n')
    until(lambda: rows(pg_url, "SELECT name, controller FROM agent_holders")
          == [(AGENT, "ctl2")], "ctl2 recording that it holds the agent")
    assert AGENT not in {r["name"] for r in a.request("agents")}  # not connected to ctl1

    done = a.cli("exec", "-i", str(inventory), AGENT, "--via", "agent", "--",
                 "echo across-$((6*7)) from $PPID", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "across-42" in done.stdout and "1 ok" in done.stdout, done.stdout
    until(lambda: rows(pg_url, "SELECT count(*) FROM remote_calls") == [(0,)],
          "the answered call's row deleted")

    # past its deadline: timeout, as a local call says it (the row deleted all the same)
    late = a.cli("exec", "-i", str(inventory), AGENT, "--via", "agent", "--timeout", "1",
                 "--", "sleep 20", check=False)
    assert late.returncode != 0 and "timeout" in late.stdout, late.stdout + late.stderr
    until(lambda: rows(pg_url, "SELECT count(*) FROM remote_calls") == [(0,)],
          "the timed-out call's row deleted")

    # the client leaves (Cancel): ctl2 stops the command on its agent, long before its 30 s
    asyncio.run(call_then_cancel(a, pg_url))
    until(lambda: rows(pg_url, "SELECT count(*) FROM remote_calls") == [(0,)],
          "the cancelled call stopped on the agent and its row deleted", timeout=20)

    # ctl2 dies while the agent runs the call: ctl1 answers lost (it may have run)
    box: dict[str, subprocess.CompletedProcess[str]] = {}
    slow = threading.Thread(target=lambda: box.update(run=a.cli(
        "exec", "-i", str(inventory), AGENT, "--via", "agent", "--timeout", "60", "--",
        "sleep 30", check=False)))
    slow.start()
    until(lambda: rows(pg_url, "SELECT state FROM remote_calls") == [("running",)],
          "ctl2 taking the call")
    b.stop(signal.SIGKILL)
    slow.join(25)  # the command itself takes 30 s: an answer before then is ctl1's
    assert not slow.is_alive(), "ctl1 did not answer after ctl2 was killed"
    out = box["run"].stdout + box["run"].stderr
    assert box["run"].returncode != 0 and "lost" in out, out
    assert "ctl2 stopped during the call" in out, out
    assert rows(pg_url, "SELECT count(*) FROM remote_calls") == [(0,)]

    # an agent nobody holds: the same one line as a single controller gives
    gone = a.cli("exec", "-i", str(inventory), AGENT, "--via", "agent", "--", "true",
                 check=False)
    assert gone.returncode != 0 and f"agent {AGENT} is not connected" in (
        gone.stdout + gone.stderr), gone.stdout + gone.stderr


class Gate:
    """A fifo a command blocks on (`read x < FIFO`) until the test lets it go on. Held
    open for reading and writing here: what the test writes waits in the pipe even when
    the command has not opened it yet, and never blocks the test."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.fd = path, os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def release(self) -> None:
        os.write(self.fd, b"go\n")

    def close(self) -> None:
        os.close(self.fd)


async def streamed(a: Ctl, command: str, on_first: str, gate: Gate | None,
                   before: list[object]) -> list[object]:
    """A streamed call through ctl1; `before` gets what came up to the first line with
    `on_first`, and then the gate (if given) lets the command go on: its end (and its
    result) can only come after that line."""
    client = HubClient(a.lab_hub.control_path)
    got: list[object] = []
    try:
        async with asyncio.timeout(60):
            async for piece in client.pieces("call", hosts=[AGENT], fn="shell",
                                             args=[command], kwargs={}, timeout=90.0,
                                             stream=True):
                got.append(piece)
                if isinstance(piece, LineItem) and on_first in piece.text and not before:
                    before.extend(got)  # what came before the command was let go on
                    if gate is not None:
                        gate.release()
    finally:
        await client.close()
    return got


def test_a_streamed_call_routed_to_ctl2_sends_its_lines_as_they_come(
        two: tuple[Ctl, Ctl, LabAgents], tmp_path: Path, pg_url: str) -> None:
    a, _, _ = two
    until(lambda: rows(pg_url, "SELECT name, controller FROM agent_holders")
          == [(AGENT, "ctl2")], "ctl2 recording that it holds the agent")
    gate = Gate(tmp_path / "gate")
    before: list[object] = []
    try:
        got = asyncio.run(streamed(a, f"echo first; read x < {gate.path}; echo then-$x",
                                   "first", gate, before))
    finally:
        if not before:  # never released: the command must not outlive the test
            gate.release()
        gate.close()
    # the line came while the command was blocked on the fifo: before any result
    assert before and not any(isinstance(p, ResultItem) for p in before), got
    lines = [p.text.strip() for p in got if isinstance(p, LineItem)]
    assert lines == ["first", "then-go"], got  # in order, each once
    assert isinstance(got[-1], ResultItem) and got[-1].status == "ok", got
    until(lambda: rows(pg_url, "SELECT count(*) FROM remote_lines") == [(0,)]
          and rows(pg_url, "SELECT count(*) FROM remote_calls") == [(0,)],
          "the call's rows and lines deleted once answered")


def test_a_routed_stream_nobody_reads_stays_bounded_in_the_store(
        two: tuple[Ctl, Ctl, LabAgents], tmp_path: Path, pg_url: str) -> None:
    a, _, _ = two
    until(lambda: rows(pg_url, "SELECT name, controller FROM agent_holders")
          == [(AGENT, "ctl2")], "ctl2 recording that it holds the agent")
    gate, printed = Gate(tmp_path / "gate"), tmp_path / "printed"
    many = MAX_LINES * 3
    command = (f"echo start; read x < {gate.path}; seq 1 {many}; touch {printed}; "
               f"read x < {gate.path}; echo end")
    box: dict[str, list[object]] = {}
    before: list[object] = []

    def run() -> None:
        box["got"] = asyncio.run(streamed(a, command, "start", None, before))
    caller = threading.Thread(target=run)
    caller.start()
    stopped = False
    try:
        until(lambda: before, "the first line on ctl1")
        os.kill(a.proc.pid, signal.SIGSTOP)  # ctl1 reads nothing: lines pile up
        stopped = True
        gate.release()
        until(printed.exists, "the host to print its lines")
        # ctl2 stops writing at the cap (and one line saying what it dropped)
        until(lambda: rows(pg_url, "SELECT count(*) FROM remote_lines")[0][0] >= MAX_LINES,
              "the lines ctl1 has not read to reach the cap")
        assert rows(pg_url, "SELECT count(*) FROM remote_lines")[0][0] <= MAX_LINES + 1
        os.kill(a.proc.pid, signal.SIGCONT)
        stopped = False
        until(lambda: rows(pg_url, "SELECT count(*) FROM remote_lines") == [(0,)],
              "ctl1 to read what was kept")
    finally:
        if stopped:
            os.kill(a.proc.pid, signal.SIGCONT)
        gate.release()  # the last line, now that there is room again
        if not before:
            gate.release()  # never seen: both reads let go, the command must end
        caller.join(90)
        gate.close()
    assert not caller.is_alive()
    lines = [p.text.strip() for p in box["got"] if isinstance(p, LineItem)]
    assert lines[0] == "start" and lines[-1] == "end", (lines[:3], lines[-3:], box["got"][-1])
    numbers = [int(t) for t in lines[1:-1] if t.isdigit()]
    said = [t for t in lines[1:-1] if not t.isdigit()]
    assert said and all(t.startswith("… ") and "dropped" in t for t in said), said
    dropped = sum(int(t.split()[1]) for t in said)
    assert numbers == sorted(set(numbers)) and len(numbers) + dropped == many, (
        len(numbers), dropped)
    assert numbers[:MAX_LINES] == list(range(1, MAX_LINES + 1))  # the first ones kept
    until(lambda: rows(pg_url, "SELECT count(*) FROM remote_lines") == [(0,)],
          "the lines deleted once read")
