"""Pipelines over real hosts: per-host flow, run-once sources, retry, batches, timeouts."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from pathlib import Path

from reops import (
    Hosts,
    Line,
    Result,
    exec_,
    failed,
    partition,
    pick,
    retry,
    rolling,
    run,
    successful,
    then,
    timeout,
)
from reops.lab.fleet import LabInfo
from reops.streams.operators import where


def web(lab: LabInfo) -> Hosts:
    return lab.as_hosts().glob("web*")


def only_on(address: str, then_: str, otherwise: str = "true") -> str:
    """A command that does something different on the host at `address`."""
    return f'case "$SSH_CONNECTION" in *" {address} "*) {then_};; *) {otherwise};; esac'


def test_partition_runs_the_remote_command_once(lab: LabInfo, tmp_path: Path) -> None:
    hosts = web(lab)
    log = f"/tmp/reops-once-{uuid.uuid4().hex}"
    stream = exec_(hosts, only_on(hosts["web2"].address, "echo x >> " + log + "; exit 4",
                                  "echo x >> " + log))
    ok, bad = partition(stream)
    out_ok, out_bad = run(ok), run(bad)
    assert len(out_ok.successful) == len(hosts) - 1 and [r.host for r in out_bad.failed] == [
        "web2"]
    lines = run(exec_(hosts["web1"], f"wc -l < {log}; rm -f {log}"))
    assert lines.successful[0].out.strip() == str(len(hosts))


def test_then_flows_per_host_without_lock_step(lab: LabInfo) -> None:
    """The slow host's first step ends only once every other host has run its second step:
    it can succeed only if `then` does not wait for the slowest host. No clock involved
    (exact timings: tests/test_operators_virtual.py); the wait gives up after 600 polls."""
    hosts = web(lab)
    slow = hosts["web4"].address
    mark = f"/tmp/reops-then-{uuid.uuid4().hex}"
    others = len(hosts) - 1
    wait_for_others = (f'for i in $(seq 600); do [ "$(ls {mark}-* 2>/dev/null | wc -l)" '
                       f'-ge {others} ] && exit 0; sleep 0.05; done; exit 9')
    second = f'touch {mark}-$(echo "$SSH_CONNECTION" | cut -d" " -f3)'
    out = run(exec_(hosts, only_on(slow, wait_for_others)) | then(exec_, second))
    run(exec_(hosts["web1"], f"rm -f {mark}-*"))
    assert out.ok and len(out.successful) == len(hosts)


def test_then_keeps_failures_and_pick_filters(lab: LabInfo) -> None:
    hosts = web(lab)
    bad = hosts["web5"].address
    out = run(exec_(hosts, only_on(bad, "exit 2")) | then(exec_, "echo second"))
    assert [r.host for r in out.failure[2]] == ["web5"] and out.failure[2][0].op == "exec"
    assert {r.out for r in out.successful} == {"second\n"}
    picked = run(exec_(hosts, only_on(bad, "exit 2")) | pick(successful))
    assert "web5" not in picked.hosts and len(picked.hosts) == len(hosts) - 1
    first = run(exec_(hosts, only_on(bad, "exit 2")))
    assert pick(failed, first, hosts).names == ["web5"]


def test_retry_reruns_only_failed_hosts(lab: LabInfo) -> None:
    hosts = web(lab)
    tag = uuid.uuid4().hex
    # fails the first time on each host (creates a marker), succeeds the second time
    cmd = (f'f=/tmp/reops-retry-{tag}-$(echo "$SSH_CONNECTION" | cut -d" " -f3); '
           'if [ -e "$f" ]; then echo again; rm -f "$f"; else touch "$f"; exit 3; fi')
    no_retry = run(exec_(hosts, cmd))
    assert list(no_retry.failure) == [3] and len(no_retry.failure[3]) == len(hosts)
    run(exec_(hosts, f"rm -f /tmp/reops-retry-{tag}-*"))
    with_retry = run(exec_(hosts, cmd) | retry(1, when=failed))
    assert with_retry.ok and {r.out for r in with_retry.successful} == {"again\n"}


def test_rolling_batches_run_one_after_another(lab: LabInfo) -> None:
    """Each host logs its start and end to one shared file; the log's order (not clocks)
    shows every batch starting after the previous one ended."""
    hosts = lab.as_hosts().glob("db*") | lab.as_hosts().glob("cache*")
    log = f"/tmp/reops-rolling-{uuid.uuid4().hex}"
    me = '$(echo "$SSH_CONNECTION" | cut -d" " -f3)'
    out = run(exec_(hosts, f"echo start {me} >> {log}; sleep 0.3; echo end {me} >> {log}")
              | rolling(4))
    assert out.ok and len(out.successful) == len(hosts)
    logged = run(exec_(hosts["db1"], f"cat {log}; rm -f {log}")).successful[0].out.split("\n")
    at = {line: i for i, line in enumerate(logged)}
    names = hosts.names
    batches = [names[i:i + 4] for i in range(0, len(names), 4)]
    for earlier, later in itertools.pairwise(batches):
        last_end = max(at[f"end {hosts[h].address}"] for h in earlier)
        assert min(at[f"start {hosts[h].address}"] for h in later) > last_end


def test_rolling_stops_after_max_failed(lab: LabInfo) -> None:
    hosts = web(lab)
    out = run(exec_(hosts, "exit 1") | rolling(3, max_failed=3))
    assert len(out.hosts) == len(hosts)
    assert len(out.failure[1]) == 3
    skipped = out.failure[-1]
    assert len(skipped) == len(hosts) - 3
    assert all("not started" in r.err for r in skipped)


def test_pipeline_timeout_marks_late_hosts(lab: LabInfo) -> None:
    """A real host still running at the deadline gets a timeout Result. Only the slow host
    runs here: whether fast hosts beat a wall-clock deadline on a loaded machine is a race;
    that they pass, and the exact times, are in tests/test_operators_virtual.py."""
    slow = web(lab)["web6"]
    out = run(exec_(slow, "sleep 20") | timeout(1))
    assert [r.host for r in out.failed] == ["web6"] and out.failed[0].status == "timeout"
    assert "within 1 s" in out.failed[0].err


def test_lines_stream_in_order_before_result(lab: LabInfo) -> None:
    h = lab.as_hosts()["db2"]
    events: list[object] = []
    done = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        exec_(h, "for i in 1 2 3 4 5; do echo $i; done; echo warn >&2", lines=True).subscribe(
            on_next=events.append, on_completed=lambda: loop.call_soon_threadsafe(done.set))
        await asyncio.wait_for(done.wait(), 30)

    asyncio.run(main())
    lines = [e for e in events if isinstance(e, Line)]
    assert [e.text for e in lines if e.stream == "out"] == ["1", "2", "3", "4", "5"]
    assert [e.text for e in lines if e.stream == "err"] == ["warn"]
    assert isinstance(events[-1], Result) and events[-1].out == "1\n2\n3\n4\n5\n"


async def test_await_gives_the_outcome(lab: LabInfo) -> None:
    out = await exec_(lab.as_hosts().glob("cache*"), "echo hi")
    assert out.ok and {r.out for r in out.successful} == {"hi\n"}


def test_where_with_custom_predicate(lab: LabInfo) -> None:
    hosts = web(lab)
    out = run(exec_(hosts, "echo $SSH_CONNECTION") | where(lambda r: r.out.split()[2].endswith(
        ".1")))
    assert out.hosts == ["web1"]


def test_dry_run_runs_nothing(lab: LabInfo) -> None:
    marker = f"/tmp/reops-dry-{os.getpid()}"
    out = run(exec_(web(lab), f"touch {marker}", dry_run=True))
    assert out.ok and {r.out for r in out.successful} == {f"touch {marker}"}
    assert {r.transport for r in out.successful} == {"local"}
    assert not Path(marker).exists()
