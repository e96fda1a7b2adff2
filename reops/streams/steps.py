"""The user-facing operations: Op descriptions from `reops.ops`, made Hosts-first.

`exec_(hosts, "uname -a")` returns a Stream; `then(exec_, "uname -r")` chains it. Every
step takes the Op's own arguments plus `via=`, `settings=`, `lines=`, `dry_run=`:

    run(mkdir(hosts, "/srv/app", mode=0o755) | then(template, "app.conf.tmpl", "/srv/app/c"))
    run(pkg.install(hosts, "nginx", sudo=True))
    run(service.status(hosts, "nginx"))

Packages and services are namespaces (`pkg.install`, `service.restart`) because their verbs
(install, start, status, …) mean nothing on their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reops.core.model import Host, Hosts
from reops.ops import facts as _facts
from reops.ops import files, shell
from reops.ops import metrics as _metrics
from reops.ops import pkg as _pkg
from reops.ops import power as _power
from reops.ops import security as _security
from reops.ops import service as _service
from reops.streams.collect import collect, to_metrics_table, windows
from reops.streams.source import StepFn, step
from reops.streams.stream import Stream
from reops.streams.waits import reboot, wait_back

# --- shell and transfers ---
exec_ = step(shell.exec_)
sh = exec_
ls = step(shell.ls)
upload = step(files.upload)
download = step(files.download)
sync = step(files.sync)

# --- files on the host ---
mkdir = step(files.mkdir)
rm = step(files.rm)
cp = step(files.cp)
grep = step(files.grep)
extract = step(files.extract)
line_in_file = step(files.line_in_file)
template = step(files.template)

# --- what a host is and how it is doing ---
facts = step(_facts.facts)
metrics = step(_metrics.metrics)

# --- security posture ---
listening = step(_security.listening)
ssh_sessions = step(_security.ssh_sessions)
firewall = step(_security.firewall)
security_updates = step(_security.security_updates)

# --- power (reboot waits until the host is back: see reops.streams.waits) ---
shutdown = step(_power.shutdown)
boot_id = step(_power.boot_id)


@dataclass(frozen=True, repr=False)
class PkgSteps:
    """Package steps: `pkg.install(hosts, "nginx")`; the manager is detected per host."""

    update: StepFn
    upgrade: StepFn
    install: StepFn
    remove: StepFn
    installed: StepFn

    def __repr__(self) -> str:
        return "<reops pkg steps: update upgrade install remove installed>"


@dataclass(frozen=True, repr=False)
class ServiceSteps:
    """Service steps: `service.restart(hosts, "nginx")`; systemd or OpenRC per host."""

    start: StepFn
    stop: StepFn
    restart: StepFn
    reload: StepFn
    enable: StepFn
    disable: StepFn
    status: StepFn
    action: StepFn

    def __repr__(self) -> str:
        return "<reops service steps: start stop restart reload enable disable status>"


pkg = PkgSteps(update=step(_pkg.update), upgrade=step(_pkg.upgrade),
               install=step(_pkg.install), remove=step(_pkg.remove),
               installed=step(_pkg.installed))

service = ServiceSteps(start=step(_service.start), stop=step(_service.stop),
                       restart=step(_service.restart), reload=step(_service.reload),
                       enable=step(_service.enable), disable=step(_service.disable),
                       status=step(_service.status), action=step(_service.action))

def check(step_fn: StepFn, hosts: Hosts | Host | Iterable[Host], *args: Any,
          diff: bool = True, **kwargs: Any) -> Stream:
    """Ask each host whether `step_fn(hosts, *args, **kwargs)` WOULD change it, running
    only read-only probes (`--check`): `run(check(template, hosts, "app.tmpl", "/etc/app"))`.
    `diff=False`: compare files by sha256 only (no content leaves the hosts)."""
    return step_fn(hosts, *args, check=True, diff=diff, **kwargs)


__all__ = [
    "boot_id", "check", "collect", "cp", "download", "exec_", "extract", "facts", "firewall",
    "grep", "line_in_file", "listening", "ls", "metrics", "mkdir", "pkg", "reboot", "rm",
    "security_updates", "service", "sh", "shutdown", "ssh_sessions", "sync", "template",
    "to_metrics_table", "upload", "wait_back", "windows",
]
