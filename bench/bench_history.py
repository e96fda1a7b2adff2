"""The run history at scale: the append cost of a run, and a query over 10^6 Results.

    python bench/bench_history.py [--hosts 200] [--runs 5000] [--days 30] [--repeat 3]

Records `--runs` runs of `--hosts` Results each (10^6 by default), spread over `--days`
days ending now, through the real path (`record()` → the writer thread → one parquet file
per run, atomic with fsync, then the writer's tiered compaction of that day: more than
[history] compact_files per-run files become one, 8 merged files of a level one of the
next) into a temporary history directory, timing each run's append (record + flush, the
compactions included) and, apart, the compactions alone. Then times the issue's query,

    history(since=None).filter(pl.col("status") != "ok").group_by("host").len().collect()

over the dataset as the writer left it ("as written": the realistic case; the first query
of the process apart, it checks each file's footer once), over one file per run (the same
rows rewritten without compaction: the old layout), and after `compact()` (a file per
closed day: what the writer does once a day), and `reops history`'s own view (since 1d,
last 50 rows). Prints one JSON object. Target (issue 12): the query < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OPS = ("exec", "pkg.install", "service.restart", "facts", "metrics", "files.template")
STATUS = (("ok", 0), ("failed", 1), ("unreachable", -1), ("timeout", -1))


def timed(repeat: int, fn: Any) -> tuple[list[float], Any]:
    times, last = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t0)
    return times, last


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-history-")
    os.environ["REOPS_HISTORY_PATH"] = str(Path(tmp) / "history")
    os.environ["REOPS_HISTORY_KEEP"] = "0"
    import polars as pl

    from reops.core.model import Result, RunInfo
    from reops.sinks import history as h
    from reops.sinks import history_files as hf

    rnd = random.Random(12)
    hosts = [f"web{i}" for i in range(args.hosts)]
    flaky = set(rnd.sample(hosts, max(1, args.hosts // 20)))
    now = time.time()
    span = args.days * 86400
    appends: list[float] = []
    tiers: list[float] = []  # the writer's compactions (part of the appends)
    merges = 0
    compact_tiers = h.compact_tiers

    def timed_tiers(day: Path, small: int) -> int:
        nonlocal merges
        t0 = time.perf_counter()
        n = compact_tiers(day, small)
        if n:
            tiers.append(time.perf_counter() - t0)
            merges += n
        return n

    h.compact_tiers = timed_tiers
    for n in range(args.runs):
        start = now - span + span * n / args.runs
        op = OPS[n % len(OPS)]
        results = []
        for i, host in enumerate(hosts):
            bad = rnd.random() < (0.3 if host in flaky else 0.02)
            status, code = STATUS[1 + rnd.randrange(3)] if bad else STATUS[0]
            results.append(Result(
                host=host, op=op, status=status, code=code,  # type: ignore[arg-type]
                out=f"{host}: done step {n} " + "ok " * rnd.randrange(5, 40),
                err="E: unable to locate package\n" if bad else "",
                started_at=start + i * 0.001, duration_s=rnd.lognormvariate(-1.5, 0.8),
                data={"cpu": {"busy": rnd.random() * 100}} if op == "metrics" else None))
        info = RunInfo(command=f"reops {op} all", pipeline=op, started_at=start)
        t0 = time.perf_counter()
        h.record(results, info, source="cli")
        h.flush(None)
        appends.append(time.perf_counter() - t0)
    root = h.settings().root
    files_written = len(h.files(root))
    size = sum(p.stat().st_size for p in h.files(root))

    def query(where: Path = root) -> pl.DataFrame:
        return (h.history(since=None, path=where).filter(pl.col("status") != "ok")
                .group_by("host").len().collect())

    hf._whole.clear()  # the first query of a process: every footer checked
    first_times, first = timed(1, query)
    written_times, written = timed(args.repeat, query)
    assert written.sort("host").equals(first.sort("host"))
    # the old layout, one file per run: each run's rows (by run_id) rewritten to its own file
    per_run = Path(tmp) / "per-run"
    data = pl.scan_parquet(h.files(root), schema=h.schema(), hive_partitioning=False
                           ).collect()
    for (run_id,), part in data.group_by("run_id"):
        day = h.day_of(part["started_at"][0].timestamp())
        (per_run / f"day={day}").mkdir(parents=True, exist_ok=True)
        part.write_parquet(per_run / f"day={day}" / f"{run_id}-0.parquet")
    del data
    files_raw = len(h.files(per_run))
    hf._whole.clear()
    os.environ["REOPS_HISTORY_COMPACT_FILES"] = str(10**9)  # the query must not merge them
    raw_first, _ = timed(1, lambda: query(per_run))
    raw_times, raw = timed(args.repeat, lambda: query(per_run))
    del os.environ["REOPS_HISTORY_COMPACT_FILES"]
    assert len(h.files(per_run)) == files_raw
    assert raw.sort("host").equals(first.sort("host")), "compaction changed the answer"
    t0 = time.perf_counter()
    compacted = h.compact(root)
    compact_s = time.perf_counter() - t0
    files_compacted = len(h.files(root))
    times, got = timed(args.repeat, query)
    assert got.sort("host").equals(raw.sort("host")), "compaction changed the answer"
    view_times, _ = timed(args.repeat, lambda: h.history("1d").sort("started_at")
                          .tail(50).collect())
    appends.sort()
    tiers.sort()
    print(json.dumps({
        "results": args.hosts * args.runs, "runs": args.runs, "days": args.days,
        "dataset_mb": round(size / 1e6, 1),
        "append_per_run_ms": {"p50": round(statistics.median(appends) * 1e3, 2),
                              "p95": round(appends[int(len(appends) * 0.95)] * 1e3, 2),
                              "max": round(appends[-1] * 1e3, 1),
                              "mean": round(statistics.fmean(appends) * 1e3, 2)},
        "writer_compaction": {"merges": merges,
                              "total_s": round(sum(tiers), 2),
                              "per_run_ms": round(sum(tiers) / args.runs * 1e3, 2),
                              "p50_ms": round(statistics.median(tiers) * 1e3, 1) if tiers
                              else None,
                              "max_ms": round(tiers[-1] * 1e3, 1) if tiers else None},
        "query_as_written_s": {"files": files_written, "first": round(first_times[0], 3),
                               "best": round(min(written_times), 3),
                               "median": round(statistics.median(written_times), 3)},
        "query_one_file_per_run_s": {"files": files_raw, "first": round(raw_first[0], 3),
                                     "best": round(min(raw_times), 3),
                                     "median": round(statistics.median(raw_times), 3)},
        "compact_s": round(compact_s, 2), "days_compacted": compacted,
        "query_compacted_s": {"files": files_compacted, "best": round(min(times), 3),
                              "median": round(statistics.median(times), 3)},
        "reops_history_view_s": round(min(view_times), 3),
        "failed_rows": int(got["len"].sum()),
        "target_query_s": 1.0,
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "polars": pl.__version__,
    }, indent=2))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
