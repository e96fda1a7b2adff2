"""Calls across controllers: two real `reops hub` processes on one real PostgreSQL
(tests/pg_server.py), a real agent connected to ctl2 only. `reops exec --via agent` made
through ctl1 runs on that agent (routed through the store's `remote_calls` table) and
answers as a local call would; ctl2 killed (-9) during a `sleep 30` there → ctl1 says
`lost` once ctl2 stops beating (well before the command could have ended). Waits poll a
condition with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from test_hub_cluster import Ctl, both, until

from reops.control.client import HubClient
from reops.lab.agents import LabAgents, start_agents, wait_for_agents
from reops.store.postgres import PgFlowStore

AGENT = "far1"


@pytest.fixture
def two(tmp_path: Path, pg_url: str) -> Iterator[tuple[Ctl, Ctl, LabAgents]]:
    a, b = Ctl(tmp_path, "ctl1", pg_url), Ctl(tmp_path, "ctl2", pg_url)
    PgFlowStore(pg_url).close()  # migrated here: the hubs start on the current schema
    agents: LabAgents | None = None
    try:
        both(a.start, b.start)
        agents = start_agents([AGENT], b.hub.bind, b.hub.key, b.hub.keys_dir,
                              workdir=tmp_path / "agents", extra=["--heartbeat", "0.5"])
        wait_for_agents(b.hub.control_path, [AGENT])
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
    client = HubClient(a.hub.control_path)

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
