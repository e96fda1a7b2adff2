"""Power: reboot and shut down hosts, and tell when a rebooted host is back.

A reboot kills the SSH connection, so the op never waits for it: the script records the
kernel's boot_id, schedules the reboot `delay_s` seconds later in a detached process and
returns at once with exit 0. Waiting until the host is back belongs to the stream layer:
poll `boot_id()` on the clock source (bounded by a timeout, no sleeping) until it succeeds
with a boot_id different from the one `reboot()` returned — reachable alone is not enough,
the old system may still be shutting down.
"""

from __future__ import annotations

import msgspec

from reops.ops.base import Op
from reops.ops.check import QUERY, always
from reops.ops.text import (
    CHANGED,
    EX_NOPERM,
    changed_marker,
    fail,
    marker,
    script,
    sections,
    to_float,
)


class BootId(msgspec.Struct, frozen=True, kw_only=True):
    """Which boot a host is in (changes on every boot) and how long it has been up."""

    boot_id: str
    uptime_s: float | None = None


def _probe() -> list[str]:
    return [marker("boot_id"), "cat /proc/sys/kernel/random/boot_id",
            marker("uptime"), "cat /proc/uptime"]


def parse_boot_id(out: str) -> BootId:
    """The boot_id and uptime sections into a BootId; no boot_id is a parse error."""
    s = sections(out)
    boot = s.get("boot_id", "").strip()
    if not boot:
        raise ValueError("no boot_id in output (is /proc mounted?)")
    up = s.get("uptime", "").split()
    return BootId(boot_id=boot, uptime_s=to_float(up[0]) if up else None)


def boot_id(*, sudo: bool = False, become_user: str | None = None) -> Op:
    """The host's current boot: poll this after `reboot()` to know it is back."""
    return Op(name="power.boot_id", command=script(*_probe()), sudo=sudo,
              become_user=become_user, parse=parse_boot_id, check=QUERY)


def _schedule(name: str, verb: str, fallback: str, delay_s: int, sudo: bool,
              become_user: str | None) -> Op:
    if delay_s < 1:
        raise ValueError("delay_s must be >= 1 so the command can return before the host goes")
    cmd = script(
        '[ "$(id -u)" = 0 ] || ' + fail(EX_NOPERM, f"{name} needs root: run with sudo=True"),
        *_probe(),
        f'nohup sh -c "sleep {delay_s}; systemctl {verb} || {fallback}" >/dev/null 2>&1 &',
        CHANGED,
    )
    probe = script('[ "$(id -u)" = 0 ] || '
                   + fail(EX_NOPERM, f"{name} needs root: run with sudo=True"), *_probe())
    return Op(name=f"power.{name}", command=cmd, sudo=sudo, become_user=become_user,
              parse=parse_boot_id, changed=changed_marker,
              check=always(f"power.{name}: would {verb} the host",
                           lambda diff: Op(name=f"power.{name}", command=probe)))


def reboot(*, delay_s: int = 2, sudo: bool = False, become_user: str | None = None) -> Op:
    """Schedule a reboot in `delay_s` s; `data` is the BootId before it (to wait on)."""
    return _schedule("reboot", "reboot", "shutdown -r now || reboot", delay_s, sudo, become_user)


def shutdown(*, delay_s: int = 2, sudo: bool = False, become_user: str | None = None) -> Op:
    """Schedule a power-off in `delay_s` s; `data` is the BootId at the time."""
    return _schedule("shutdown", "poweroff", "shutdown -h now || poweroff", delay_s, sudo,
                     become_user)


def is_back(before: BootId, now: BootId) -> bool:
    """Whether the host has rebooted since `before` (a new boot_id)."""
    return now.boot_id != before.boot_id
