"""`reops report` over a large history: generation time and HTML size.

    python bench/bench_report.py [--results 1000000] [--days 30] [--hosts 200] [--repeat 3]

Generates `--results` Results with tests/history_data.py (the same realistic generator the
tests use: flaky and slow hosts, metrics samples every fifth run), writes them as the history
dataset (parquet, one directory per day) in a temporary directory, then times `report()`
over the scanned dataset (what `reops report` does: lazy scan, aggregate, render) and over
the frame already in memory. Prints one JSON object: seconds (best and median of --repeat),
the page's size, and how much of it is plotly.js (the rest is the aggregated series).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from history_data import generate, scan_history, write_history

from reops.sinks.report import write_report


def timed(repeat: int, fn: Any) -> tuple[list[float], Any]:
    times, last = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t0)
    return times, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from plotly.offline import get_plotlyjs

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        t0 = time.perf_counter()
        frame = generate(args.results, days=args.days, host_count=args.hosts, end=end)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        root = write_history(frame, Path(tmp) / "history")
        write_s = time.perf_counter() - t0
        dataset_bytes = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        out = Path(tmp) / "report.html"
        scan_times, (path, summary) = timed(
            args.repeat, lambda: write_report(scan_history(root), out))
        mem_times, _ = timed(args.repeat, lambda: write_report(frame, out))
        size = path.stat().st_size
        js = len(get_plotlyjs().encode())
    print(json.dumps({
        "results": summary.results, "runs": summary.runs, "hosts": summary.hosts,
        "failure_rate": round(summary.failure_rate, 4), "days": args.days,
        "generate_s": round(gen_s, 2), "write_dataset_s": round(write_s, 2),
        "dataset_mb": round(dataset_bytes / 1e6, 1),
        "report_from_parquet_s": {"best": round(min(scan_times), 2),
                                  "median": round(statistics.median(scan_times), 2)},
        "report_from_memory_s": {"best": round(min(mem_times), 2),
                                 "median": round(statistics.median(mem_times), 2)},
        "html_mb": round(size / 1e6, 2), "plotly_js_mb": round(js / 1e6, 2),
        "series_kb": round((size - js) / 1e3, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
