"""What unauthenticated or unaccepted peers can cost a hub: memory before the handshake,
files and log lines for pending keys.

    python bench/bench_preauth.py [--connections 100] [--announce-mib 60] [--send-kib 1024]
                                  [--names 3000]

1. pre-auth memory: hub RSS before, and at its peak while N raw TCP connections (no ZMTP
   handshake completed, so no key at all) each announce one huge frame and send part of it.
2. pending flood: one key says Hello under `--names` different names as fast as the hub
   answers; how many pending entries, how many log lines, how long.

A real `reops hub` process on loopback. Prints one JSON object (timings are for reading,
not pass/fail).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from reops_agent.keys import load_keypair
from reops_agent.protocol import Hello, decode_hub, encode

from reops.control.client import HubClient
from reops.lab.agents import LabHub, start_hub


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def greeting(mechanism: bytes = b"CURVE") -> bytes:
    """A ZMTP 3.0 client greeting (64 bytes)."""
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\x00")
            + b"\x00" + b"\x00" * 31)


def huge_frame_header(size: int) -> bytes:
    """A long command frame announcing `size` bytes (ZMTP 3: flags 0x06, 8-byte size)."""
    return b"\x06" + struct.pack(">Q", size)


def preauth(hub: LabHub, connections: int, announce: int, send: int) -> dict[str, Any]:
    assert hub.proc is not None
    pid = hub.proc.pid
    host, port = hub.bind.removeprefix("tcp://").rsplit(":", 1)
    before = rss_kb(pid)
    socks: list[socket.socket] = []
    failed: set[int] = set()
    chunk = b"\x00" * 65536
    t0 = time.perf_counter()
    for _ in range(connections):
        s = socket.create_connection((host, int(port)))
        s.settimeout(5)
        try:
            s.sendall(greeting())
            s.sendall(huge_frame_header(announce))
            left = send
            while left > 0:
                n = s.send(chunk[:min(left, len(chunk))])
                left -= n
        except OSError:
            failed.add(len(socks))
        socks.append(s)
    peak = rss_kb(pid)
    deadline = time.monotonic() + 3.0  # a bench: sample the RSS for a while, keep the peak
    while time.monotonic() < deadline:
        peak = max(peak, rss_kb(pid))
        time.sleep(0.05)
    for i, s in enumerate(socks):  # which connections has the hub closed?
        try:
            s.setblocking(False)
            if s.recv(1) == b"":
                failed.add(i)
        except BlockingIOError:
            pass
        except OSError:
            failed.add(i)
        s.close()
    after_close = rss_kb(pid)
    return {"connections": connections, "announced_mib": announce / 2**20,
            "sent_kib": send / 1024, "rss_before_mb": round(before / 1024, 1),
            "rss_peak_mb": round(peak / 1024, 1),
            "rss_growth_mb": round((peak - before) / 1024, 1),
            "rss_after_close_mb": round(after_close / 1024, 1),
            "closed_by_hub": len(failed), "seconds": round(time.perf_counter() - t0, 2)}


async def pending_flood(hub: LabHub, names: int, workdir: Path) -> dict[str, Any]:
    public, secret = load_keypair(workdir / "flood", "agent")
    ctx = zmq.asyncio.Context()
    s = ctx.socket(zmq.DEALER)
    s.curve_serverkey, s.curve_publickey, s.curve_secretkey = hub.key.encode(), public, secret
    s.setsockopt(zmq.LINGER, 0)
    s.connect(hub.bind)
    log_before = len(hub.log.splitlines())
    t0 = time.perf_counter()
    replies: dict[str, int] = {}
    try:
        for i in range(names):
            await s.send(encode(Hello(name=f"flood{i}")))
            msg = decode_hub(await asyncio.wait_for(s.recv(), 30))
            kind = type(msg).__name__
            replies[kind] = replies.get(kind, 0) + 1
    finally:
        ctx.destroy(0)
    seconds = time.perf_counter() - t0
    client = HubClient(hub.control_path)
    try:
        pending = sum(k["state"] == "pending" for k in await client.request("keys"))
    finally:
        await client.close()
    files = len(list((hub.keys_dir / "pending").iterdir()))
    return {"names": names, "pending_entries": pending, "pending_files": files,
            "log_lines": len(hub.log.splitlines()) - log_before, "replies": replies,
            "seconds": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--announce-mib", type=int, default=60)
    p.add_argument("--send-kib", type=int, default=1024)
    p.add_argument("--names", type=int, default=3000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="reops-bench-preauth-") as tmp:
        root = Path(tmp)
        with start_hub(root / "home") as hub:
            out = {"preauth": preauth(hub, args.connections, args.announce_mib * 2**20,
                                      args.send_kib * 1024)}
            out["pending_flood"] = asyncio.run(pending_flood(hub, args.names, root))
            out["hub_rss_end_mb"] = round(rss_kb(hub.proc.pid) / 1024, 1) if hub.proc else 0
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
