"""Several real `reops hub` processes on one real PostgreSQL (tests/pg_server.py): a flow
runs on exactly one of them, moves to a live one when its controller is killed (-9), is
stopped through the store from any controller; `hub status` lists the peers; an event
raised on one hub reaches a `reops tail` on another exactly once, also after its LISTEN
connection was terminated by the server. Waits poll a condition with a deadline."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hubs import HubProc, until

from reops.store.flows import AuditRow
from reops.store.pg_flows import PgFlowStore

#: a lease short enough for a quick takeover; renewals three times a lease
LEASE_S = 3.0

FLOW = '''\
"""A clock on the runtime loop: each tick is a firing in the audit."""
import reactivex
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler

from reops.core.runtime import get_runtime
from reops.flows import flow


@flow
def tick(every: float = 0.3) -> object:
    """Fire every EVERY seconds."""
    return reactivex.interval(every, scheduler=AsyncIOThreadSafeScheduler(get_runtime().loop))
'''


class Ctl(HubProc):
    """A `reops hub` named `name` with its own home and ports, on the shared store."""

    def __init__(self, root: Path, name: str, url: str) -> None:
        super().__init__(root / name, REOPS_STORE_URL=url, REOPS_HUB_NAME=name,
                         REOPS_CLUSTER_LEASE_S=str(LEASE_S),
                         REOPS_HUB_BUS_IN="tcp://127.0.0.1:*",
                         REOPS_HUB_BUS_OUT="tcp://127.0.0.1:*")
        self.name = name

    def ls(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.request("flows.ls")}

@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[tuple[Ctl, Ctl, PgFlowStore]]:
    a, b = Ctl(tmp_path, "ctl1", pg_url), Ctl(tmp_path, "ctl2", pg_url)
    store = PgFlowStore(pg_url)  # migrated here: the hubs start on the current schema
    try:
        both(a.start, b.start)
        yield a, b, store
    finally:
        # killed: the database is dropped after each test, a clean stop is not what
        # these tests are about, and it would cost seconds of draining per hub
        both(lambda: a.stop(signal.SIGKILL), lambda: b.stop(signal.SIGKILL))
        store.close()


def both(*calls: Callable[[], object]) -> None:
    """Run the calls at once (two hubs start or stop side by side); raise the first error."""
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    path = tmp_path / "tick.py"
    path.write_text(FLOW)
    return path


def fired(store: PgFlowStore, name: str, by: str) -> list[AuditRow]:
    return [r for r in store.audit(name) if r.status == "fired" and r.controller == by]


def test_one_runner_per_flow_takeover_after_kill_and_stop_from_a_peer(
        cluster: tuple[Ctl, Ctl, PgFlowStore], flow_file: Path, tmp_path: Path,
        pg_url: str) -> None:
    a, b, store = cluster
    out = a.cli("flows", "start", str(flow_file), "--every", "0.3").stdout
    assert out.startswith("started tick")
    until(lambda: len(fired(store, "tick", "ctl1")) >= 5, "tick firing on ctl1")
    # exactly one runner: every audit row so far came from ctl1, none from ctl2
    assert {r.controller for r in store.audit("tick")} == {"ctl1"}
    # the peer sees who runs it, and refuses a second runner in one line
    assert b.ls()["tick"]["controller"] == "ctl1"
    again = b.cli("flows", "start", str(flow_file), check=False)
    assert again.returncode == 2
    assert "'tick' is already running on ctl1" in again.stderr.strip().splitlines()[-1]
    # hub status on ctl2: both controllers alive, and which one runs the flow
    st = json.loads(b.cli("hub", "status", "-o", "json").stdout)["cluster"]
    peers = {c["name"]: c for c in st["controllers"]}
    assert st["name"] == "ctl2" and set(peers) == {"ctl1", "ctl2"}, peers
    assert peers["ctl1"]["alive"] and peers["ctl2"]["alive"] and peers["ctl2"]["me"]
    assert peers["ctl1"]["flows"] == ["tick"] and peers["ctl2"]["flows"] == []
    text = b.cli("hub", "status").stdout
    assert "controller ctl2 on postgresql://" in text and "ctl1: alive" in text

    # kill -9 ctl1: ctl2 takes the flow over once the lease runs out, says from whom
    a.stop(signal.SIGKILL)
    taken = until(lambda: [r for r in store.audit("tick") if r.status == "taken-over"],
                  "ctl2 to take the flow over", timeout=LEASE_S * 4 + 10)
    assert taken[0].controller == "ctl2" and "taken over from ctl1" in taken[0].detail
    seen = len(fired(store, "tick", "ctl2"))
    until(lambda: len(fired(store, "tick", "ctl2")) >= seen + 3, "tick firing on ctl2")
    info = b.ls()["tick"]
    assert (info["controller"], info["taken_from"], info["state"]) == ("ctl2", "ctl1",
                                                                      "running")
    assert "on ctl2, taken over from ctl1" in b.cli("flows", "ls").stdout
    st = b.request("cluster.status")
    peers = {c["name"]: c for c in st["controllers"]}
    assert not peers["ctl1"]["alive"] and peers["ctl2"]["flows"] == ["tick"]
    assert "ctl1: dead (last seen" in b.cli("hub", "status").stdout

    # ctl1 comes back and reloads, then stops, the flow it does not run: through the
    # store, ctl2 obeys
    a.start()
    reloaded = a.cli("flows", "reload", "tick").stdout
    assert reloaded.startswith("reloaded tick:"), reloaded
    rows = [r for r in store.audit("tick") if r.status == "reloaded"]
    assert [r.controller for r in rows] == ["ctl2"]
    assert a.cli("flows", "stop", "tick").stdout.strip() == "stopped tick on ctl2"
    stopped = [r for r in store.audit("tick") if r.status == "stopped"]
    assert stopped and stopped[-1].controller == "ctl2"
    last = max(r.seq for r in store.audit("tick"))
    assert a.ls()["tick"]["state"] == "stopped" and not a.ls()["tick"]["wanted"]
    # nobody runs it any more: three renewals later, no new firing from anyone
    time_now = time.monotonic()
    until(lambda: time.monotonic() - time_now > LEASE_S, "a lease's time to pass")
    assert not [r for r in store.audit("tick", after=last) if r.status == "fired"]


def test_stop_and_reload_asked_on_a_peer_act_before_the_runners_next_renewal(
        tmp_path: Path, pg_url: str, flow_file: Path) -> None:
    """With a long lease (renewals every 10 s), `flows reload` and `flows stop` asked on
    ctl1 of a flow ctl2 runs are done by ctl2 on the ask's NOTIFY: both answer while the
    lease of another flow ctl2 holds still has the end its last renewal gave it."""
    a, b = Ctl(tmp_path, "ctl1", pg_url), Ctl(tmp_path, "ctl2", pg_url)
    for c in (a, b):
        c.env_vars.update(REOPS_CLUSTER_LEASE_S="60", REOPS_CLUSTER_RENEW_S="10")
    store = PgFlowStore(pg_url)

    def lease_end(name: str) -> float:
        with psycopg.connect(pg_url, autocommit=True) as db:
            row = db.execute("SELECT lease_until FROM flow_leases WHERE name = %s",
                             (name,)).fetchone()
        assert row is not None
        return float(row[0])
    try:
        both(a.start, b.start)
        b.cli("flows", "start", str(flow_file), "--every", "0.3")
        b.cli("flows", "start", str(flow_file), "--as", "keep", "--every", "60")
        until(lambda: len(fired(store, "tick", "ctl2")) >= 2, "tick firing on ctl2")
        taken = lease_end("keep")
        # just after a renewal on ctl2: the next one is 10 s away
        until(lambda: lease_end("keep") != taken, "a renewal on ctl2", timeout=30)
        renewed = lease_end("keep")
        reloaded = a.cli("flows", "reload", "tick").stdout
        assert reloaded.startswith("reloaded tick:"), reloaded
        assert a.cli("flows", "stop", "tick").stdout.strip() == "stopped tick on ctl2"
        assert lease_end("keep") == renewed, "ctl2 renewed its leases before it acted"
        done = [(r.status, r.controller) for r in store.audit("tick")
                if r.status in ("reloaded", "stopped")]
        assert done == [("reloaded", "ctl2"), ("stopped", "ctl2")], done
        assert a.ls()["tick"]["state"] == "stopped" and b.ls()["keep"]["state"] == "running"
    finally:
        both(lambda: a.stop(signal.SIGKILL), lambda: b.stop(signal.SIGKILL))
        store.close()


def _events(lines: list[dict[str, Any]], flow: str, kind: str) -> list[dict[str, Any]]:
    return [m for m in lines if m["data"].get("flow") == flow and m["kind"] == kind]


def test_an_event_raised_on_one_hub_reaches_a_tail_on_another_exactly_once(
        cluster: tuple[Ctl, Ctl, PgFlowStore], flow_file: Path, pg_url: str) -> None:
    a, b, _ = cluster
    lines: list[dict[str, Any]] = []
    tail = a.tail(lines, "event.flows")
    try:
        until(lambda: a.request("bus.stats")["subscriptions"].get("event.flows"),
              "tail subscribed on ctl1")
        b.cli("flows", "start", str(flow_file), "--as", "e1", "--every", "60")
        got = until(lambda: _events(lines, "e1", "started"), "e1 started on ctl1's bus")
        assert got[0]["data"]["controller"] == "ctl2"
        # a marker after it: e1's event came once, not again; ctl1 did not echo it back
        b.cli("flows", "start", str(flow_file), "--as", "e2", "--every", "60")
        until(lambda: _events(lines, "e2", "started"), "e2 started on ctl1's bus")
        assert len(_events(lines, "e1", "started")) == 1
        with psycopg.connect(pg_url, autocommit=True) as db:
            rows = db.execute("SELECT origin FROM events WHERE topic = 'flows' AND"
                              " data LIKE '%\"e1\"%'").fetchall()
            assert rows == [("ctl2",)]  # posted once, by ctl2; ctl1 relayed without posting
            # the server drops ctl1's LISTEN connection: ctl1 notices and listens again
            killed = db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE application_name = 'reops-events ctl1'").fetchall()
            assert killed == [(True,)]
            until(lambda: a.request("cluster.status")["events"]["listen_reconnects"] >= 1,
                  "ctl1 to re-make its LISTEN connection")
            until(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE"
                                     " application_name = 'reops-events ctl1'"
                                     ).fetchone() == (1,), "a new LISTEN connection")
        b.cli("flows", "stop", "e1")
        until(lambda: _events(lines, "e1", "stopped"), "e1 stopped on ctl1's bus")
        assert len(_events(lines, "e1", "stopped")) == 1
        st = a.request("cluster.status")
        assert st["events"]["relayed"] >= 3
    finally:
        tail.terminate()
        tail.wait(10)


def test_a_stalled_runner_is_fenced_once_a_peer_took_its_flow(
        cluster: tuple[Ctl, Ctl, PgFlowStore], flow_file: Path) -> None:
    a, b, store = cluster
    a.cli("flows", "start", str(flow_file), "--every", "0.3")
    until(lambda: len(fired(store, "tick", "ctl1")) >= 3, "tick firing on ctl1")
    os.kill(a.proc.pid, signal.SIGSTOP)  # ctl1 stalls: it cannot renew its lease
    try:
        taken = until(lambda: [r for r in store.audit("tick") if r.status == "taken-over"],
                      "ctl2 to take the stalled controller's flow", timeout=LEASE_S * 4 + 10)
        assert taken[0].controller == "ctl2" and "from ctl1" in taken[0].detail
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    # ctl1 wakes up, finds its lease gone and stops the flow: it fires no more
    fenced = until(lambda: [r for r in store.audit("tick") if r.status == "fenced"],
                   "ctl1 to stop the flow it lost")
    assert fenced[0].controller == "ctl1"
    seen = len(fired(store, "tick", "ctl2"))
    until(lambda: len(fired(store, "tick", "ctl2")) >= seen + 3, "tick firing on ctl2")
    assert not [r for r in fired(store, "tick", "ctl1") if r.seq > fenced[0].seq]
    assert b.ls()["tick"]["controller"] == "ctl2" and a.ls()["tick"]["controller"] == "ctl2"


def test_a_key_accepted_on_one_controller_is_honoured_on_the_other(
        cluster: tuple[Ctl, Ctl, PgFlowStore], flow_file: Path, tmp_path: Path) -> None:
    from reops_agent.keys import load_keypair

    from reops.hub.bus import bus_name

    a, b, _ = cluster
    keys = tmp_path / "subscriber"
    keys.mkdir(mode=0o700)
    name = bus_name(load_keypair(keys, "bus")[0].decode())

    def state(c: Ctl) -> str:
        return next((k["state"] for k in c.request("keys") if k["name"] == name), "")

    first: list[dict[str, Any]] = []
    # an unknown key: pending on ctl1, refused
    on_a = a.tail(first, "event.flows", "--keys", str(keys))
    try:
        until(lambda: state(a) == "pending", "the subscriber's key pending on ctl1")
        assert state(b) == ""
        assert a.cli("keys", "accept", name).stdout.strip() == f"accepted {name}"
        # ctl2 never saw this key: it honours it because ctl1 accepted it
        until(lambda: state(b) == "accepted", "the key accepted on ctl2 too")
        assert {k["key"] for k in b.request("keys") if k["name"] == name} == {
            load_keypair(keys, "bus")[0].decode()}
    finally:
        on_a.terminate()
        on_a.wait(10)
    lines: list[dict[str, Any]] = []
    on_b = b.tail(lines, "event.flows", "--keys", str(keys))
    try:
        until(lambda: b.request("bus.stats")["subscriptions"].get("event.flows"),
              "the subscriber let in on ctl2")
        b.cli("flows", "start", str(flow_file), "--as", "k1", "--every", "60")
        until(lambda: _events(lines, "k1", "started"), "k1 started, seen with the shared key")
    finally:
        on_b.terminate()
        on_b.wait(10)


def test_a_postgresql_restart_keeps_the_flow_on_its_controller_and_events_flowing(
        cluster: tuple[Ctl, Ctl, PgFlowStore], flow_file: Path, pg: Any) -> None:
    a, b, store = cluster
    a.cli("flows", "start", str(flow_file), "--every", "0.3")
    until(lambda: len(fired(store, "tick", "ctl1")) >= 3, "tick firing on ctl1")
    relayed = a.request("cluster.status")["events"]["relayed"]
    pg.restart()  # every connection dropped: the hubs' stores and listeners reconnect
    seen = len(fired(store, "tick", "ctl1"))
    until(lambda: len(fired(store, "tick", "ctl1")) >= seen + 5, "tick firing on after")
    # well within a lease: it stayed where it was, nobody took it over or fenced it
    assert {r.controller for r in store.audit("tick")} == {"ctl1"}
    assert not [r for r in store.audit("tick") if r.status in ("taken-over", "fenced")]
    b.cli("flows", "start", str(flow_file), "--as", "after", "--every", "60")
    until(lambda: a.request("cluster.status")["events"]["relayed"] > relayed,
          "ctl2's event relayed to ctl1 after the restart")
    assert a.ls()["after"]["controller"] == "ctl2"
