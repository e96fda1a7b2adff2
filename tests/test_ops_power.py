"""Power: reboot/shutdown scripts (run only against stand-ins — never for real) and boot ids.

The scripts run with a PATH whose `nohup`, `systemctl`, `shutdown`, `reboot`, `poweroff`
and `id` are stand-ins that only log, so nothing here can take this machine down.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from reops.core.model import Host
from reops.ops import power
from reops.ops.base import Op
from reops.ops.text import EX_NOPERM

DATA = Path(__file__).parent / "data" / "ops"
HOST = Host(name="h1", address="10.0.0.1")
STAND_INS = ("nohup", "systemctl", "shutdown", "reboot", "poweroff")


def run_with_stand_ins(tmp_path: Path, op: Op, uid: int) -> tuple[int, str, str, list[str]]:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "log"
    log.write_text("")
    for name in STAND_INS:
        (bin_ / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        (bin_ / name).chmod(0o755)
    (bin_ / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_ / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    p = subprocess.run(["sh", "-c", op.command_for(HOST)], capture_output=True, text=True,
                       env=env, timeout=60)
    if p.returncode == 0:  # the stand-in nohup runs detached: give it a moment to log
        deadline = time.monotonic() + 10
        while not log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
    return p.returncode, p.stdout, p.stderr, log.read_text().splitlines()


@pytest.mark.parametrize(("op", "line"), [
    (power.reboot(), 'nohup sh -c "sleep 2; systemctl reboot || shutdown -r now || reboot" '
                     ">/dev/null 2>&1 &"),
    (power.reboot(delay_s=10),
     'nohup sh -c "sleep 10; systemctl reboot || shutdown -r now || reboot" >/dev/null 2>&1 &'),
    (power.shutdown(), 'nohup sh -c "sleep 2; systemctl poweroff || shutdown -h now || poweroff"'
                       " >/dev/null 2>&1 &"),
])
def test_scripts(op: Op, line: str) -> None:
    lines = op.command_for(HOST).splitlines()
    assert line in lines
    assert lines[0].startswith('[ "$(id -u)" = 0 ] || ')
    assert "cat /proc/sys/kernel/random/boot_id" in lines


def test_delay_must_let_the_command_return() -> None:
    with pytest.raises(ValueError):
        power.reboot(delay_s=0)


def test_reboot_schedules_and_returns_the_boot_before(tmp_path: Path) -> None:
    op = power.reboot(sudo=False)
    code, out, err, calls = run_with_stand_ins(tmp_path, op, uid=0)
    assert code == 0, err
    assert op.parse is not None and op.changed is not None
    before = op.parse(out)
    assert before.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert op.changed(code, out) is True
    assert calls == ["nohup sh -c sleep 2; systemctl reboot || shutdown -r now || reboot"]


def test_not_root_is_a_clear_failure(tmp_path: Path) -> None:
    code, out, err, calls = run_with_stand_ins(tmp_path, power.shutdown(), uid=1000)
    assert code == EX_NOPERM
    assert err == "reops: shutdown needs root: run with sudo=True\n"
    assert calls == [] and out == ""


def test_boot_id_and_is_back() -> None:
    op = power.boot_id()
    p = subprocess.run(["sh", "-c", op.command_for(HOST)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert op.parse is not None
    now = op.parse(p.stdout)
    assert now.uptime_s and now.uptime_s > 0
    captured = power.parse_boot_id((DATA / "real-debian12-boot-id.txt").read_text())
    assert captured == power.BootId(boot_id="c71c6533-1a93-44e0-8026-01b86f273a2a",
                                    uptime_s=624.91)
    assert power.is_back(captured, power.BootId(boot_id="another")) is True
    assert power.is_back(captured, captured) is False
    with pytest.raises(ValueError):
        power.parse_boot_id("::reops:: boot_id\n\n")
