"""Job events across controllers: two real `reops hub` processes on one real PostgreSQL
(tests/pg_server.py), each running the machines' job queue on libvirt's test driver.
A `reops systems create` made through ctl2 while ctl1 is stopped (SIGSTOP: it cannot
claim the jobs, so ctl2 runs them all) → a `reops tail event.jobs` on ctl1 gets each
job's started and succeeded events exactly once, marked with ctl2, once ctl1 runs again
(relayed from the store's events table by seq). Waits poll a condition with a deadline."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubs import until
from systems_fixtures import config_toml
from test_hub_cluster import FLOW, Ctl, both

from reops.store.pg_flows import PgFlowStore
from reops.store.postgres import PgStore


@pytest.fixture
def hubs(tmp_path: Path, pg_url: str) -> Iterator[tuple[Ctl, Ctl]]:
    config = str(config_toml(tmp_path))
    a, b = Ctl(tmp_path, "ctl1", pg_url), Ctl(tmp_path, "ctl2", pg_url)
    for c in (a, b):
        c.env_vars.update(REOPS_CONFIG=config, REOPS_STORE_LEASE="3", REOPS_STORE_POLL="0.5")
    PgFlowStore(pg_url).close()  # migrated here: the hubs start on the current schema
    try:
        both(a.start, b.start)
        yield a, b
    finally:
        for c in (a, b):
            if c.lab_hub.proc is not None and c.lab_hub.proc.poll() is None:
                os.kill(c.lab_hub.proc.pid, signal.SIGCONT)
        both(lambda: a.stop(signal.SIGKILL), lambda: b.stop(signal.SIGKILL))


def test_a_job_run_by_ctl2_reaches_a_tail_on_ctl1_exactly_once(
        hubs: tuple[Ctl, Ctl], pg_url: str, tmp_path: Path) -> None:
    a, b = hubs
    flow_file = tmp_path / "tick.py"
    flow_file.write_text(FLOW)
    store = PgStore(pg_url)
    try:
        until(lambda: {c.name for c in store.controllers() if "jobs" in c.load}
              >= {"ctl1", "ctl2"}, "both hubs' queues to beat")
    finally:
        store.close()
    lines: list[dict[str, Any]] = []
    tail = a.tail(lines, "event.jobs", "event.flows")
    try:
        until(lambda: a.request("bus.stats")["subscriptions"].get("event.jobs"),
              "tail subscribed on ctl1")
        os.kill(a.proc.pid, signal.SIGSTOP)  # ctl1 claims nothing: ctl2 runs them all
        try:
            b.cli("types", "add", "redis", "-d", "redis server")
            made = b.cli("systems", "create", "redis", "--preset", "small", "--count", "2")
            assert made.stderr.count("succeeded   create") == 2, made.stderr
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        store = PgStore(pg_url)
        try:
            jobs = [j for j in store.jobs() if j.op == "create"]
        finally:
            store.close()
        assert len(jobs) == 2 and {j.controller for j in jobs} == {"ctl2"}, jobs

        def seen(job: str, kind: str) -> list[dict[str, Any]]:
            return [m["data"] for m in lines
                    if m["topic"].startswith("event.jobs.") and m["data"].get("event") == kind
                    and m["data"]["job"]["id"] == job]

        for j in jobs:
            until(lambda j=j: seen(j.id, "succeeded"), f"job {j.short_id} succeeded on ctl1")
        # a marker after them, posted by ctl2 in order: once it is on ctl1's bus, nothing
        # from the create jobs may still be on its way
        b.cli("flows", "start", str(flow_file), "--as", "marker", "--every", "60")
        until(lambda: [m for m in lines if m["topic"].startswith("event.flows")
                       and m["data"].get("flow") == "marker"], "the marker on ctl1")
        lines[:] = [m for m in lines if m["topic"].startswith("event.jobs.")]
        for j in jobs:
            for kind in ("queued", "started", "succeeded"):
                got = seen(j.id, kind)
                assert len(got) == 1, (kind, got)  # once: not relayed twice, no echo
                assert got[0]["controller"] == "ctl2", got
            assert seen(j.id, "started")[0]["job"]["controller"] == "ctl2"
        counts = Counter((m["data"]["job"]["id"], m["data"]["event"]) for m in lines)
        assert max(counts.values()) == 1, counts
    finally:
        tail.terminate()
        tail.wait(10)
