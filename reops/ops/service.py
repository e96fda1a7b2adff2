"""Services: start, stop, restart, reload, enable, disable and status on systemd, OpenRC
or SysV init.

One script per host picks the init system (systemd when `/run/systemd/system` exists, as
sd_booted(3) does; OpenRC when `rc-service` is installed; else SysV init when the service
has an `/etc/init.d/NAME` script: Debian without systemd, most containers), checks the
service exists and only then acts, so the failures are clear: exit 66 `reops: service 'x'
not found`, exit 69 `reops: systemd is not running on this host …`. start/stop/enable/
disable look before they act and report `changed` honestly; restart and reload always
change. SysV: the init script's LSB `status` (0: running) decides, enable/disable are
`update-rc.d` and read /etc/rc[2-5].d.
"""

from __future__ import annotations

import re

import msgspec

from reops.ops.base import Op
from reops.ops.check import QUERY, Check, CheckReport
from reops.ops.text import (
    CHANGED,
    EX_NOINPUT,
    EX_UNAVAILABLE,
    MARK,
    UNCHANGED,
    changed_marker,
    fail,
    key_values,
    marker,
    q,
    script,
    sections,
    to_float,
    to_int,
)

ACTIONS = ("start", "stop", "restart", "reload", "enable", "disable")
#: exists iff systemd is PID 1 (what sd_booted(3) checks)
SYSTEMD_RUN_DIR = "/run/systemd/system"
_NAME = re.compile(r"[A-Za-z0-9@_.:\\-]+")


class ServiceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A service's state on one host (a row in a polars table)."""

    name: str
    init: str  # systemd | openrc | sysv
    active: bool
    state: str  # systemd ActiveState (active, failed, …), OpenRC's (started, stopped, …),
    # SysV: running | stopped | dead (LSB status 1, 2: a stale pidfile or lock) | unknown
    sub: str = ""  # systemd SubState (running, exited, dead, …)
    enabled: bool | None = None  # starts at boot; None when that does not apply (static)
    unit_file_state: str = ""
    pid: int | None = None
    since: float | None = None  # epoch seconds the service last became active
    description: str = ""


def _preamble(name: str) -> str:
    if not _NAME.fullmatch(name) or name.startswith("-"):
        raise ValueError(f"not a service name: {name!r}")
    not_running = (f"systemd is not running on this host (no {SYSTEMD_RUN_DIR}) "
                   "and OpenRC is not installed")
    return script(
        f"svc={q(name)}",
        f"if [ -d {SYSTEMD_RUN_DIR} ]; then init=systemd",
        "elif command -v rc-service >/dev/null 2>&1; then init=openrc",
        'elif [ -x "/etc/init.d/$svc" ]; then init=sysv',
        f"else {fail(EX_UNAVAILABLE, not_running)}",
        "fi",
        marker("init"),
        'echo "$init"',
        'if [ "$init" = systemd ]; then',
        '  if [ "$(systemctl show -p LoadState --value -- "$svc")" = not-found ]; then',
        f"    {fail(EX_NOINPUT, f'service {name} not found (systemd)')}",
        "  fi",
        'elif [ "$init" = openrc ] && [ ! -x "/etc/init.d/$svc" ]; then',
        f"  {fail(EX_NOINPUT, f'service {name} not found (OpenRC: no /etc/init.d/{name})')}",
        "fi",
    )


_SYSTEMD = {
    "start": ('systemctl is-active --quiet -- "$svc"', 'systemctl start -- "$svc"'),
    "stop": ('! systemctl is-active --quiet -- "$svc"', 'systemctl stop -- "$svc"'),
    "enable": ('systemctl is-enabled --quiet -- "$svc"', 'systemctl enable -- "$svc"'),
    "disable": ('! systemctl is-enabled --quiet -- "$svc"', 'systemctl disable -- "$svc"'),
    "restart": ("false", 'systemctl restart -- "$svc"'),
    "reload": ("false", 'systemctl reload -- "$svc"'),
}

_OPENRC = {
    "start": ('rc-service "$svc" status >/dev/null 2>&1', 'rc-service "$svc" start'),
    "stop": ('! rc-service "$svc" status >/dev/null 2>&1', 'rc-service "$svc" stop'),
    "enable": ('[ -e "/etc/runlevels/default/$svc" ]', 'rc-update add "$svc" default'),
    "disable": ('[ ! -e "/etc/runlevels/default/$svc" ]', 'rc-update del "$svc" default'),
    "restart": ("false", 'rc-service "$svc" restart'),
    "reload": ("false", 'rc-service "$svc" reload'),
}


#: SysV: the init script itself (what `service NAME VERB` runs), LSB exit codes
_SYSV_ENABLED = 'ls /etc/rc[2345].d/S[0-9][0-9]"$svc" >/dev/null 2>&1'
_SYSV = {
    "start": ('"/etc/init.d/$svc" status >/dev/null 2>&1', '"/etc/init.d/$svc" start'),
    "stop": ('! "/etc/init.d/$svc" status >/dev/null 2>&1', '"/etc/init.d/$svc" stop'),
    "enable": (_SYSV_ENABLED, 'update-rc.d "$svc" defaults >/dev/null && '
               'update-rc.d "$svc" enable'),
    "disable": (f"! {_SYSV_ENABLED}", 'update-rc.d "$svc" disable'),
    "restart": ("false", '"/etc/init.d/$svc" restart'),
    "reload": ("false", '"/etc/init.d/$svc" reload'),
}


def _by_init(systemd: str, openrc: str, sysv: str) -> str:
    """One line per init system, chosen by the preamble's $init."""
    return script(
        'if [ "$init" = systemd ]; then',
        f"  {systemd}",
        'elif [ "$init" = openrc ]; then',
        f"  {openrc}",
        "else",
        f"  {sysv}",
        "fi",
    )


def _act(init_cmds: tuple[str, str]) -> str:
    done, do = init_cmds
    if done == "false":
        return f"{do} && {CHANGED}"
    return f"if {done}; then {UNCHANGED}; else {do} && {CHANGED}; fi"


def action(verb: str, name: str, *, sudo: bool = False, become_user: str | None = None) -> Op:
    """Run `verb` (start, stop, restart, reload, enable, disable) on service `name`."""
    if verb not in ACTIONS:
        raise ValueError(f"unknown service action {verb!r}; expected one of {ACTIONS}")
    cmd = script(
        _preamble(name),
        _by_init(_act(_SYSTEMD[verb]), _act(_OPENRC[verb]), _act(_SYSV[verb])),
    )
    probe = script(
        _preamble(name),
        _by_init(_probe(_SYSTEMD[verb]), _probe(_OPENRC[verb]), _probe(_SYSV[verb])),
    )

    def answer(h: object, out: str, diff: bool) -> CheckReport:
        if "done" in sections(out):
            return CheckReport(changes=False)
        return CheckReport(changes=True, diff=f"would {verb} {name} ({_parse_init(out)})")

    return Op(name=f"service.{verb}", command=cmd, sudo=sudo, become_user=become_user,
              changed=changed_marker, parse=_parse_init,
              check=Check(probe=lambda diff: Op(name=f"service.{verb}", command=probe),
                          answer=answer))


def _probe(init_cmds: tuple[str, str]) -> str:
    """The read-only half of an action: is it already done? (restart, reload: never)"""
    done, _ = init_cmds
    return f'if {done}; then echo "{MARK} done"; else echo "{MARK} todo"; fi'


def start(name: str, *, sudo: bool = False, become_user: str | None = None) -> Op:
    """Start `name` unless it is already running."""
    return action("start", name, sudo=sudo, become_user=become_user)


def stop(name: str, *, sudo: bool = False, become_user: str | None = None) -> Op:
    """Stop `name` unless it is already stopped."""
    return action("stop", name, sudo=sudo, become_user=become_user)


def restart(name: str, *, sudo: bool = False, become_user: str | None = None) -> Op:
    """Restart `name` (always a change)."""
    return action("restart", name, sudo=sudo, become_user=become_user)


def reload(name: str, *, sudo: bool = False, become_user: str | None = None) -> Op:
    """Reload `name`'s configuration (always a change)."""
    return action("reload", name, sudo=sudo, become_user=become_user)


def enable(name: str, *, sudo: bool = False, become_user: str | None = None) -> Op:
    """Make `name` start at boot unless it already does."""
    return action("enable", name, sudo=sudo, become_user=become_user)


def disable(name: str, *, sudo: bool = False, become_user: str | None = None) -> Op:
    """Stop `name` starting at boot unless it already does not."""
    return action("disable", name, sudo=sudo, become_user=become_user)


def status(name: str, *, sudo: bool = False, become_user: str | None = None) -> Op:
    """The state of `name`: `data` is a ServiceStatus (a query: never changes the host)."""
    cmd = script(
        _preamble(name),
        marker("status"),
        'if [ "$init" = systemd ]; then',
        "  systemctl show -p Id,Description,LoadState,ActiveState,SubState,UnitFileState"
        ',MainPID,ActiveEnterTimestamp -- "$svc"',
        '  ts=$(systemctl show -p ActiveEnterTimestamp --value -- "$svc")',
        '  [ -n "$ts" ] && echo "SinceEpoch=$(date -d "$ts" +%s 2>/dev/null)"',
        'elif [ "$init" = openrc ]; then',
        '  echo "Id=$svc"',
        '  echo "OpenRC=$(rc-service "$svc" status 2>&1 | tail -n 1)"',
        '  if [ -e "/etc/runlevels/default/$svc" ]; then echo Enabled=yes;'
        " else echo Enabled=no; fi",
        '  [ -r "/run/$svc.pid" ] && echo "MainPID=$(cat "/run/$svc.pid")"',
        "else",
        '  echo "Id=$svc"',
        '  "/etc/init.d/$svc" status >/dev/null 2>&1; echo "SysV=$?"',
        f"  if {_SYSV_ENABLED}; then echo Enabled=yes; else echo Enabled=no; fi",
        '  [ -r "/run/$svc.pid" ] && echo "MainPID=$(cat "/run/$svc.pid")"',
        "fi",
        "exit 0",
    )
    return Op(name="service.status", command=cmd, sudo=sudo, become_user=become_user,
              parse=lambda out: parse_status(name, out), check=QUERY)


def _parse_init(out: str) -> str:
    return sections(out).get("init", "").strip()


_ENABLED = {"enabled": True, "enabled-runtime": True, "linked": True, "linked-runtime": True,
            "alias": True, "disabled": False, "masked": False, "masked-runtime": False}


#: LSB `status` exit codes of an init script
_LSB = {0: "running", 1: "dead", 2: "dead", 3: "stopped"}


def parse_status(name: str, out: str) -> ServiceStatus:
    """A status script's output into a ServiceStatus."""
    parts = sections(out)
    init = parts.get("init", "").strip()
    kv = key_values(parts.get("status", ""))
    pid = to_int(kv.get("MainPID"))
    pid = pid or None  # systemd reports 0 when nothing runs
    if init == "sysv":  # LSB init-script status codes
        code = to_int(kv.get("SysV"))
        state = _LSB.get(code if code is not None else -1, "unknown")
        return ServiceStatus(name=name, init=init, active=code == 0, state=state,
                             enabled=kv.get("Enabled") == "yes",
                             pid=pid if code == 0 else None)
    if init == "openrc":
        line = kv.get("OpenRC", "")
        m = re.search(r"status:\s*(\S+)", line)
        state = m.group(1) if m else (line.strip() or "unknown")
        return ServiceStatus(name=name, init=init, active=state == "started", state=state,
                             enabled=kv.get("Enabled") == "yes", pid=pid)
    state = kv.get("ActiveState", "unknown")
    since = to_float(kv.get("SinceEpoch"))
    ufs = kv.get("UnitFileState", "")
    return ServiceStatus(
        name=kv.get("Id", name), init=init or "systemd", active=state in ("active", "reloading"),
        state=state, sub=kv.get("SubState", ""), enabled=_ENABLED.get(ufs),
        unit_file_state=ufs, pid=pid, since=since if since else None,
        description=kv.get("Description", ""),
    )
