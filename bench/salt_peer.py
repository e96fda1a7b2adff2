"""Salt on loopback, for bench_agents: a master (auto-accept) and M minions, timed.

    python bench/salt_peer.py --salt-venv /tmp/saltvenv --minions 10,50

Needs Salt in its own venv (`python3 -m venv V && V/bin/pip install salt`). Measures the
`salt '*' cmd.run 'uname -a'` CLI (whole process), LocalClient.cmd (in-process, warm) and
`test.ping` through LocalClient, and minion RSS. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOCALCLIENT = """
import json, sys, time
import salt.client
c = salt.client.LocalClient(c_path=sys.argv[1])
n = int(sys.argv[2]); out = {}
for fun, arg in (("test.ping", []), ("cmd.run", ["uname -a"])):
    c.cmd("*", fun, arg, timeout=60)  # warm
    times = []
    for _ in range(int(sys.argv[3])):
        t0 = time.perf_counter(); r = c.cmd("*", fun, arg, timeout=60)
        times.append(time.perf_counter() - t0)
        assert len(r) == n, (len(r), n)
    out[fun] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in children(k)]


def run(venv: Path, m: int, repeat: int, root: Path) -> dict[str, Any]:
    bin_ = venv / "bin"
    pub, ret = free_port(), free_port()
    conf = root / "master.d"
    conf.mkdir(parents=True)
    (conf / "master").write_text(
        f"root_dir: {root}/master\ninterface: 127.0.0.1\npublish_port: {pub}\n"
        f"ret_port: {ret}\nauto_accept: True\nlog_level_logfile: error\nuser: root\n")
    procs: list[subprocess.Popen[bytes]] = [subprocess.Popen(
        [str(bin_ / "salt-master"), "-c", str(conf), "-l", "error"], start_new_session=True)]
    try:
        for i in range(m):
            mc = root / f"minion{i}.d"
            mc.mkdir()
            (mc / "minion").write_text(
                f"id: m{i}\nmaster: 127.0.0.1\nmaster_port: {ret}\npublish_port: {pub}\n"
                f"root_dir: {root}/minion{i}\nlog_level_logfile: error\nuser: root\n")
            procs.append(subprocess.Popen([str(bin_ / "salt-minion"), "-c", str(mc), "-l",
                                           "error"], start_new_session=True))
        t0 = time.monotonic()
        while True:  # a bench waiting for a peer to come up: polling is acceptable here
            out = subprocess.run([str(bin_ / "salt"), "-c", str(conf), "*", "test.ping",
                                  "--out", "json", "--static", "-t", "10"],
                                 capture_output=True, text=True)
            try:
                if len(json.loads(out.stdout or "{}")) == m:
                    break
            except json.JSONDecodeError:
                pass
            if time.monotonic() - t0 > 300:
                raise RuntimeError(f"salt minions not up: {out.stdout[-300:]} {out.stderr[-300:]}")
        cli = []
        for _ in range(repeat):
            t1 = time.perf_counter()
            out = subprocess.run([str(bin_ / "salt"), "-c", str(conf), "*", "cmd.run",
                                  "uname -a", "--out", "json", "--static", "-t", "60"],
                                 capture_output=True, text=True)
            cli.append(time.perf_counter() - t1)
            assert len(json.loads(out.stdout)) == m
        lc = json.loads(subprocess.run([str(bin_ / "python"), "-c", LOCALCLIENT,
                                        str(conf / "master"), str(m), str(repeat)],
                                       capture_output=True, text=True, check=True).stdout)
        minion_rss = [rss_kb(p.pid) + sum(rss_kb(c) for c in children(p.pid))
                      for p in procs[1:]]
        return {"cli_cmd_run_uname_s": statistics.median(cli),
                "localclient_cmd_run_uname_s": lc["cmd.run"],
                "localclient_test_ping_s": lc["test.ping"],
                "minion_rss_kb_median": statistics.median(minion_rss)}
    finally:
        for p in procs:
            try:
                import os

                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser()
    p.add_argument("--salt-venv", type=Path, required=True)
    p.add_argument("--minions", default="10,50")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    report = {}
    for m in [int(x) for x in args.minions.split(",") if x]:
        root = Path(tempfile.mkdtemp(prefix="bench-salt-"))
        try:
            report[f"M={m}"] = run(args.salt_venv, m, args.repeat, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
