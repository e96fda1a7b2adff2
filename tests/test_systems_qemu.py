"""Machines on real QEMU through `qemu:///embed` (TCG, diskless tiny domains), via the queue."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path

import pytest
from systems_fixtures import qemu_root

from reops.store.model import MachinesError
from reops.systems.config import load_machines_config
from reops.systems.machines import Machines


def _why_not() -> str | None:
    if shutil.which("qemu-system-x86_64") is None or os.geteuid() != 0:
        return "needs qemu-system-x86_64 and root"
    try:
        pwd.getpwnam("libvirt-qemu")
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        return "needs the libvirt-qemu user and group"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


async def test_embedded_qemu_create_stop_start_destroy(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[hypervisors.qemu]\nuri = "qemu:///embed?root={qemu_root()}"\nnetwork = ""\n\n'
        "[machines]\nstop_timeout = 0.5\nip_timeout = 5\n"
    )
    async with Machines.open(tmp_path, load_machines_config(cfg)) as m:
        m.add_type("tiny")
        events: list[str] = []
        (await m.hypervisor_events("qemu")).subscribe(lambda e: events.append(e.event))
        (created,) = await m.wait(await m.create("tiny", ["tiny", "ram=64", "disk_gb=0"]))
        assert created.state == "succeeded", created.error
        s = m.systems("typed:tiny")[0]
        assert s.state == "running" and s.placement.volumes == ()
        (stop,) = await m.wait(await m.stop(s.hostname))
        assert stop.result == {"stop": "destroyed: no clean shutdown within 0.5s"}
        assert m.system(s.id).state == "stopped"
        await m.wait(await m.start(s.hostname))
        (gone,) = await m.wait(await m.destroy(s.hostname))
        assert gone.state == "succeeded" and m.systems() == []
        assert await (await m.hypervisor("qemu")).state(s.hostname) == "missing"
        assert events[:2] == ["DEFINED", "RESUMED"] or "STARTED" in events
        assert {"STARTED", "STOPPED", "UNDEFINED"} <= set(events)



async def test_embedded_qemu_disks_are_overlays_on_the_base(tmp_path: Path) -> None:
    import json
    import subprocess

    root = Path(qemu_root())
    images = root / "images" / "default"
    images.mkdir(parents=True, exist_ok=True)
    base = images / "alpine-3.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[hypervisors.qemu]\nuri = "qemu:///embed?root={root}"\nnetwork = ""\n')
    async with Machines.open(tmp_path, load_machines_config(cfg)) as m:
        m.add_type("disk")
        with pytest.raises(MachinesError, match=r"no base volume 'debian-12\.qcow2'"):
            await m.create("disk", ["tiny", "debian-12"])
        (job,) = await m.wait(await m.create("disk", ["tiny", "ram=64", "alpine-3"]))
        assert job.state == "succeeded", job.error
        s = m.systems("typed:disk")[0]
        overlay = images / f"{s.hostname}.qcow2"
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(overlay)],
            capture_output=True, text=True, check=True).stdout)
        assert info["backing-filename"] == str(base) and info["format"] == "qcow2"
        (gone,) = await m.wait(await m.destroy(s.hostname))
        assert gone.state == "succeeded" and not overlay.exists() and base.exists()
