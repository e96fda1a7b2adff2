"""`reops exec --stream` of a big output: wall time and peak memory of the reops process.

Issue 8 (item 13): 50 MB streamed cost 1.16 GB and 459 s. Brings up its own one-host lab
(127.0.253.1, free for hand-built labs) and runs the CLI as a user would, its stdout read
at full speed (a fast terminal) and slowly (a slow terminal).

    .venv/bin/python bench/stream_big.py [--mb 50] [--reops-path DIR]

`--reops-path` runs another checkout of the package (e.g. `git archive` of an older
commit) against the same lab, for before/after figures.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reops.lab.fleet import Lab


def measure(cmd: list[str], env: dict[str, str], slow: bool
            ) -> tuple[float, float, int, int, int]:
    """(wall s, peak RSS MiB, exit code, output lines, lines reported not shown) of one CLI
    run (wait4: that child's own rusage)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         cwd=tempfile.gettempdir())  # not a checkout: -m puts cwd first
    assert p.stdout is not None
    out = bytearray()
    while chunk := p.stdout.read1(65536):  # type: ignore[attr-defined]
        out += chunk
        if slow:  # a terminal that takes 64 KiB every 10 ms (~6 MB/s)
            time.sleep(0.01)
    _, status, usage = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    not_shown = sum(int(n) for n in re.findall(rb"(\d+) lines not shown", out))
    return (time.monotonic() - t0, usage.ru_maxrss / 1024, code, out.count(b"\n"),
            not_shown)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--reops-path", default=None)
    ap.add_argument("--slow", action="store_true", help="also a slow reader")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="reops-bench-stream-"))
    lab = Lab(root, hosts=1, first_address="127.0.253.1", base_port=2391)
    lab.up()
    try:
        env = {**os.environ, "REOPS_HOME": str(root / "home")}
        if args.reops_path:
            env["PYTHONPATH"] = args.reops_path
        lines = args.mb * 1024 * 1024 // 100
        remote = f"yes {'x' * 99} | head -n {lines}"
        cmd = [sys.executable, "-m", "reops", "exec", "-i", str(lab.info.inventory), "all",
               "--stream", "--", remote]
        for slow in (False, True) if args.slow else (False,):
            wall, rss, code, shown, not_shown = measure(cmd, env, slow)
            print(f"{args.mb} MB ({lines} lines) --stream, {'slow' if slow else 'fast'} reader: "
                  f"wall {wall:.1f} s, peak RSS {rss:.0f} MiB, exit {code}, {shown} rows out, "
                  f"{not_shown} lines reported not shown", flush=True)
    finally:
        lab.down()


if __name__ == "__main__":
    main()
