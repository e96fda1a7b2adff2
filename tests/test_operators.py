"""Operators on synthetic streams: no network, exact event sequences."""

from __future__ import annotations

import io
from collections import Counter

import polars as pl
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st

from reops import (
    Host,
    Hosts,
    Outcome,
    Result,
    Stream,
    partition,
    pretty,
    retry,
    run,
    then,
    timeout,
)
from reops.sinks.table import save, to_table
from reops.streams.operators import failed, lost, rolling, successful, unreachable, where


def hosts_named(*names: str) -> Hosts:
    return Hosts(Host(name=n, address=f"10.9.0.{i + 1}") for i, n in enumerate(names))


def result(host: str, code: int = 0, op: str = "t") -> Result:
    return Result(host=host, op=op, status="ok" if code == 0 else "failed", code=code,
                  out=f"{host}\n")


class Recorder:
    """A source that counts how often each host's work really ran."""

    def __init__(self, codes: dict[str, list[int]]) -> None:
        self.codes = codes  # per host: exit codes for the 1st, 2nd, ... run
        self.runs: Counter[str] = Counter()

    def stream(self, hosts: Hosts) -> Stream:
        def subscribe(observer, scheduler=None):  # type: ignore[no-untyped-def]
            for h in hosts:
                n = self.runs[h.name]
                self.runs[h.name] += 1
                seq = self.codes[h.name]
                observer.on_next(result(h.name, seq[min(n, len(seq) - 1)]))
            observer.on_completed()

        return Stream(reactivex.create(subscribe), hosts, self.stream)


def test_partition_subscribes_the_source_once() -> None:
    rec = Recorder({"a": [0], "b": [1], "c": [0]})
    ok, bad = partition(rec.stream(hosts_named("a", "b", "c")))
    assert [r.host for r in run(ok).successful] == ["a", "c"]
    assert [r.host for r in run(bad).failed] == ["b"]
    assert rec.runs == Counter({"a": 1, "b": 1, "c": 1})


def test_retry_reruns_failed_hosts_only_up_to_n() -> None:
    rec = Recorder({"a": [0], "b": [1, 1, 0], "c": [2, 2, 2, 2]})
    out = run(rec.stream(hosts_named("a", "b", "c")) | retry(2, when=failed))
    assert rec.runs == Counter({"a": 1, "b": 3, "c": 3})
    assert [r.host for r in out.successful] == ["a", "b"]
    assert list(out.failure) == [2]


def test_then_runs_next_step_only_for_successful_hosts() -> None:
    rec = Recorder({"a": [0], "b": [5]})
    second = Recorder({"a": [0], "b": [0]})
    out = run(rec.stream(hosts_named("a", "b")) | then(lambda hs: second.stream(hs)))
    assert second.runs == Counter({"a": 1})
    assert out.failure[5][0].host == "b"


def test_rolling_max_failed_reports_hosts_not_started() -> None:
    rec = Recorder({n: [1] for n in "abcdef"})
    out = run(rec.stream(hosts_named(*"abcdef")) | rolling(2, max_failed=2))
    assert sum(rec.runs.values()) == 2
    assert len(out.hosts) == 6 and len(out.failure[-1]) == 4


def test_pretty_prints_marks_tail_and_summary() -> None:
    buf = io.StringIO()
    rec = Recorder({"a": [0], "b": [3]})
    run(rec.stream(hosts_named("a", "b")) | pretty(file=buf, progress=False))
    text = buf.getvalue()
    assert "✔ a" in text and "✘ b" in text and "exit 3" in text
    assert "1 ok · 1 failed (1 exit 3) · 2 hosts" in text


@given(st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                       st.lists(st.integers(0, 3), min_size=1, max_size=3), min_size=1,
                       max_size=12))
@settings(max_examples=60, deadline=None)
def test_every_host_gets_exactly_one_result(codes: dict[str, list[int]]) -> None:
    rec = Recorder(codes)
    out = run(rec.stream(hosts_named(*codes)) | retry(1, when=failed))
    assert sorted(out.hosts) == sorted(codes)
    assert len(out.results) == len(codes)
    assert {r.host for r in out.successful} == {h for h, c in codes.items()
                                                if c[0] == 0 or c[min(1, len(c) - 1)] == 0}


def test_outcome_and_table_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = Outcome.of([result("a"), result("b", 2), Result(host="c", op="t", status="unreachable",
                                                          code=-1, err="refused")])
    assert out.exit_code == 1 and sorted(out.failure) == [-1, 2]
    df = to_table(out)
    assert df.height == 3 and df.filter(pl.col("code") == -1)["err"].to_list() == ["refused"]
    path = tmp_path / "t.parquet"
    save(out, path)
    save(out, path)
    assert pl.read_parquet(path).height == 6
    assert where(successful).name.startswith("where") and failed(out.failure[2][0])


class StatusRecorder:
    """A source giving each host a scripted status per run, counting the runs."""

    def __init__(self, statuses: dict[str, list[str]]) -> None:
        self.statuses = statuses
        self.runs: Counter[str] = Counter()

    def stream(self, hosts: Hosts) -> Stream:
        def subscribe(observer, scheduler=None):  # type: ignore[no-untyped-def]
            for h in hosts:
                n = self.runs[h.name]
                self.runs[h.name] += 1
                seq = self.statuses[h.name]
                status = seq[min(n, len(seq) - 1)]
                observer.on_next(Result(host=h.name, op="t", status=status,  # type: ignore[arg-type]
                                        code=0 if status == "ok" else -1))
            observer.on_completed()

        return Stream(reactivex.create(subscribe), hosts, self.stream)


def test_retry_by_default_reruns_only_unreachable_hosts() -> None:
    """A command that may have started (failed, timeout, lost, error) is never re-run
    unless asked: at most once per step."""
    plan = {"never": ["unreachable", "ok"], "failed": ["failed", "ok"],
            "timeout": ["timeout", "ok"], "lost": ["lost", "ok"], "error": ["error", "ok"]}
    rec = StatusRecorder(plan)
    out = run(rec.stream(hosts_named(*plan)) | retry(3))
    assert rec.runs == Counter({"never": 2, "failed": 1, "timeout": 1, "lost": 1, "error": 1})
    assert [r.host for r in out.successful] == ["never"]
    assert {r.host: r.status for r in out.failed} == {
        "failed": "failed", "timeout": "timeout", "lost": "lost", "error": "error"}


def test_retry_when_lost_is_opt_in() -> None:
    rec = StatusRecorder({"a": ["lost", "ok"], "b": ["unreachable", "ok"]})
    out = run(rec.stream(hosts_named("a", "b")) | retry(1, when=lost))
    assert rec.runs == Counter({"a": 2, "b": 1})
    assert [r.host for r in out.successful] == ["a"] and unreachable(out.failed[0])


def test_every_operator_keeps_an_endless_stream_endless() -> None:
    """Operators derive their Stream (Stream.derive): over an endless source they keep no
    history either, so `endless | where | then | ...` never buffers."""
    hosts = hosts_named("a", "b")
    rec = Recorder({"a": [0], "b": [1]})
    operators = [where(successful), then(lambda hs: rec.stream(hs)), retry(1), rolling(1),
                 timeout(5)]
    for op in operators:
        endless = Stream(reactivex.never(), hosts, rec.stream, replay=False) | op
        finite = rec.stream(hosts) | op
        assert endless.endless and not finite.endless, op
        assert endless.hosts is hosts, op


def test_retry_delay_on_the_runtime_loop_reruns_the_failed_host() -> None:
    """The default clock (a timer on the runtime loop, no `scheduler=`) still re-runs; the
    exact delays are asserted in virtual time (tests/test_operators_virtual.py)."""
    rec = Recorder({"a": [0], "b": [1, 0]})
    out = run(rec.stream(hosts_named("a", "b")) | retry(1, when=failed, delay=0.01))
    assert rec.runs == Counter({"a": 1, "b": 2})
    assert out.ok and [r.host for r in out.successful] == ["a", "b"]


def test_then_passes_events_that_are_not_results_through() -> None:
    """Endless event sources (agent_events, hypervisor_events) carry events that are not
    Results: `then` gives them no next step and never crashes on them."""
    hosts = hosts_named("a")
    second = Recorder({"a": [0]})
    event = {"event": "registered", "agent": "a"}
    source = Stream(reactivex.from_iterable([event, result("a")]), hosts, second.stream,
                    replay=False)
    seen: list[object] = []
    errors: list[Exception] = []
    (source | then(lambda hs: second.stream(hs))).subscribe(seen.append, errors.append)
    assert not errors
    assert event in seen and second.runs == Counter({"a": 1}), seen
