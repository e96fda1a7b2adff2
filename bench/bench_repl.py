"""A warm command on N lab hosts from the REPL's API (in-process), via agents and via the
SSH pool, against OpenSSH ControlMaster-warm `xargs -P N ssh` in the same run.

    .venv/bin/python bench/bench_repl.py [--hosts 50] [--repeat 15]

What the REPL does when you type `run(exec_(hosts, "true", via="agent"))` a second time:
the connections are up (agents connected to the hub; the SSH pool warm), so what is timed
is the command's round trip to every host and back. The peer is the best the shell can do:
one ControlMaster per host started before timing, then `xargs -P N ssh … true` reusing them.

It brings up its own lab (`reops lab up --agents`, own $REOPS_HOME, hosts on 127.0.254.x)
and takes it down at the end, even on error. Prints one JSON object: medians, p95, the
ratio agent/ControlMaster, and the issue's targets (agents < 100 ms, ≤ 1.5× ControlMaster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REOPS = str(Path(sys.executable).with_name("reops"))
FIRST_ADDRESS = "127.0.254.1"
TARGET_AGENT_S = 0.100
TARGET_RATIO = 1.5


def timed(fn: Callable[[], None], repeat: int) -> list[float]:
    """`fn` once to warm up, then `repeat` timed runs (seconds each)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[math.ceil(len(ordered) * 0.95) - 1] * 1000, 2),
            "min_ms": round(ordered[0] * 1000, 2)}


class Masters:
    """One OpenSSH ControlMaster per host, up before timing; `xargs -P N ssh` reuses them."""

    def __init__(self, inv: dict[str, object], root: Path, scratch: Path) -> None:
        hosts = inv["hosts"]
        defaults = inv.get("defaults", {})
        assert isinstance(hosts, dict) and isinstance(defaults, dict)
        self.addresses = [h["address"] for h in hosts.values()]
        self.file = scratch / "addresses"
        self.file.write_text("\n".join(self.addresses) + "\n")
        self.path = str(scratch / "cm-%C")
        self.ssh = ["ssh", "-F", "/dev/null", "-i", str(root / defaults["key"]),
                    "-p", str(defaults["port"]), "-l", str(defaults["user"]),
                    "-o", f"UserKnownHostsFile={root / defaults['known_hosts']}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                    "-o", f"ControlPath={self.path}"]

    def xargs(self, *extra: str, command: tuple[str, ...] = ("true",)) -> None:
        argv = ["xargs", "-P", str(len(self.addresses)), "-I{}", *self.ssh, *extra, "{}",
                *command]
        with self.file.open() as f:
            subprocess.run(argv, stdin=f, check=True, timeout=120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self.xargs("-o", "ControlMaster=yes", "-o", "ControlPersist=yes", "-f", "-N",
                   command=())

    def run(self) -> None:
        self.xargs("-o", "ControlMaster=no")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.xargs("-O", "exit", command=())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--port", type=int, default=2954)
    a = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-repl-"))
    home = scratch / "home"
    home.mkdir(mode=0o700)
    root = scratch / "lab"
    # its own hub (own home, a free port: never another hub on this box) …
    env = {**os.environ, "REOPS_HOME": str(home), "REOPS_HUB_BIND": "tcp://127.0.0.1:*"}
    os.environ.update(env)  # … that this process's reops talks to as well
    masters: Masters | None = None
    try:
        subprocess.run([REOPS, "lab", "up", "--hosts", str(a.hosts), "--dir", str(root),
                        "--port", str(a.port), "--first-address", FIRST_ADDRESS,
                        "--agents", "--no-names", "--shared-fs"],
                       env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)
        import tomllib

        from reops import exec_, inventory, run

        inv_path = root / "inventory.toml"
        hosts = inventory(inv_path).select("all")
        assert len(hosts) == a.hosts

        def via(kind: str) -> Callable[[], None]:
            def once() -> None:
                out = run(exec_(hosts, "true", via=kind))  # type: ignore[arg-type]
                if len(out.successful) != a.hosts:
                    raise RuntimeError(f"via {kind}: {len(out.successful)}/{a.hosts} ok")
            return once

        agent = timed(via("agent"), a.repeat)
        ssh = timed(via("ssh"), a.repeat)
        masters = Masters(tomllib.loads(inv_path.read_text()), root, scratch)
        masters.start()
        xargs = timed(masters.run, a.repeat)
        ratio = statistics.median(agent) / statistics.median(xargs)
        print(json.dumps({
            "hosts": a.hosts, "repeat": a.repeat,
            "reops_api_via_agent": summary(agent),
            "reops_api_via_ssh_pool": summary(ssh),
            "xargs_ssh_warm_controlmaster": summary(xargs),
            "ratio_agent_to_controlmaster": round(ratio, 2),
            "targets": {
                f"agent p50 < {TARGET_AGENT_S * 1000:.0f} ms":
                    "PASS" if statistics.median(agent) < TARGET_AGENT_S else "MISS",
                f"agent <= {TARGET_RATIO}x ControlMaster":
                    "PASS" if ratio <= TARGET_RATIO else "MISS",
            },
        }, indent=2))
    finally:
        if masters is not None:
            masters.stop()
        subprocess.run([REOPS, "lab", "down", "--dir", str(root)], env=env, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
