"""A hung hypervisor on real QEMU: a SIGSTOPped guest never answers libvirt's monitor, so a
job's libvirt call blocks; its deadline fails the job as "timeout" and frees the system."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from systems_fixtures import qemu_root
from test_systems_qemu import _why_not

from reops.systems.config import load_machines_config
from reops.systems.machines import Machines

pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))

#: bound on waiting for a job here: reaching it means the deadline did not work
WAIT = 120.0


async def test_hung_libvirt_call_fails_as_timeout_and_frees_the_system(tmp_path: Path) -> None:
    root = qemu_root()
    cfg = tmp_path / "config.toml"
    # libvirt's shutdown call waits for the stopped guest's monitor and never returns (seen
    # blocking > 40 s by hand); the deadline, not stop_timeout, has to end the job
    cfg.write_text(f'[hypervisors.qemu]\nuri = "qemu:///embed?root={root}"\nnetwork = ""\n\n'
                   "[machines]\nstop_timeout = 0.5\n\n[machines.deadlines]\nstop = 3\n")
    async with Machines.open(tmp_path, load_machines_config(cfg)) as m:
        m.add_type("tiny")
        (created,) = await m.wait(await m.create("tiny", ["tiny", "ram=64", "disk_gb=0"],
                                                 hostname="hung1"))
        assert created.state == "succeeded", created.error
        qemu = int((Path(root) / "run" / "qemu" / "hung1.pid").read_text())
        os.kill(qemu, signal.SIGSTOP)  # the guest's monitor stops answering
        try:
            async with asyncio.timeout(WAIT):
                (stop,) = await m.wait(await m.stop("hung1"))
                assert (stop.state, stop.reason) == ("failed", "timeout"), stop.error
                assert stop.error.startswith("timeout: stop did not finish within 3s")
                assert "the hypervisor may be hung" in stop.error
                # the system's slot is free: destroy (which kills QEMU, stopped or not) runs
                (gone,) = await m.wait(await m.destroy("hung1"))
            assert gone.state == "succeeded", gone.error
            assert await (await m.hypervisor("qemu")).state("hung1") == "missing"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(qemu, signal.SIGCONT)
