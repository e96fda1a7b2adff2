"""Physical machines over SSH: the shutdown and reachability seams from any Executor.

    from reops.transports.ssh.executor import SshExecutor
    shutdown, reachable = over(SshExecutor(settings), settings)
    Machines.open(shutdown=shutdown, reachable=reachable)

Start is Wake-on-LAN (reops.systems.physical.wol); stop runs `shutdown -h now` with sudo; status
is whether the machine answers a trivial command.
"""

from __future__ import annotations

from pathlib import Path

from reops.core.model import Result
from reops.core.settings import Settings, load_settings
from reops.ops.base import Op
from reops.store.model import System
from reops.systems.handlers import ReachableSeam, ShutdownSeam
from reops.systems.machines import Machines, to_hosts
from reops.systems.provisioning import provisioner
from reops.transports.base import Executor
from reops.transports.ssh.executor import SshExecutor

SHUTDOWN = Op(name="shutdown", command="shutdown -h now", sudo=True)
PROBE = Op(name="reachable", command="true")


def over(executor: Executor, settings: Settings) -> tuple[ShutdownSeam, ReachableSeam]:
    """(shutdown, reachable) for Machines, running over `executor` (SSH or agents)."""
    async def shutdown(s: System) -> Result:
        (host,) = to_hosts([s])
        return await executor.run(host, SHUTDOWN, settings)

    async def reachable(s: System) -> bool:
        (host,) = to_hosts([s])
        return (await executor.run(host, PROBE, settings)).ok

    return shutdown, reachable


def open_machines(root: Path | None = None) -> Machines:
    """Machines with physical machines handled over SSH (settings from config.toml)."""
    settings = load_settings()
    ssh = SshExecutor(settings)
    shutdown, reachable = over(ssh, settings)
    m = Machines.open(root, shutdown=shutdown, reachable=reachable, provision=provisioner())
    m.on_close(ssh.close)
    return m
