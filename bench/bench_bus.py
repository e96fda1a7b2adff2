"""Bus throughput: Results/s published with `| publish()` through a real hub's XSUB/XPUB
proxy (CurveZMQ both ways) to 1 and to 10 subscriber processes (plain pyzmq).

    .venv/bin/python bench/bench_bus.py                      # 100k Results, 1 and 10 subs
    .venv/bin/python bench/bench_bus.py --count 5000 --subscribers 1   # a smoke run

Per run: the time from the first Result entering the pipeline until every subscriber has
the end marker, Results/s over that, and what each subscriber received / missed (by the
per-topic seq rule of docs/flows.md). Loopback only; the hub and subscribers are separate
processes, the publisher is this one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SUBSCRIBER = r'''
import json, sys, zmq, msgspec
endpoint, server_key, public, secret = sys.argv[1:5]
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.RCVHWM, 100000)
sock.curve_serverkey = server_key.encode()
sock.curve_publickey, sock.curve_secretkey = public.encode(), secret.encode()
sock.setsockopt(zmq.SUBSCRIBE, b"result.")
sock.connect(endpoint)
print("ready", flush=True)
got, last, missed = 0, 0, 0
while sock.poll(30000):
    topic, body = sock.recv_multipart()
    seq = msgspec.msgpack.decode(body)["seq"]
    if last and seq > last + 1:
        missed += seq - last - 1
    last = seq
    if topic.startswith(b"result.benchend."):
        break
    got += 1
print(json.dumps({"received": got, "missed": missed}), flush=True)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--subscribers", default="1,10", help="comma-separated subscriber counts")
    ap.add_argument("--size", type=int, default=100, help="bytes of output per Result")
    args = ap.parse_args()

    import os

    root = Path(tempfile.mkdtemp(prefix="bench-bus-"))
    home = root / "home"
    home.mkdir(mode=0o700)
    os.environ.update(REOPS_HOME=str(home), REOPS_HUB_CONTROL="", REOPS_HUB_KEYS_DIR="",
                      REOPS_CONFIG=str(root / "none.toml"),
                      REOPS_HUB_BUS_HWM=str(max(args.count + 10, 10_000)))

    import reactivex

    from reops.control.client import request_sync
    from reops.core.model import Host, Hosts, Result
    from reops.core.runtime import get_runtime
    from reops.lab.agents import LabHub
    from reops.sinks.bus import publish, publisher
    from reops.streams.stream import Stream

    hub = LabHub(home=home, env={"REOPS_HUB_BIND": "tcp://127.0.0.1:*"},
                 bind="tcp://127.0.0.1:*").start()
    try:
        info = request_sync(hub.control_path, "bus.stats")
        public = (hub.keys_dir / "hub.key").read_text().strip()
        secret = (hub.keys_dir / "hub.key_secret").read_text().strip()
        hosts = Hosts([Host(name="h1", address="127.0.0.1")])
        out = "x" * args.size

        def push(results: list[Result]) -> None:
            done = threading.Event()
            (Stream(reactivex.from_iterable(results), hosts) | publish()).subscribe(
                on_completed=done.set)
            done.wait()
            get_runtime().barrier()

        push([Result(host="h1", op="warm", status="ok", code=0)])  # connect once
        for n_subs in (int(x) for x in args.subscribers.split(",")):
            subs = [subprocess.Popen([sys.executable, "-c", SUBSCRIBER, info["out"],
                                      info["key"], public, secret],
                                     stdout=subprocess.PIPE, text=True)
                    for _ in range(n_subs)]
            for s in subs:
                assert s.stdout is not None and s.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 30
            while request_sync(hub.control_path, "bus.stats")["subscriptions"].get(
                    "result.", 0) < n_subs:
                if time.monotonic() > deadline:
                    raise SystemExit("subscribers did not subscribe")
                time.sleep(0.05)
            results = [Result(host="h1", op="bench", status="ok", code=0, out=out)
                       for _ in range(args.count)]
            start = time.perf_counter()
            push(results)
            push([Result(host="h1", op="benchend", status="ok", code=0)])
            reports = [json.loads(s.communicate(timeout=120)[0].splitlines()[-1])
                       for s in subs]
            elapsed = time.perf_counter() - start
            pub = publisher()
            print(json.dumps({
                "subscribers": n_subs, "results": args.count, "seconds": round(elapsed, 3),
                "results_per_s": round(args.count / elapsed),
                "received_min": min(r["received"] for r in reports),
                "missed_max": max(r["missed"] for r in reports),
                "publisher_dropped": pub.dropped}), flush=True)
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
