"""Where a hub's memory per idle agent connection goes: libzmq, CURVE, ZAP, glibc malloc.

    python bench/bench_zmq_memory.py [--n 5000] [--helpers 4] [--cases plain,curve,zap,hub]

Issue 13 item 5 asks for <= 25 KB of hub RSS per idle agent at 10,000. This isolates the
connection side: a server process holding a ROUTER like the hub's (CURVE server, the hub's
ZAP decision from reops/hub/zap.py, the hub's socket options from reops/hub/fleet.py) and
`--n` DEALER peers in `--helpers` helper processes; each peer sends one message and gets one
answer (a Hello/Welcome), then idles. Per case it prints the server's RSS per connection
and glibc's own account (mallinfo2: bytes in use vs free-but-kept), then the RSS after
`malloc_trim(0)` hands free pages back. Cases:

    plain     ROUTER over plain TCP
    curve     + CurveZMQ server (no ZAP handler: libzmq lets every key in)
    zap       + the hub's ZAP handler (REP on inproc://zeromq.zap.01, reops.hub.zap.decide)
    hub       + the hub's socket options (HWMs, heartbeats, MAXMSGSIZE, BACKLOG, monitor)
    hub-io1   hub with 1 libzmq I/O thread (the hub has min(4, cores))
    hub-arena2  hub with mallopt(M_ARENA_MAX, 2) set before the context starts its threads
    hub-mmap  hub with M_MMAP_THRESHOLD = 64 KB and M_TRIM_THRESHOLD = 128 KB
    hub-swap  hub, then the ZAP socket replaced by a new one (what reops/hub/zap.py does
              after a burst) and malloc_trim(0): libzmq keeps each connection's pipe to the
              ZAP handler for the connection's life (session_base_t drops it only on an
              error or its end), unless the handler's socket closes

Each case's "kb_per_conn_after_trim" is after malloc_trim(0) (and for hub-swap, the swap).

It also says whether this pyzmq/libzmq lets ZMQ_IN_BATCH_SIZE be set (a DRAFT option).
A measurement, not a test: prints one JSON object. Kernel socket buffers (SO_RCVBUF/SNDBUF)
are not in RSS and are not counted here.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33+): size_t fields."""

    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def mallinfo() -> dict[str, int]:
    """Bytes glibc holds over all arenas: in use, free inside its heaps, mmapped blocks."""
    c = libc()
    c.mallinfo2.restype = MallInfo2
    m = c.mallinfo2()
    return {"heap_kb": m.arena // 1024, "in_use_kb": m.uordblks // 1024,
            "free_kept_kb": m.fordblks // 1024, "mmapped_kb": m.hblkhd // 1024}


# ── the server (one process per case) ──────────────────────────────────────────────────


def serve(case: str) -> None:
    """Hold a ROUTER like the hub's; answer commands on stdin: measure, trim, quit."""
    from reops.core.settings import raise_fd_limit

    raise_fd_limit()
    c = libc()
    if case == "hub-arena2":
        c.mallopt(M_ARENA_MAX, 2)
    if case == "hub-mmap":
        c.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        c.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    hubby = case.startswith("hub")
    ctx = zmq.Context(io_threads=1 if case == "hub-io1" else max(1, min(4, os.cpu_count() or 1)))
    ctx.set(zmq.MAX_SOCKETS, 65536)
    zap = None
    keys = None
    if case == "zap" or hubby:
        from reops.hub.keystore import KeyStore

        scratch = tempfile.TemporaryDirectory(prefix="zmqmem-keys-")  # gone at exit
        keys = KeyStore(Path(scratch.name))
        keys.ensure()
        zap = ctx.socket(zmq.REP)
        zap.bind("inproc://zeromq.zap.01")
    s = ctx.socket(zmq.ROUTER)
    public, secret = zmq.curve_keypair()
    if case != "plain":
        s.curve_server = True
        s.curve_publickey, s.curve_secretkey = public, secret
    if zap is not None:
        s.zap_domain = b"reops"
        s.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # (no ZAP handler: refused, never let in)
    batch: str
    try:
        s.setsockopt(zmq.IN_BATCH_SIZE, 1024)
        batch = "settable"
    except (zmq.ZMQError, AttributeError) as e:
        batch = f"not settable: {e}"
    monitor = None
    if hubby:
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.BACKLOG, 4096)
        s.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10_000)
        monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    print(json.dumps({"endpoint": f"tcp://127.0.0.1:{port}", "key": public.decode(),
                      "in_batch_size": batch, "rss_kb": rss_kb(os.getpid())}), flush=True)
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    if zap is not None:
        poller.register(zap, zmq.POLLIN)
    if monitor is not None:
        poller.register(monitor, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    seen = 0
    answer = b"\x81\xa1t\xa7welcome"
    while True:
        for sock, _ in poller.poll():
            if sock is s:
                while True:
                    try:
                        routing, _payload = s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    seen += 1
                    s.send_multipart([routing, answer])
            elif sock is zap:
                from reops.hub.zap import decide

                while True:
                    try:
                        req = zap.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    assert keys is not None
                    zap.send_multipart(decide(req, keys))
            elif sock is monitor:
                monitor.recv_multipart()
            else:
                cmd = sys.stdin.readline().strip()
                if cmd == "measure":
                    out = {"seen": seen, "rss_kb": rss_kb(os.getpid()), **mallinfo()}
                elif cmd == "swap":
                    assert zap is not None
                    old, zap = zap, ctx.socket(zmq.REP)
                    old.unbind("inproc://zeromq.zap.01")
                    zap.bind("inproc://zeromq.zap.01")
                    poller.unregister(old)
                    poller.register(zap, zmq.POLLIN)
                    old.close(0)
                    out = {"rss_kb": rss_kb(os.getpid())}
                elif cmd == "trim":
                    c.malloc_trim(0)
                    out = {"rss_kb": rss_kb(os.getpid()), **mallinfo()}
                else:
                    return
                print(json.dumps(out), flush=True)


# ── the peers ──────────────────────────────────────────────────────────────────────────


def peers(endpoint: str, key: str, n: int, curve: bool) -> None:
    """`n` DEALERs: connect, send one message, await its answer, say so, idle till stdin EOF."""
    from reops.core.settings import raise_fd_limit

    raise_fd_limit()
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, n + 16)
    public, secret = zmq.curve_keypair()
    poller = zmq.Poller()
    socks = []
    for _ in range(n):
        d = ctx.socket(zmq.DEALER)
        if curve:
            d.curve_serverkey, d.curve_publickey, d.curve_secretkey = key.encode(), public, secret
        d.setsockopt(zmq.LINGER, 0)
        d.connect(endpoint)
        d.send(b"\x81\xa1t\xa5hello")
        poller.register(d, zmq.POLLIN)
        socks.append(d)
    waiting = set(socks)
    while waiting:
        for d, _ in poller.poll(1000):
            d.recv()
            waiting.discard(d)
            poller.unregister(d)
    print("done", flush=True)
    for line in sys.stdin:  # "traffic K": K more round trips on every socket; EOF: stop
        for _ in range(int(line.split()[1])):
            for d in socks:
                d.send(b"\x81\xa1t\xa4beat")
            for d in socks:
                d.recv()
        print("done", flush=True)
    for d in socks:
        d.close(0)
    ctx.term()


# ── the driver ─────────────────────────────────────────────────────────────────────────


def run_case(case: str, n: int, helpers: int, traffic: int = 0) -> dict[str, Any]:
    me = [sys.executable, __file__]
    server = subprocess.Popen([*me, "--serve", case], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdin and server.stdout
    head = json.loads(server.stdout.readline())
    procs: list[subprocess.Popen[str]] = []
    try:
        per = n // helpers
        t0 = time.perf_counter()
        procs = [subprocess.Popen([*me, "--peers", head["endpoint"], head["key"], str(per),
                                   "0" if case == "plain" else "1"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(helpers)]
        for p in procs:
            assert p.stdout
            if not select.select([p.stdout], [], [], 300)[0] or p.stdout.readline() != "done\n":
                raise RuntimeError(f"{case}: peers did not all get their answer in 300 s")
        took = time.perf_counter() - t0
        time.sleep(1.0)  # (a measurement: let the I/O threads finish their last commands)

        def ask(cmd: str) -> dict[str, Any]:
            assert server.stdin and server.stdout
            server.stdin.write(cmd + "\n")
            server.stdin.flush()
            return dict(json.loads(server.stdout.readline()))

        idle = ask("measure")
        busy: dict[str, Any] = {}
        if traffic:
            for p in procs:
                assert p.stdin and p.stdout
                p.stdin.write(f"traffic {traffic}\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout
                if p.stdout.readline() != "done\n":
                    raise RuntimeError(f"{case}: traffic did not complete")
            busy = ask("measure")
        if case.endswith("-swap"):
            ask("swap")
            time.sleep(1.0)  # (the sessions drop their ZAP pipes on their I/O threads)
        trimmed = ask("trim")
        conns = per * helpers
        start = head["rss_kb"]
        return {
            "connections": conns, "connect_s": round(took, 2), "messages_seen": idle["seen"],
            "rss_kb_start": start, "rss_kb_idle": idle["rss_kb"],
            "kb_per_conn": round((idle["rss_kb"] - start) / conns, 1),
            "malloc_in_use_kb_per_conn": round(idle["in_use_kb"] / conns, 1),
            "malloc_free_kept_kb_per_conn": round(idle["free_kept_kb"] / conns, 1),
            "malloc_mmapped_kb": idle["mmapped_kb"],
            "kb_per_conn_after_trim": round((trimmed["rss_kb"] - start) / conns, 1),
            "malloc_in_use_kb_per_conn_after_trim": round(trimmed["in_use_kb"] / conns, 1),
            "in_batch_size": head["in_batch_size"],
            **({f"kb_per_conn_after_{traffic}_round_trips":
                round((busy["rss_kb"] - start) / conns, 1)} if busy else {}),
        }
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
        for p in procs:
            p.wait(60)
        if server.stdin:
            server.stdin.close()
        server.wait(30)


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
        return
    if sys.argv[1:2] == ["--peers"]:
        peers(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
        return
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--helpers", type=int, default=4)
    p.add_argument("--traffic", type=int, default=0,
                   help="then K more round trips per connection (idle agents' beats over "
                   "time: libzmq's pipes take a new 16 KB chunk every 256 messages)")
    p.add_argument("--cases", default="plain,curve,zap,hub,hub-io1,hub-arena2,hub-mmap,hub-swap")
    args = p.parse_args()
    report: dict[str, Any] = {"zmq": zmq.zmq_version(), "pyzmq": zmq.pyzmq_version(),
                              "draft": zmq.has("draft"), "cores": os.cpu_count()}
    for case in args.cases.split(","):
        report[case] = run_case(case, args.n, args.helpers, args.traffic)
        print(case, json.dumps(report[case]), file=sys.stderr, flush=True)
    report["load_avg_1m"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
