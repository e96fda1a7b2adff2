"""Triggers: `on()` throughput and flat memory, clock accuracy, and libvirt event → step latency.

    python bench/bench_triggers.py [--events 1000000] [--hosts 1000] [--ticks 100]
                                   [--period 0.05] [--vms 20] [--skip-hub]

Prints one JSON object:

- `on`: a million TriggerEvents (one per host in turn) through `on(...) | where(...)`:
  events/s and RSS at 10 % / 50 % / 100 % of the run (flat: no per-event history; what
  `on` keeps is bounded by the hosts);
- `every`: `every(period)` on the runtime loop for `--ticks` ticks: how late each tick ran
  after its due time (p50/p95/max ms) and the drift of the last tick's due time from
  `first + n × period` (0: the grid is kept, lateness does not accumulate);
- `vm_started`: a real `reops hub` (machines service, libvirt test driver) starts and
  stops `--vms` domains; for each start, the latency from libvirt's callback in the hub
  (the event's time) to the next step starting in this process, p50/p95 ms, for
  `on(vm_events("all", ["started"]))`; `address_wait` separately for `vm_started`, which
  waits for the start job to record the VM's address.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import reactivex
from reactivex.subject import Subject

from reops import Host, Hosts, Result, Stream, then, where
from reops.core.runtime import get_runtime
from reops.streams.triggers.clock import every
from reops.streams.triggers.event import Tick, TriggerEvent
from reops.streams.triggers.hypervisor import vm_events, vm_started
from reops.streams.triggers.on import on

NODE_XML = """<node>
  <network><name>default</name><bridge name='virbr0'/><forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>
  <pool type='dir'><name>default</name><target><path>/var/lib/reops-bench/images</path></target>
    <volume type='file'><name>debian-12.qcow2</name><capacity unit='GiB'>2</capacity>
      <target><format type='qcow2'/></target></volume></pool>
</node>
"""


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def bench_on(events: int, hosts: int) -> dict[str, Any]:
    names = [f"h{i}" for i in range(hosts)]
    host_of = {n: Host(name=n, address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
               for i, n in enumerate(names)}
    source: Subject[TriggerEvent] = Subject()
    stream = on(source) | where(lambda r: r.ok)
    seen = [0]
    sub = stream.subscribe(lambda _: seen.__setitem__(0, seen[0] + 1))
    marks = {events // 10: "rss_10pct_kb", events // 2: "rss_50pct_kb"}
    out: dict[str, Any] = {"events": events, "hosts": hosts, "rss_start_kb": rss_kb()}
    t0 = time.perf_counter()
    for i in range(events):
        n = names[i % hosts]
        source.on_next(TriggerEvent(source="clock", kind="tick", key=n, time=float(i),
                                    host=host_of[n], payload=Tick(n=i, due=float(i))))
        if i in marks:
            out[marks[i]] = rss_kb()
    took = time.perf_counter() - t0
    sub.dispose()
    out.update(rss_end_kb=rss_kb(), seconds=round(took, 3), results=seen[0],
               events_per_s=round(events / took), hosts_known=len(stream.hosts))
    return out


def bench_every(ticks: int, period: float) -> dict[str, Any]:
    late_ms: list[float] = []
    dues: list[float] = []
    done = threading.Event()

    def on_tick(e: Any) -> None:
        # the tick's due time is wall-clock; its lateness is now minus due
        late_ms.append((time.time() - e.payload.due) * 1000)
        dues.append(e.payload.due)
        if len(dues) >= ticks:
            done.set()

    sub = every(period, immediately=True).subscribe(on_tick)
    done.wait(ticks * period * 3 + 10)
    sub.dispose()
    drift_ms = (dues[-1] - (dues[0] + (len(dues) - 1) * period)) * 1000 if dues else None
    return {"ticks": len(dues), "period_s": period,
            "late_ms_p50": round(pct(late_ms, 0.5), 3), "late_ms_p95": round(pct(late_ms, 0.95), 3),
            "late_ms_max": round(max(late_ms), 3) if late_ms else None,
            "grid_drift_ms": round(drift_ms, 6) if drift_ms is not None else None}


class _Hub:
    """A `reops hub` with the machines service on a libvirt test node, in a temp home."""

    def __init__(self, home: Path) -> None:
        from reops.control.client import HubClient, ping_sync
        from reops.systems.api import HubMachines

        node = home / "node.xml"
        node.write_text(NODE_XML)
        (home / "config.toml").write_text(
            f'[hypervisors.lab]\nuri = "test://{node}"\n\n[machines]\n'
            'default_hypervisor = "lab"\nstop_timeout = 5\nip_timeout = 5\n')
        self.control = home / "run" / "hub.sock"
        env = {**os.environ, "REOPS_HOME": str(home), "REOPS_CONFIG": str(home / "config.toml"),
               "REOPS_HUB_BIND": "tcp://127.0.0.1:*", "REOPS_HUB_CONTROL": str(self.control),
               "REOPS_HUB_SERVICES": "reops.systems.service:attach"}
        self.proc = subprocess.Popen([sys.executable, "-m", "reops.hub"], env=env,
                                     stderr=(home / "hub.log").open("wb"))
        ping_sync(self.control, timeout=30, wait=True)
        self.api = HubMachines(HubClient(self.control))

    def call(self, coro: Any) -> Any:
        return get_runtime().call(coro)

    def close(self) -> None:
        self.call(self.api.aclose())
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _latencies(hub: _Hub, make: Callable[[Callable[[], None]], Stream],
               names: list[str]) -> list[float]:
    """Start each system; latency (ms) from its libvirt event to the next step starting.
    `make(on_ready)` gives the trigger."""
    lat: list[float] = []
    ready = threading.Event()
    trigger = make(ready.set)
    cond = threading.Condition()

    def step(hosts: Hosts) -> Stream:
        started = time.time()
        return Stream(reactivex.from_iterable(
            [Result(host=h.name, op="noop", status="ok", code=0, started_at=started)
             for h in hosts]), hosts)

    def on_result(r: Any) -> None:
        if isinstance(r, Result) and r.op == "noop":
            with cond:
                lat.append((r.started_at - r.steps[0].data.time) * 1000)
                cond.notify_all()

    stream = on(trigger, hosts=Hosts(Host(name=n, address="127.0.0.1") for n in names)) \
        | then(step)
    sub = stream.subscribe(on_result)
    try:
        if not ready.wait(30):
            raise RuntimeError("the trigger never subscribed to the hub")
        for i, n in enumerate(names):
            hub.call(hub.api.wait(hub.call(hub.api.submit("start", n))))
            with cond:
                cond.wait_for(lambda i=i: len(lat) > i, 30)
            hub.call(hub.api.wait(hub.call(hub.api.submit("stop", n, force=True))))
    finally:
        sub.dispose()
    return lat


def bench_vm(vms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="reops-bench-trig-") as tmp:
        hub = _Hub(Path(tmp))
        try:
            hub.call(hub.api.add_type("bench", "", None, {}))
            names = [f"b{i}" for i in range(vms)]
            for n in names:
                hub.call(hub.api.wait(hub.call(
                    hub.api.create("bench", ["tiny"], None, None, n))))
                hub.call(hub.api.wait(hub.call(hub.api.submit("stop", n, force=True))))
            raw = _latencies(hub, lambda ready: vm_events(
                "all", ["started"], hub=hub.control, on_ready=ready), names)
            waited = _latencies(hub, lambda ready: vm_started(
                "typed:bench", hub=hub.control, on_ready=ready), names)
        finally:
            hub.close()
    return {"vms": vms,
            "event_to_step_ms_p50": round(pct(raw, 0.5), 2),
            "event_to_step_ms_p95": round(pct(raw, 0.95), 2),
            "address_wait_event_to_step_ms_p50": round(pct(waited, 0.5), 2),
            "address_wait_event_to_step_ms_p95": round(pct(waited, 0.95), 2),
            "mean_ms": round(statistics.mean(raw), 2) if raw else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--period", type=float, default=0.05)
    ap.add_argument("--vms", type=int, default=20)
    ap.add_argument("--skip-hub", action="store_true", help="no hub / libvirt latency part")
    args = ap.parse_args()
    out: dict[str, Any] = {"on": bench_on(args.events, args.hosts),
                           "every": bench_every(args.ticks, args.period)}
    if not args.skip_hub:
        out["vm_started"] = bench_vm(args.vms)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
