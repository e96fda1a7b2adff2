"""Python peers run from the bench venv: parallel-ssh and fabric's ThreadingGroup.

    bench/.venv/bin/python bench/py_peers.py pssh|fabric --targets T.json --command C [--steps K]

Each step runs on all hosts and waits for all of them (these libraries work in lock-step).
Prints each command's stdout prefixed by the host address.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def command_for(template: str, step: int) -> str:
    return template.replace("{step}", str(step))


def run_pssh(t: dict[str, Any], template: str, steps: int) -> int:
    from pssh.clients import ParallelSSHClient

    # parallel-ssh (libssh2) has no known_hosts verification: it does not check host keys.
    client = ParallelSSHClient(t["addresses"], user=t["user"], port=t["port"], pkey=t["key"],
                               pool_size=len(t["addresses"]), num_retries=1, timeout=60)
    failed = 0
    for step in range(1, steps + 1):
        output = client.run_command(command_for(template, step), stop_on_errors=False)
        client.join(output)
        for host_out in output:
            if host_out.exception is not None:
                print(f"{host_out.host} ERROR {host_out.exception!r}")
                failed += 1
                continue
            for line in host_out.stdout:
                print(f"{host_out.host} {line}")
    return 1 if failed else 0


def run_fabric(t: dict[str, Any], template: str, steps: int) -> int:
    from fabric import ThreadingGroup
    from fabric.exceptions import GroupException
    from paramiko import HostKeys, RejectPolicy

    known = HostKeys(t["known_hosts"])  # parsed once, shared by every connection
    group = ThreadingGroup(*t["addresses"], user=t["user"], port=t["port"],
                           connect_kwargs={"key_filename": t["key"], "allow_agent": False,
                                           "look_for_keys": False})
    for conn in group:
        conn.client.get_host_keys().update(known)
        conn.client.set_missing_host_key_policy(RejectPolicy())
    failed = 0
    try:
        for step in range(1, steps + 1):
            try:
                results = group.run(command_for(template, step), hide=True, warn=True)
            except GroupException as e:
                results = e.result
            for conn, res in results.items():
                if isinstance(res, Exception):
                    print(f"{conn.host} ERROR {res!r}")
                    failed += 1
                    continue
                for line in res.stdout.splitlines():
                    print(f"{conn.host} {line}")
    finally:
        group.close()
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool", choices=["pssh", "fabric"])
    p.add_argument("--targets", required=True)
    p.add_argument("--command", required=True, help="{step} becomes the step number")
    p.add_argument("--steps", type=int, default=1)
    args = p.parse_args()
    with open(args.targets) as f:
        t = json.load(f)
    run = run_pssh if args.tool == "pssh" else run_fabric
    return run(t, args.command, args.steps)


if __name__ == "__main__":
    sys.exit(main())
