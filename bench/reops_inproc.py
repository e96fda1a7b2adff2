"""reops from one Python process: the warm case and the 10-step pipeline.

    python bench/reops_inproc.py warm --inventory INV --command C
        the same command twice; connections are reused, so the second run is timed
        (wall and this process's CPU seconds, to stderr as JSON)
    python bench/reops_inproc.py seq --inventory INV --command C --steps 10
        exec_(...) | then(exec_, ...) x steps, one pipeline; each host moves on alone

`{step}` in the command becomes the step number. Prints each successful host's output of
the last step, prefixed by its name; a failed host prints ERROR and its message.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from reops import exec_, inventory, run, then
from reops.core.model import Outcome


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def command_for(template: str, step: int) -> str:
    return template.replace("{step}", str(step))


def show(out: Outcome) -> int:
    for r in out.results:
        if r.ok:
            for line in r.out.splitlines():
                print(f"{r.host} {line}")
        else:
            print(f"{r.host} ERROR {r.err.strip()}")
    return 0 if out.ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["warm", "seq"])
    p.add_argument("--inventory", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    hosts = inventory(args.inventory).select("all")
    if args.mode == "warm":
        run(exec_(hosts, command_for(args.command, 1)))
        t0, c0 = time.perf_counter(), _cpu()
        out = run(exec_(hosts, command_for(args.command, 1)))
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        sys.stderr.write(json.dumps({"warm_wall": wall, "warm_cpu": cpu}) + "\n")
        return show(out)
    stream = exec_(hosts, command_for(args.command, 1))
    for step in range(2, args.steps + 1):
        stream = stream | then(exec_, command_for(args.command, step))
    return show(run(stream))


if __name__ == "__main__":
    sys.exit(main())
