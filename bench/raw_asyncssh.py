"""The baseline: a minimal asyncssh gather loop, what one would write by hand.

Key and known_hosts are loaded once; one connection per host; each host runs its
commands one after another over that connection; all hosts at once (asyncio.gather).
Prints each command's stdout prefixed by the host address, one line per output line.

    python bench/raw_asyncssh.py --targets T.json --command 'uname -a' [--steps 10] [--warm]

With --warm the whole fan-out (connect + commands) runs, then the same commands again
over the open connections; the second pass's wall and CPU seconds go to stderr as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import asyncssh


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def command_for(template: str, step: int) -> str:
    return template.replace("{step}", str(step))


async def run_all(conns: dict[str, asyncssh.SSHClientConnection], template: str,
                  steps: int) -> dict[str, list[str]]:
    async def one(addr: str, conn: asyncssh.SSHClientConnection) -> list[str]:
        outs = []
        for step in range(1, steps + 1):
            r = await conn.run(command_for(template, step), check=False)
            outs.append(str(r.stdout))
        return outs

    got = await asyncio.gather(*(one(a, c) for a, c in conns.items()), return_exceptions=True)
    return {a: g if isinstance(g, list) else [f"ERROR {g!r}"] for a, g in zip(conns, got,
                                                                            strict=True)}


async def main(args: argparse.Namespace) -> int:
    with open(args.targets) as f:
        t = json.load(f)
    key = asyncssh.read_private_key(t["key"])
    known = asyncssh.read_known_hosts(t["known_hosts"])

    async def connect(addr: str) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(addr, t["port"], username=t["user"], client_keys=[key],
                                      known_hosts=known)

    conns_or_errors = await asyncio.gather(*(connect(a) for a in t["addresses"]),
                                           return_exceptions=True)
    conns = {a: c for a, c in zip(t["addresses"], conns_or_errors, strict=True)
             if isinstance(c, asyncssh.SSHClientConnection)}
    for a, c in zip(t["addresses"], conns_or_errors, strict=True):
        if not isinstance(c, asyncssh.SSHClientConnection):
            print(f"{a} ERROR {c!r}")
    outs = await run_all(conns, args.command, args.steps)
    if args.warm:
        t0, c0 = time.perf_counter(), _cpu()
        outs = await run_all(conns, args.command, args.steps)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        sys.stderr.write(json.dumps({"warm_wall": wall, "warm_cpu": cpu}) + "\n")
    for addr, lines in outs.items():
        for text in lines:
            for line in text.splitlines():
                print(f"{addr} {line}")
    for c in conns.values():
        c.close()
    await asyncio.gather(*(c.wait_closed() for c in conns.values()))
    return 0 if len(conns) == len(t["addresses"]) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", required=True)
    p.add_argument("--command", required=True, help="{step} becomes the step number")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--warm", action="store_true")
    sys.exit(asyncio.run(main(p.parse_args())))
