"""Services: scripts, status parsers, and the scripts run against a stand-in systemctl.

This container has no systemd as PID 1, so the real run proves the clear failure; the
systemd branch runs for real against a stand-in `systemctl` (state kept in files), with
the script's `/run/systemd/system` check pointed at a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from reops.core.model import Host
from reops.ops import service
from reops.ops.base import Op
from reops.ops.text import EX_NOINPUT, EX_UNAVAILABLE

DATA = Path(__file__).parent / "data" / "ops"
HOST = Host(name="h1", address="10.0.0.1")

FAKE_SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >> "$FAKE_LOG"
verb=$1; shift
props=; value=
while [ $# -gt 0 ]; do
  case $1 in
    -p) props=$2; shift ;;
    --value) value=1 ;;
    --quiet) ;;
    --) ;;
    *) unit=$1 ;;
  esac
  shift
done
s="$FAKE_STATE/$unit"
[ -e "$s.unit" ] || { [ "$verb" = show ] && { [ -n "$value" ] && echo not-found; exit 0; }
                      echo "Unit $unit.service not found." >&2; exit 5; }
case $verb in
  show)
    if [ -n "$value" ] && [ "$props" = LoadState ]; then echo loaded
    elif [ -n "$value" ]; then [ -e "$s.active" ] && echo "Fri 2026-11-27 09:12:03 UTC" || echo
    else
      echo "Id=$unit.service"; echo "LoadState=loaded"; echo "Description=Test unit"
      if [ -e "$s.active" ]; then
        echo ActiveState=active; echo SubState=running; echo MainPID=4242
        echo "ActiveEnterTimestamp=Fri 2026-11-27 09:12:03 UTC"
      else
        echo ActiveState=inactive; echo SubState=dead; echo MainPID=0
        echo ActiveEnterTimestamp=
      fi
      [ -e "$s.enabled" ] && echo UnitFileState=enabled || echo UnitFileState=disabled
    fi ;;
  is-active) [ -e "$s.active" ] ;;
  is-enabled) [ -e "$s.enabled" ] ;;
  start|restart|reload) touch "$s.active" ;;
  stop) rm -f "$s.active" ;;
  enable) touch "$s.enabled" ;;
  disable) rm -f "$s.enabled" ;;
esac
"""


class FakeSystemd:
    def __init__(self, root: Path, units: tuple[str, ...] = ("nginx",)) -> None:
        self.bin, self.state, self.run_dir = root / "bin", root / "state", root / "run"
        for d in (self.bin, self.state, self.run_dir):
            d.mkdir()
        (self.bin / "systemctl").write_text(FAKE_SYSTEMCTL)
        (self.bin / "systemctl").chmod(0o755)
        for u in units:
            (self.state / f"{u}.unit").touch()
        self.log = root / "log"

    def run(self, op: Op) -> tuple[int, str, str]:
        cmd = op.command_for(HOST).replace(service.SYSTEMD_RUN_DIR, str(self.run_dir))
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}",
               "FAKE_STATE": str(self.state), "FAKE_LOG": str(self.log)}
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, env=env,
                           timeout=60)
        return p.returncode, p.stdout, p.stderr


def changed(op: Op, code: int, out: str) -> bool | None:
    assert op.changed is not None
    return op.changed(code, out)


# --- command generation ---

@pytest.mark.parametrize(("op", "lines"), [
    (service.start("nginx"), [
        "svc=nginx",
        "if [ -d /run/systemd/system ]; then init=systemd",
        '  if systemctl is-active --quiet -- "$svc"; then echo "::reops:: unchanged"; '
        'else systemctl start -- "$svc" && echo "::reops:: changed"; fi',
        '  if rc-service "$svc" status >/dev/null 2>&1; then echo "::reops:: unchanged"; '
        'else rc-service "$svc" start && echo "::reops:: changed"; fi',
    ]),
    (service.restart("sshd"), ['  systemctl restart -- "$svc" && echo "::reops:: changed"',
                               '  rc-service "$svc" restart && echo "::reops:: changed"']),
    (service.enable("getty@tty1"), [
        "svc=getty@tty1",
        '  if [ -e "/etc/runlevels/default/$svc" ]; then echo "::reops:: unchanged"; '
        'else rc-update add "$svc" default && echo "::reops:: changed"; fi']),
    (service.status("ssh"), [
        "  systemctl show -p Id,Description,LoadState,ActiveState,SubState,UnitFileState,"
        'MainPID,ActiveEnterTimestamp -- "$svc"',
        '  echo "OpenRC=$(rc-service "$svc" status 2>&1 | tail -n 1)"']),
])
def test_script_lines(op: Op, lines: list[str]) -> None:
    cmd = op.command_for(HOST)
    for line in lines:
        assert line in cmd.splitlines()


@pytest.mark.parametrize("verb", service.ACTIONS)
def test_every_action_checks_init_and_existence(verb: str) -> None:
    op = service.action(verb, "nginx", sudo=True)
    assert op.name == f"service.{verb}"
    cmd = op.command_for(HOST)
    assert cmd.startswith("sudo -n -- sh -c 'svc=nginx\n")
    assert "exit 69" in cmd and "exit 66" in cmd


@pytest.mark.parametrize("call", [
    lambda: service.start("nginx; reboot"), lambda: service.start("-x"),
    lambda: service.start(""), lambda: service.action("explode", "nginx"),
])
def test_bad_input_is_refused(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


# --- parsers ---

@pytest.mark.parametrize(("fixture", "expected"), [
    ("sample-debian12-service-status-systemd.txt", service.ServiceStatus(
        name="ssh.service", init="systemd", active=True, state="active", sub="running",
        enabled=True, unit_file_state="enabled", pid=642, since=1795770723.0,
        description="OpenBSD Secure Shell server")),
    ("sample-debian12-service-status-systemd-failed.txt", service.ServiceStatus(
        name="nginx.service", init="systemd", active=False, state="failed", sub="failed",
        enabled=False, unit_file_state="disabled", pid=None, since=None,
        description="A high performance web server and a reverse proxy server")),
    ("sample-alpine319-service-status-openrc.txt", service.ServiceStatus(
        name="sshd", init="openrc", active=True, state="started", enabled=True, pid=2311)),
])
def test_parse_status(fixture: str, expected: service.ServiceStatus) -> None:
    name = expected.name.removesuffix(".service")
    assert service.parse_status(name, (DATA / fixture).read_text()) == expected


# --- this host: no systemd as PID 1 ---

def test_no_systemd_on_this_host_is_a_clear_failure() -> None:
    if os.path.isdir(service.SYSTEMD_RUN_DIR):
        pytest.skip("this host runs systemd")
    # a name with no /etc/init.d script: a SysV init script would be used (see test_lab_hosts)
    p = subprocess.run(["sh", "-c", service.status("reops-no-such").command_for(HOST)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == EX_UNAVAILABLE
    assert p.stderr == ("reops: systemd is not running on this host (no /run/systemd/system) "
                        "and OpenRC is not installed\n")


# --- the systemd branch against a stand-in systemctl ---

def test_unknown_service_is_a_clear_failure(tmp_path: Path) -> None:
    code, _, err = FakeSystemd(tmp_path).run(service.start("nosuch"))
    assert code == EX_NOINPUT
    assert err == "reops: service nosuch not found (systemd)\n"


def test_start_stop_enable_disable_are_idempotent(tmp_path: Path) -> None:
    fake = FakeSystemd(tmp_path)
    for op in (service.start("nginx"), service.enable("nginx"), service.stop("nginx"),
               service.disable("nginx")):
        code, out, err = fake.run(op)
        assert code == 0, err
        assert changed(op, code, out) is True, op.name
        code, out, _ = fake.run(op)
        assert changed(op, code, out) is False, op.name
        assert op.parse is not None and op.parse(out) == "systemd"


def test_restart_always_changes(tmp_path: Path) -> None:
    fake = FakeSystemd(tmp_path)
    op = service.restart("nginx")
    for _ in range(2):
        code, out, _ = fake.run(op)
        assert (code, changed(op, code, out)) == (0, True)


def test_status_round_trip(tmp_path: Path) -> None:
    fake = FakeSystemd(tmp_path)
    op = service.status("nginx")
    assert op.parse is not None
    code, out, _ = fake.run(op)
    assert code == 0
    down = op.parse(out)
    assert (down.active, down.state, down.enabled, down.pid, down.since) == (
        False, "inactive", False, None, None)
    fake.run(service.start("nginx"))
    fake.run(service.enable("nginx"))
    up = op.parse(fake.run(op)[1])
    assert (up.active, up.sub, up.enabled, up.pid) == (True, "running", True, 4242)
    assert up.since == 1795770723.0
