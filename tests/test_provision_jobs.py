"""Provision JOBS (Machines' queue, reops.systems.provisioning) over real SSH to lab hosts.

The systems live on libvirt's test driver; each system's Type recipe (user code) runs its
commands on the lab host of the same name, over a new SSH connection per host. Machines
runs on the runtime loop here, as in a script or the REPL that uses Machines in-process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from systems_fixtures import config_toml

from reops import exec_
from reops.lab.fleet import LabInfo
from reops.streams.stream import run

#: a wait that only a hang exceeds (a healthy run takes seconds)
HANG_S = 240

RECIPE = '''\
"""Provision a test system: say so in a file on the lab host of the same name."""
from reops import exec_, inventory


def provision(hosts, inv, mark="job"):
    (name,) = hosts.names
    return exec_(inventory(inv).select(name), f"echo {mark} $(hostname) > .reops-job-{name}")
'''

BROKEN = '''\
def provision(hosts, inv):
    raise RuntimeError("no disk for the cache")
'''

SCRIPT = '''\
import sys
from pathlib import Path

from reops.core.runtime import get_runtime
from reops.systems.config import load_machines_config
from reops.systems.machines import Machines
from reops.systems.provisioning import provisioner

root, config, recipe, broken, inv = sys.argv[1:6]
names = sys.argv[6].split(",")


async def main() -> None:
    cfg = load_machines_config(Path(config))
    async with Machines.open(Path(root), cfg, provision=provisioner()) as m:
        m.add_type("cache")  # no recipe yet: created systems are not provisioned
        for n in names:
            (j,) = await m.wait(await m.create("cache", ["tiny"], hostname=n))
            assert j.state == "succeeded", (n, j.error)
        m.add_type("cache", provision=f"{recipe}:provision", args={"inv": inv, "mark": "many"})
        for j in await m.wait(await m.provision("typed:cache")):  # all at once
            print(m.system(j.system_id or "").hostname, j.op, j.state, j.error or "")
        m.add_type("broken", provision=broken, args={"inv": inv})
        (j,) = await m.wait(await m.create("broken", ["tiny"], hostname="odd1"))
        print("odd1", j.op, j.state, j.error or "")


get_runtime().call(main())
'''


def test_provision_jobs_for_more_hosts_than_the_loop_has_threads_finish(
        lab: LabInfo, tmp_path: Path) -> None:
    """Eight provision jobs at once (the queue runs eight): each recipe opens a new SSH
    connection, which asyncssh prepares on the loop's default executor (cpu count + 4 = 6
    threads here). Recipes parked on those threads while waiting on the same loop starved
    it: all eight waited forever. In its own process, so a hang is a bounded failure.

    And a recipe that raises fails its own job saying file:line, in one line."""
    names = sorted(lab.hosts)[:8]
    recipe, broken = tmp_path / "recipe.py", tmp_path / "broken.py"
    recipe.write_text(RECIPE)
    broken.write_text(BROKEN)
    machines = tmp_path / "machines"
    machines.mkdir()
    args = [str(machines), str(config_toml(machines)), str(recipe), str(broken),
            str(lab.inventory), ",".join(names)]
    try:
        got = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True,
                             text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired:
        raise AssertionError("8 provision jobs at once hung") from None
    try:
        assert got.returncode == 0, got.stderr[-3000:]
        rows = got.stdout.splitlines()
        assert sorted(rows[:-1]) == sorted(f"{n} provision succeeded " for n in names), rows
        assert rows[-1] == (f"odd1 provision failed odd1: provisioning with {broken} failed: "
                            f"{broken}:2: RuntimeError: no disk for the cache"), rows
        for n in names:  # each recipe really ran on its own host
            mark = run(exec_(lab.as_hosts().only([n]), f"cat .reops-job-{n}"))
            assert mark.ok and mark.results[0].out.startswith("many "), mark.results
    finally:
        run(exec_(lab.as_hosts().only(names),
                  "; ".join(f"rm -f .reops-job-{n}" for n in names)))
