"""The store's contract, run against both engines: SQLite (a file) and PostgreSQL (a real
server, the session's `pg`, one fresh database per test). Every public operation of
`MachineStore` and `FlowStore`, their migrations, and the failures a user meets: an
unreachable server, a bad URL, PostgreSQL restarted between two operations."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from reops.store import flows as sqlite_flows
from reops.store import pg_conn, pg_schema, postgres, sqlite
from reops.store.base import Controller, MachineStore, Membership, QueueStore, StoreError
from reops.store.engines import StoreSettings, load_store_settings, open_flows, open_machines
from reops.store.flows import AuditRow, FlowRecord, FlowStore
from reops.store.model import Job, Machine, MachinesError, Placement, System, Type, new_id

ENGINES = ["sqlite", "postgresql"]


def _url(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if engine == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite://{tmp_path / 'store'}"


@pytest.fixture(params=ENGINES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, tmp_path, request)


@pytest.fixture
def store(store_url: str) -> Iterator[MachineStore]:
    s = open_machines(StoreSettings(url=store_url))
    yield s
    s.close()


@pytest.fixture
def flows(store_url: str) -> Iterator[FlowStore]:
    f = open_flows(StoreSettings(url=store_url), keep=3)
    yield f
    f.close()


def system(hostname: str, *, type_: str = "redis", hyp: str = "lab", domain: str | None = None,
           id_: str | None = None) -> System:
    return System(id=id_ or new_id(), type=type_, machine=Machine(hostname=hostname, cpu=2),
                  placement=Placement(hypervisor=hyp, domain=hostname if domain is None
                                      else domain))


# ── migrations ──────────────────────────────────────────────────────────────────────────


def test_opening_migrates_once_and_says_what_it_applied(store_url: str) -> None:
    settings = StoreSettings(url=store_url)
    first, again = open_machines(settings), None
    try:
        expected = len(pg_schema.MACHINE_MIGRATIONS if store_url.startswith("postgresql")
                       else sqlite.MIGRATIONS)
        assert first.applied == list(range(1, expected + 1))
        assert first.schema_version == expected
        again = open_machines(settings)
        assert again.applied == [] and again.migrate() == []
        assert again.schema_version == expected
        f = open_flows(settings)
        flows_n = (len(pg_schema.FLOW_MIGRATIONS) if store_url.startswith("postgresql")
                   else 1)
        # its own sequence
        assert f.applied == list(range(1, flows_n + 1)) and f.schema_version == flows_n
        f.close()
    finally:
        first.close()
        if again is not None:
            again.close()


def test_an_older_schema_is_upgraded_in_place(store_url: str) -> None:
    """A store made by an earlier reops (its first migrations only) is upgraded when opened:
    only the missing steps run, and its data is kept and usable by the new operations."""
    if store_url.startswith("postgresql"):
        old: Any = pg_conn.Pg(store_url, "machines", pg_schema.MACHINE_MIGRATIONS[:1])
        total = len(pg_schema.MACHINE_MIGRATIONS)
    else:
        path = Path(store_url.removeprefix("sqlite://")) / "machines.db"
        old = sqlite.SqliteDb(path, sqlite.MIGRATIONS[:2])
        total = len(sqlite.MIGRATIONS)
    kept = Job(id=new_id(), op="sync")
    before = old.migrate()
    if isinstance(old, pg_conn.Pg):  # a job written by the earlier schema
        old.run(lambda db: postgres._put_jobs(db, [kept]), what="test")
    else:
        with old.tx() as db:
            sqlite._put_job(db, kept)
    old.close()
    store = open_machines(StoreSettings(url=store_url))
    try:
        assert store.applied == list(range(len(before) + 1, total + 1))
        assert store.schema_version == total
        assert store.jobs() == [kept]
        assert isinstance(store, QueueStore)
        assert [c.job.id for c in store.claim("ctl1", 5, 60)] == [kept.id]
    finally:
        store.close()


def test_controllers_migrating_at_once_apply_each_step_once(pg_url: str) -> None:
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            open_machines(StoreSettings(url=pg_url)).close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with psycopg.connect(pg_url) as db:
        rows = db.execute("SELECT component, version FROM schema_migrations"
                          " ORDER BY version").fetchall()
    assert rows == [("machines", v) for v in range(1, len(pg_schema.MACHINE_MIGRATIONS) + 1)]


# ── types ───────────────────────────────────────────────────────────────────────────────


def test_types(store: MachineStore) -> None:
    assert store.types() == []
    redis = Type(name="redis", description="cache", provision="flows/redis.py",
                 args={"port": 6379, "tags": ["a", "b"]})
    store.put_type(redis)
    store.put_type(Type(name="db"))
    assert store.get_type("redis") == redis
    assert [t.name for t in store.types()] == ["db", "redis"]
    store.put_type(msgspec.structs.replace(redis, description="cache v2"))  # replaces
    assert store.get_type("redis").description == "cache v2"
    with pytest.raises(MachinesError, match=r"unknown type 'web' \(known: db, redis\)"):
        store.get_type("web")
    store.put_system(system("r1", type_="redis"))
    with pytest.raises(MachinesError, match=r"type 'redis' is used by 1 system\(s\)"):
        store.remove_type("redis")
    store.remove_type("db")
    assert [t.name for t in store.types()] == ["redis"]
    with pytest.raises(MachinesError, match="unknown type 'db'"):
        store.remove_type("db")


# ── systems ─────────────────────────────────────────────────────────────────────────────


def test_systems_round_trip_upsert_and_order(store: MachineStore) -> None:
    b, a = system("web2"), system("web1")
    store.put_systems([b, a])
    assert store.systems() == [a, b]  # by hostname
    assert store.system(a.id) == a
    assert store.system("f" * 40) is None
    moved = msgspec.structs.replace(a, state="running", description="ünïcode \x00 ok")
    store.put_system(moved)
    assert store.system(a.id) == moved
    assert store.system_by_domain("lab", "web1") == moved
    assert store.system_by_domain("other", "web1") is None
    store.remove_system(a.id)
    assert store.systems() == [b]
    store.remove_system(a.id)  # gone already: no error


def test_one_domain_per_hypervisor_and_record_is_all_or_nothing(store: MachineStore) -> None:
    store.put_system(system("web1"))
    job = Job(id=new_id(), op="create")
    with pytest.raises(MachinesError, match="already exists"):
        store.record([system("web2"), system("web1")], [job])
    assert [s.hostname for s in store.systems()] == ["web1"]
    assert store.jobs() == []  # the job of the failed record is not there either
    store.record([system("x", domain=""), system("y", domain="")])  # no domain: no clash
    assert len(store.systems()) == 3


def test_ids_match_by_unique_prefix(store: MachineStore) -> None:
    a, b = "abcd1" + "0" * 35, "abcd2" + "0" * 35
    store.record([system("a", id_=a), system("b", id_=b)])
    assert store.system_by_prefix("ABCD1").hostname == "a"
    for prefix, message in [("abcd", "ambiguous"), ("ab", "at least 4 hex"),
                            ("abcd%", "at least 4 hex"), ("ffff", "no system")]:
        with pytest.raises(MachinesError, match=message):
            store.system_by_prefix(prefix)


# ── jobs ────────────────────────────────────────────────────────────────────────────────


def test_jobs_keep_their_order_filter_and_limit(store: MachineStore) -> None:
    jobs = [Job(id=new_id(), op="start", system_id="s1", args={"n": i}) for i in range(5)]
    store.record([], jobs[:2])
    store.put_jobs(jobs[2:4])
    store.put_job(jobs[4])
    assert store.jobs() == jobs
    running = msgspec.structs.replace(jobs[1], state="running", started_at=1.5, pid=42)
    store.put_job(running)  # an update keeps its place in the queue
    assert store.jobs() == [jobs[0], running, *jobs[2:]]
    assert store.jobs(states=("running",)) == [running]
    assert store.jobs(states=("running", "failed")) == [running]
    assert store.jobs(states=("queued",), limit=2) == jobs[3:]  # the newest two, oldest first
    assert store.jobs(limit=1) == [jobs[4]]
    assert store.job(running.id) == running
    assert store.job(running.id[:6]) == running
    with pytest.raises(MachinesError, match="no job"):
        store.job("ffffffff")


def test_values_round_trip_exactly(store: MachineStore) -> None:
    job = Job(id=new_id(), op="provision", system_id="s", args={"x": [1, 2.5, None, "é"]},
              result={"nested": {"a": True}}, created_at=1733012345.123456789,
              error="line\nnext \x00 nul")
    store.put_job(job)
    assert store.job(job.id) == job


# ── flows ───────────────────────────────────────────────────────────────────────────────


def test_flow_records(flows: FlowStore) -> None:
    assert flows.all() == [] and flows.get("heal") is None
    heal = FlowRecord(name="heal", file="/f/heal.py", func="heal", args=["--name", "x"])
    flows.save(heal)
    flows.save(FlowRecord(name="audit", file="/f/a.py", func="a"))
    assert flows.get("heal") == heal
    assert [r.name for r in flows.all()] == ["audit", "heal"]
    heal.state, heal.fired = "running", 3
    flows.save(heal)
    got = flows.get("heal")
    assert got is not None and (got.state, got.fired) == ("running", 3)
    flows.remove("audit")
    assert [r.name for r in flows.all()] == ["heal"]


def test_audit_appends_caps_and_pages(flows: FlowStore) -> None:
    rec = FlowRecord(name="heal", file="/f/heal.py", func="heal", fired=1)
    rows = [AuditRow(flow="heal", at=float(i), firing=i, host=f"h{i}", status="ok")
            for i in range(5)]
    flows.record(rows[:2], [rec])  # rows and the flow's counters together
    stored = flows.get("heal")
    assert stored is not None and stored.fired == 1
    flows.record(rows[2:])
    flows.record([AuditRow(flow="other", at=9.0, detail="x \x00 y")])
    kept = flows.audit("heal")
    assert [r.host for r in kept] == ["h2", "h3", "h4"]  # keep=3: the oldest went
    seqs = [r.seq for r in kept]
    assert seqs == sorted(seqs) and seqs[0] > 0
    assert [r.host for r in flows.audit("heal", after=seqs[0])] == ["h3", "h4"]
    assert [r.host for r in flows.audit("heal", limit=1)] == ["h4"]
    assert flows.audit("other")[0].detail == "x \x00 y"
    assert flows.audit("nobody") == []


def test_a_failed_record_writes_nothing(flows: FlowStore) -> None:
    class Boom(msgspec.Struct):
        pass

    bad: Any = Boom()  # not encodable as a FlowRecord row would be: the write fails
    with pytest.raises(Exception):  # noqa: B017 - any engine's error; what matters is below
        flows.record([AuditRow(flow="heal", at=1.0)], [bad])
    assert flows.audit("heal") == []


# ── engines and config ──────────────────────────────────────────────────────────────────


def test_store_url_in_config_or_env_picks_the_engine(tmp_path: Path, pg_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nurl = "{pg_url}"\n')
    monkeypatch.setenv("REOPS_CONFIG", str(config))
    monkeypatch.delenv("REOPS_STORE_URL", raising=False)
    s = open_machines()
    try:
        assert isinstance(s, postgres.PgStore) and "password" not in s.where
        assert pg_url.split("@")[0].split(":")[-1] not in s.where  # no password shown
    finally:
        s.close()
    monkeypatch.setenv("REOPS_STORE_URL", f"sqlite://{tmp_path / 'here'}")
    f = open_flows()
    try:
        assert isinstance(f, sqlite_flows.SqliteFlowStore)
        assert f.where == str(tmp_path / "here" / "flows.db")
    finally:
        f.close()
    monkeypatch.delenv("REOPS_STORE_URL")
    config.write_text("")
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    assert load_store_settings().url == ""
    d = open_machines()  # the embedded default: SQLite in reops' home
    try:
        assert isinstance(d, sqlite.Store) and d.where == str(tmp_path / "home" / "machines.db")
    finally:
        d.close()


@pytest.mark.parametrize("url,message", [
    ("mysql://db1/reops", "must start with postgresql:// or sqlite:///"),
    ("sqlite://relative/dir", "give an absolute directory"),
])
def test_a_bad_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as e:
        open_machines(StoreSettings(url=url))
    assert "\n" not in str(e.value)


def test_an_unreachable_or_refusing_server_is_one_line(
        pg: Any, dead_address: tuple[str, int]) -> None:
    host, port = dead_address
    with pytest.raises(StoreError) as e:
        open_machines(StoreSettings(url=f"postgresql://reops:secret@{host}:{port}/reops"))
    text = str(e.value)
    assert "\n" not in text and "cannot connect to PostgreSQL" in text
    assert f"{host}:{port}" in text and "secret" not in text
    wrong = pg.url().replace(pg.password, "wrong-password")
    with pytest.raises(StoreError, match="password authentication failed") as e:
        open_flows(StoreSettings(url=wrong))
    assert "\n" not in str(e.value) and "wrong-password" not in str(e.value)


def test_postgresql_restarted_between_two_operations(pg: Any, pg_url: str) -> None:
    s = open_machines(StoreSettings(url=pg_url))
    f = open_flows(StoreSettings(url=pg_url))
    try:
        assert isinstance(s, postgres.PgStore)
        first = Job(id=new_id(), op="sync")
        s.put_job(first)
        f.record([AuditRow(flow="heal", at=1.0)])
        pg.restart()  # every connection is dropped
        second = Job(id=new_id(), op="sync")
        s.put_job(second)  # reconnects, then writes
        assert s.reconnects == 1
        assert s.jobs() == [first, second]
        f.record([AuditRow(flow="heal", at=2.0)])  # an append too: it had not begun
        assert [r.at for r in f.audit("heal")] == [1.0, 2.0]
    finally:
        s.close()
        f.close()


# ── the command ─────────────────────────────────────────────────────────────────────────


def _reops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_reops_store_migrate_says_what_it_did(tmp_path: Path, pg_url: str) -> None:
    env = {**os.environ, "REOPS_HOME": str(tmp_path / "home"),
           "REOPS_CONFIG": str(tmp_path / "none.toml"), "REOPS_STORE_URL": pg_url}
    first = _reops("store", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("machines: postgresql://reops@")
    n = len(pg_schema.MACHINE_MIGRATIONS)
    steps = ", ".join(str(v) for v in range(1, n + 1))
    assert f"schema version {n} (applied migration(s) {steps})\nflows: " in first.stdout
    fn = len(pg_schema.FLOW_MIGRATIONS)
    assert first.stdout.endswith(f"schema version {fn} (applied migration(s) "
                                 f"{', '.join(str(v) for v in range(1, fn + 1))})\n")
    again = _reops("store", "migrate", env=env)
    assert again.stdout.count("already up to date") == 2, again.stdout
    local = _reops("store", "migrate", "--url", f"sqlite://{tmp_path / 'db'}", env=env)
    assert local.returncode == 0, local.stderr
    n = len(sqlite.MIGRATIONS)
    steps = ", ".join(str(v) for v in range(1, n + 1))
    assert (f"machines: {tmp_path / 'db' / 'machines.db'}: schema version {n}"
            f" (applied migration(s) {steps})") in local.stdout
    bad = _reops("store", "migrate", "--url", "mysql://x", env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "must start with postgresql://" in bad.stderr


def test_a_connection_lost_mid_append_is_one_line_and_the_next_call_reconnects(
        pg_url: str) -> None:
    """The audit append is not idempotent: lost after it began, it is not replayed blindly
    (a second copy of the rows); the caller gets one line, and the next call works."""
    f = open_flows(StoreSettings(url=pg_url))
    rec = FlowRecord(name="heal", file="/f/heal.py", func="heal")
    f.save(rec)
    failed: list[BaseException] = []

    def append() -> None:
        try:
            f.record([AuditRow(flow="heal", at=1.0)], [rec])
        except BaseException as e:
            failed.append(e)

    with psycopg.connect(pg_url, autocommit=True) as other:
        other.execute("BEGIN")
        other.execute("LOCK TABLE flows IN EXCLUSIVE MODE")  # the append waits on its upsert
        writer = threading.Thread(target=append)
        writer.start()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            pid = None
            for _ in range(600):  # until the append waits for the lock (deadline: 60 s)
                row = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND query LIKE 'INSERT INTO flows%%'"
                ).fetchone()
                if row:
                    pid = row[0]
                    break
                admin.execute("SELECT pg_sleep(0.1)")
            assert pid is not None, "the append never reached the flows upsert"
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        writer.join(60)
        other.execute("ROLLBACK")
    try:
        assert len(failed) == 1 and isinstance(failed[0], StoreError)
        text = str(failed[0])
        assert "\n" not in text and "lost while writing 1 audit row(s)" in text
        assert "may not have been written" in text
        assert f.audit("heal") == []  # it had not committed, and was not replayed
        f.record([AuditRow(flow="heal", at=2.0)])  # the next call reconnects
        assert [r.at for r in f.audit("heal")] == [2.0]
    finally:
        f.close()


# ── claims (QueueStore) ─────────────────────────────────────────────────────────────────


def _queue(store: MachineStore, n: int) -> list[Job]:
    jobs = [Job(id=new_id(), op="sync", args={"n": i}) for i in range(n)]
    store.put_jobs(jobs)
    return jobs


def _until(what: str, check: Any, deadline_s: float = 20.0) -> Any:
    """Poll `check()` until it returns something truthy; fail after the deadline."""
    stop = threading.Event()
    timer = threading.Timer(deadline_s, stop.set)
    timer.start()
    try:
        while not stop.is_set():
            if got := check():
                return got
            stop.wait(0.05)
    finally:
        timer.cancel()
    raise AssertionError(f"{what}: not within {deadline_s}s")


def test_claims_take_queued_jobs_oldest_first_and_once(store: MachineStore) -> None:
    assert isinstance(store, QueueStore)
    jobs = _queue(store, 5)
    first = store.claim("ctl1", 2, 60)
    assert [c.job.id for c in first] == [j.id for j in jobs[:2]]
    assert {(c.controller, c.epoch, c.job.state) for c in first} == {("ctl1", 1, "running")}
    assert all(c.job.started_at and c.lease_until > c.job.started_at + 59 for c in first)
    assert store.job(jobs[0].id) == first[0].job  # running, on disk
    rest = store.claim("ctl2", 10, 60)
    assert [c.job.id for c in rest] == [j.id for j in jobs[2:]]
    assert store.claim("ctl3", 10, 60) == []
    assert store.jobs(states=("queued",)) == []
    assert store.expired("ctl3", 10, 60) == []  # every lease still holds


def test_finish_and_renew_only_while_the_claim_holds(store: MachineStore) -> None:
    assert isinstance(store, QueueStore)
    _queue(store, 1)
    (claim,) = store.claim("ctl1", 1, 60)
    (renewed,) = store.renew([claim], 120)
    assert renewed.lease_until > claim.lease_until
    done = msgspec.structs.replace(claim.job, state="succeeded", finished_at=2.0)
    follow = Job(id=new_id(), op="provision", follows=claim.job.id)
    stale = msgspec.structs.replace(claim, epoch=claim.epoch - 1)
    assert store.finish(stale, done) is False  # an older epoch is fenced off
    assert store.job(claim.job.id).state == "running"
    assert store.finish(claim, done, then=[follow]) is True
    assert store.job(claim.job.id) == done
    assert store.jobs(states=("queued",)) == [follow]  # written with it
    assert store.finish(claim, done) is False  # finished: the claim is gone
    assert store.renew([claim], 60) == []


def test_an_expired_lease_is_taken_over_and_fences_the_old_owner(store: MachineStore) -> None:
    assert isinstance(store, QueueStore)
    (job,) = _queue(store, 1)
    (old,) = store.claim("ctl1", 1, 0.2)  # ctl1 stalls past its lease
    new = _until("the lease to run out", lambda: store.expired("ctl2", 10, 60))
    assert [(c.job.id, c.controller, c.epoch) for c in new] == [(job.id, "ctl2", 2)]
    assert store.renew([old], 60) == []
    late = msgspec.structs.replace(old.job, state="succeeded")
    assert store.finish(old, late) is False  # ctl1 came back too late: nothing written
    interrupted = msgspec.structs.replace(new[0].job, state="interrupted", error="ctl1 died")
    assert store.finish(new[0], interrupted) is True
    assert store.job(job.id).state == "interrupted"


def test_controllers_claiming_at_once_get_every_job_exactly_once(store_url: str) -> None:
    setup = open_machines(StoreSettings(url=store_url))
    jobs = _queue(setup, 120)
    got: dict[str, list[str]] = {}
    failed: list[BaseException] = []

    def controller(name: str) -> None:
        mine = open_machines(StoreSettings(url=store_url))
        assert isinstance(mine, QueueStore)
        try:
            while batch := mine.claim(name, 7, 60):
                got.setdefault(name, []).extend(c.job.id for c in batch)
        except BaseException as e:
            failed.append(e)
        finally:
            mine.close()

    threads = [threading.Thread(target=controller, args=(f"ctl{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    setup.close()
    assert failed == []
    claimed = [i for ids in got.values() for i in ids]
    assert sorted(claimed) == sorted(j.id for j in jobs)  # all of them, none twice


def test_claims_skip_rows_another_controller_has_locked(pg_url: str) -> None:
    """FOR UPDATE SKIP LOCKED: a controller in the middle of claiming the oldest jobs does
    not make another one wait; it gets the next ones at once."""
    store = open_machines(StoreSettings(url=pg_url))
    assert isinstance(store, QueueStore)
    jobs = _queue(store, 5)
    result: list[Any] = []
    with psycopg.connect(pg_url, autocommit=True) as other:
        other.execute("BEGIN")
        other.execute("SELECT id FROM jobs ORDER BY seq LIMIT 2 FOR UPDATE")
        worker = threading.Thread(target=lambda: result.append(store.claim("ctl2", 2, 60)))
        worker.start()
        worker.join(30)
        blocked = worker.is_alive()
        other.execute("ROLLBACK")
        worker.join(30)
    store.close()
    assert not blocked, "claim waited for the other controller's locked rows"
    assert [c.job.id for c in result[0]] == [j.id for j in jobs[2:4]]


# ── controllers (Membership) ────────────────────────────────────────────────────────────


def test_controllers_beat_age_and_leave(store: MachineStore) -> None:
    assert isinstance(store, Membership)
    assert store.controllers() == []
    store.beat(Controller(name="ctl2", host="b", pid=7))
    store.beat(Controller(name="ctl1", host="a", pid=1, load={"jobs": 3.0}))
    ctl1, ctl2 = store.controllers()
    assert (ctl1.name, ctl1.host, ctl1.load, ctl2.name) == ("ctl1", "a", {"jobs": 3.0}, "ctl2")
    assert 0 <= ctl1.age_s < 10 and ctl1.since > 0
    aged = _until("ctl1 to age", lambda: [c for c in store.controllers()
                                          if c.name == "ctl1" and c.age_s > 0.2])
    store.beat(Controller(name="ctl1", host="a", pid=1))  # the same process: same since
    again = store.controllers()[0]
    assert again.age_s < aged[0].age_s and again.since == ctl1.since
    store.beat(Controller(name="ctl1", host="a", pid=2))  # restarted: a new since
    assert store.controllers()[0].since > ctl1.since
    store.leave("ctl2")
    assert [c.name for c in store.controllers()] == ["ctl1"]


def test_a_refused_statement_is_one_line(pg_url: str) -> None:
    """A role without the grants (a DBA's typo) gets one line naming the store and the
    server's reason, not a psycopg traceback."""
    open_machines(StoreSettings(url=pg_url)).close()  # the schema, made by its owner
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-secret'")
    try:
        host = pg_url.split("?", 1)[1]
        reader = f"postgresql://reader:reader-secret@/{pg_url.split('/')[3].split('?')[0]}?{host}"
        with pytest.raises(StoreError) as e:
            open_machines(StoreSettings(url=reader))
        text = str(e.value)
        assert "\n" not in text and "permission denied" in text
        assert text.startswith("store postgresql://reader@") and "reader-secret" not in text
        assert text.endswith("migrating the schema failed: permission denied for schema public")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("DROP OWNED BY reader")
            admin.execute("DROP ROLE reader")


# ── wake-ups (LISTEN/NOTIFY on PostgreSQL) ──────────────────────────────────────────────


def test_queued_jobs_wake_a_listener(store: MachineStore, store_url: str) -> None:
    assert isinstance(store, QueueStore)
    listener = store.listen()
    # PostgreSQL: another controller queues; SQLite: the same process's store does
    writer = (open_machines(StoreSettings(url=store_url))
              if store_url.startswith("postgresql") else store)
    try:
        assert listener.wait(0.05) is False  # nothing queued yet
        job = Job(id=new_id(), op="sync")
        writer.put_jobs([job])
        assert listener.wait(20) is True
        writer.put_job(msgspec.structs.replace(job, state="succeeded"))
        assert listener.wait(0.05) is False  # a finished job wakes nobody
        writer.record([], [Job(id=new_id(), op="start")])
        assert listener.wait(20) is True
    finally:
        listener.close()
        if writer is not store:
            writer.close()


def test_a_listener_survives_a_postgresql_restart(pg: Any, pg_url: str) -> None:
    store = open_machines(StoreSettings(url=pg_url))
    assert isinstance(store, QueueStore)
    listener = store.listen()
    try:
        pg.restart()  # the LISTEN connection is dropped
        assert listener.wait(20) is True  # re-made: "look now", something may be missed
        assert getattr(listener, "reconnects", 0) == 1
        store.put_jobs([Job(id=new_id(), op="sync")])
        assert listener.wait(20) is True  # and it hears the next one
    finally:
        listener.close()
        store.close()
