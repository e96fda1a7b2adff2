"""Reload time of a flow running in a real `reops hub`, and the trigger events it loses or doubles.

The flow is a staged pipeline over the real `every` trigger at `--tick-ms` (1 kHz by
default) on the runtime loop: `on(every) | map(tick count) | map((n, VERSION))`, recording
each tick's own count `n` (a host that is never contacted: the swap is what is measured,
not SSH). The bench reloads it `--reloads` times through the control socket, each time
with a new VERSION, so every reload compares the stages, keeps `on(every(…)) | map` and
swaps the last stage, and reports:

- reload: the hub's own measure (import + call + compare + subscribe + switch), p50/p95/max;
- what the reloads kept and swapped;
- round trip: the `flows.reload` request as a client sees it;
- lost / doubled: holes and repeats in the recorded n's across all the swaps (the versions
  read one live source: docs/flows.md, "Reload: what is kept");
- gap: per swap, the new version's first recorded tick minus the old version's last one.

    .venv/bin/python bench/bench_reload.py --reloads 100 --tick-ms 1 --between 0.1
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

FLOW = """\
from reactivex import operators as ops

from reops import Hosts, on
from reops.core.model import Host
from reops.flows import flow
from reops.streams.triggers.clock import every

VERSION = {n}


@flow
def ticker(tick_ms: float = 1.0) -> object:
    here = Hosts([Host(name="bench", address="127.0.0.1")])
    return (on(every(tick_ms / 1000), hosts=here) | ops.map(lambda r: r.data.payload.n)
            | ops.map(lambda n: (n, VERSION)))
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reloads", type=int, default=100)
    ap.add_argument("--tick-ms", type=float, default=1.0)
    ap.add_argument("--between", type=float, default=0.2,
                    help="seconds between reloads (each version ticks meanwhile)")
    args = ap.parse_args()

    from reops.control.client import request_sync
    from reops.lab.agents import start_hub
    from reops.store.flows import SqliteFlowStore

    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        root = Path(tmp)
        flow = root / "ticker.py"
        flow.write_text(FLOW.format(n=0))
        with start_hub(root / "home") as hub:
            control = hub.control_path
            request_sync(control, "flows.start", {"file": str(flow), "func": "ticker",
                                                  "args": ["--tick-ms", str(args.tick_ms)],
                                                  "max_rate": "off"},
                         timeout=60)
            hub_s: list[float] = []
            trip_s: list[float] = []
            said: set[str] = set()
            for n in range(1, args.reloads + 1):
                time.sleep(args.between)
                flow.write_text(FLOW.format(n=n))
                began = time.perf_counter()
                info = request_sync(control, "flows.reload", {"name": "ticker"}, timeout=60)
                trip_s.append(time.perf_counter() - began)
                if not info["reloaded"]:
                    print(f"reload {n} failed: {info['error']}", file=sys.stderr)
                    return 1
                hub_s.append(info["seconds"])
                said.add(f"kept {info.get('kept')}, swapped {info.get('swapped')}")
            time.sleep(args.between)
            request_sync(control, "flows.stop", {"name": "ticker"})
        store = SqliteFlowStore(root / "home" / "flows.db")
        rows = store.audit("ticker")
        store.close()
    gaps: list[float] = []
    last_tick: dict[str, float] = {}
    ns: list[int] = []
    for row in rows:
        if row.status == "fired":
            m = re.fullmatch(r"\((\d+), \d+\)", row.detail)
            if m:
                ns.append(int(m[1]))
            if row.version not in last_tick and last_tick:
                gaps.append(row.at - max(last_tick.values()))
            last_tick[row.version] = row.at
    ms = [s * 1000 for s in hub_s]
    trips = [s * 1000 for s in trip_s]
    print(f"reloads: {len(ms)}, tick every {args.tick_ms:g} ms, {len(rows)} audit rows")
    for text in sorted(said):
        print(f"each reload: {text}")
    print(f"reload in the hub  ms: p50 {statistics.median(ms):.1f}  p95 {pct(ms, .95):.1f}  "
          f"max {max(ms):.1f}")
    print(f"reload round trip  ms: p50 {statistics.median(trips):.1f}  "
          f"p95 {pct(trips, .95):.1f}  max {max(trips):.1f}")
    doubled = len(ns) - len(set(ns))
    lost = (max(ns) - min(ns) + 1 - len(set(ns))) if ns else 0
    print(f"ticks recorded: {len(ns)}  lost: {lost}  doubled: {doubled}")
    if gaps:
        g = [x * 1000 for x in gaps]
        print(f"gap between versions ms: p50 {statistics.median(g):.1f}  "
              f"p95 {pct(g, .95):.1f}  max {max(g):.1f}  (negative: the versions overlapped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
