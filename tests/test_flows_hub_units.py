"""The flow runner's parts without a hub: the SQLite flow store, firings, action slots."""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path

from reops.core.model import Host, Result
from reops.hub.flow_gates import Gate, GatedExecutor, _gate
from reops.hub.flow_running import Firings, where
from reops.ops.base import Op
from reops.store.flows import AuditRow, FlowRecord, SqliteFlowStore


def test_store_keeps_records_and_caps_the_audit_per_flow(tmp_path: Path) -> None:
    path = tmp_path / "home" / "flows.db"
    store = SqliteFlowStore(path, keep=3)
    rec = FlowRecord(name="a", file="/f.py", func="a", args=["--x", "1"])
    store.save(rec)
    rec.fired, rec.last = 5, "2 ok"
    store.record([AuditRow(flow="a", at=float(i), firing=i, host="h", status="ok")
                  for i in range(1, 6)] + [AuditRow(flow="b", at=9.0, status="started")],
                 [rec])
    store.close()

    again = SqliteFlowStore(path, keep=3)  # what a restarted hub reads
    assert [r.name for r in again.all()] == ["a"]
    got = again.get("a")
    assert got is not None and (got.fired, got.last, got.args) == (5, "2 ok", ["--x", "1"])
    rows = again.audit("a")
    assert [r.firing for r in rows] == [3, 4, 5]  # the newest 3; the oldest went first
    assert rows[0].seq < rows[1].seq < rows[2].seq
    assert [r.firing for r in again.audit("a", after=rows[0].seq)] == [4, 5]
    assert [r.firing for r in again.audit("a", limit=1)] == [5]
    assert [r.status for r in again.audit("b")] == ["started"]  # another flow's cap
    again.remove("a")
    assert again.get("a") is None
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again.close()


def _result(host: str, op: str, at: float, earlier: tuple[Result, ...] = ()) -> Result:
    return Result(host=host, op=op, status="ok", code=0, started_at=at, earlier=earlier)


def test_firings_group_results_by_their_trigger_event_or_by_step() -> None:
    f = Firings(fired=10)  # numbering goes on from what the store counted
    tick1 = _result("a", "event.clock.tick", 1.0)
    tick2 = _result("a", "event.clock.tick", 2.0)
    assert f.of(_result("a", "exec", 1.1, (tick1,))) == (11, "event.clock.tick")
    assert f.of(_result("b", "exec", 1.2, (tick1,)))[0] == 11  # the same event: one firing
    assert f.of(_result("a", "exec", 2.1, (tick2,)))[0] == 12
    assert f.of(_result("b", "exec", 1.3, (tick1,)))[0] == 11  # late, still its own firing
    # without a trigger event: a run of the first step over distinct hosts is one firing
    assert [f.of(_result(h, "exec", 0.0))[0] for h in "abab"] == [13, 13, 14, 14]
    assert f.fired == 14


def test_where_names_the_flow_files_line() -> None:
    path = "/nowhere/flow.py"
    code = compile("def boom():\n    x = 1\n    raise KeyError('no such host')\n", path, "exec")
    scope: dict[str, object] = {}
    exec(code, scope)
    try:
        scope["boom"]()  # type: ignore[operator]
    except KeyError as e:
        assert where(e, path) == f"{path}:3: KeyError: 'no such host'"


class _Slow:
    """An executor whose runs wait until released, counting how many run at once."""

    transport = "local"

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.release = asyncio.Event()

    async def run(self, host: Host, op: Op, settings: object, on_line: object = None
                  ) -> Result:
        self.running += 1
        self.most = max(self.most, self.running)
        await self.release.wait()
        self.running -= 1
        return _result(host.name, op.name, 0.0)


async def test_gate_bounds_a_flows_actions_and_drains() -> None:
    inner = _Slow()
    ex = GatedExecutor(inner)
    gate = Gate(2)
    op = Op(name="exec", command="true")

    async def run(name: str) -> Result:
        return await ex.run(Host(name=name, address="127.0.0.1"), op, object())

    ctx = contextvars.copy_context()
    ctx.run(_gate.set, gate)
    tasks = [asyncio.get_running_loop().create_task(run(f"h{i}"), context=ctx)
             for i in range(5)]
    outside = asyncio.create_task(run("free"))  # no flow: no slot taken
    while inner.running < 3:
        await asyncio.sleep(0)
    assert (gate.in_flight, inner.running) == (2, 3)
    drained = asyncio.create_task(gate.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    inner.release.set()
    await drained  # the two in flight finished; the three waiting start nothing
    await outside
    assert gate.in_flight == 0 and inner.most == 3
    assert sum(t.done() for t in tasks) == 2
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_stopping_writes_the_rows_a_flush_in_progress_took(tmp_path: Path) -> None:
    """A hub stopping while the audit writer is mid-flush (its rows taken, the write in a
    worker thread) records them: the writer is not cancelled under its write, and the store
    is closed only after it (the lost last Result of a drained step)."""
    import threading

    from reops.hub.flows import FlowRunner, FlowSettings

    runner = FlowRunner(FlowSettings(db=str(tmp_path / "flows.db")))
    (tmp_path / "flows.db").touch()
    serve = asyncio.create_task(runner.serve())
    await runner._ready.wait()
    store = runner.store
    assert store is not None
    writing, go = threading.Event(), threading.Event()
    record = store.record

    def slow(rows: object, recs: object = ()) -> None:
        if rows:
            writing.set()
            go.wait(5)  # a loaded machine: the write has not begun when the hub stops
        record(rows, recs)  # type: ignore[arg-type]

    store.record = slow  # type: ignore[method-assign]
    rec = FlowRecord(name="f", file="/f.py", func="f")
    runner._queue(AuditRow(flow="f", at=1.0, firing=1, host="web2", status="ok"), rec)
    await asyncio.to_thread(writing.wait, 5)  # the writer took the row and is writing it
    serve.cancel()  # the hub stops now
    await asyncio.sleep(0.05)
    go.set()
    await asyncio.gather(serve, return_exceptions=True)
    again = SqliteFlowStore(tmp_path / "flows.db")
    assert [(r.host, r.status) for r in again.audit("f")] == [("web2", "ok")]
    again.close()
