"""An awaited pipeline that is cancelled (asyncio.wait_for, a task cancelled by a notebook
or a script) has killed its remote commands by the time the await gives up, as `run()` does
on Ctrl-C: a script that exits right after must not leave them running on the hosts (a
guard: a survivor was once seen after a cancelled await in a kernel)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from reops.lab.fleet import LabInfo

SCRIPT = """
import asyncio, subprocess, sys
from reops import exec_, inventory
from reops.streams.stream import outcome_async

hosts = inventory(sys.argv[1]).select(sys.argv[2])

async def main() -> None:
    try:
        await asyncio.wait_for(outcome_async(exec_(hosts, "sleep " + sys.argv[3])), 3)
    except TimeoutError:
        # right when the await gives up: are the remote commands still running?
        left = subprocess.run(["pgrep", "-f", "^sleep " + sys.argv[3]], capture_output=True,
                              text=True).stdout.split()
        print("cancelled", len(left), flush=True)

asyncio.run(main())
"""


def remote_sleeps(arg: str) -> list[str]:
    """The `sleep ARG` processes alive on this machine (the lab's sshd run here)."""
    out = subprocess.run(["pgrep", "-af", f"sleep {arg}"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def test_a_cancelled_await_kills_its_remote_commands_before_returning(lab: LabInfo) -> None:
    names = list(lab.hosts)  # 20 hosts: killing them all takes the loop a while
    arg = f"{300 + uuid.uuid4().int % 1000}.{os.getpid()}"  # unique: only this test's sleeps
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(lab.inventory), ",".join(names),
                           arg], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the await returned only after the kills: nothing was left when it did, nor after
    assert done.stdout.strip() == "cancelled 0"
    assert remote_sleeps(arg) == []
