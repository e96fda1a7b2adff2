"""Machines settings: hypervisors by name, presets, timeouts and per-operation bounds.

Read from the `[hypervisors.*]`, `[presets.*]` and `[machines]` tables of config.toml,
so no timeout or limit is a literal in the code that uses it.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from reops.core.settings import config_path, home
from reops.store.model import MachinesError, ProviderKind


class HypervisorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One configured hypervisor: a libvirt URI (or a rack of physical machines)."""

    name: str
    uri: str = ""
    kind: ProviderKind = "libvirt"
    pool: str = "default"
    network: str = "default"
    broadcast: str = "255.255.255.255:9"  # physical: Wake-on-LAN destination


class MachinesSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Timeouts (seconds) and bounds for jobs on machines."""

    stop_timeout: float = 60.0  # graceful shutdown before destroy
    ip_timeout: float = 120.0  # waiting for a started machine's address
    connect_timeout: float = 30.0  # opening a hypervisor connection
    concurrency: dict[str, int] = msgspec.field(
        default_factory=lambda: {"create": 4, "reload": 2, "sync": 1}
    )
    default_concurrency: int = 8
    default_hypervisor: str | None = None
    #: a job a crash interrupted is retried only if it is safe to repeat and began this recently
    retry_interrupted_within: float = 600.0
    #: seconds a job may run before it fails as "timeout" (a hung libvirtd must not hold it)
    deadlines: dict[str, float] = msgspec.field(default_factory=dict)

    def limit(self, op: str) -> int:
        return max(1, self.concurrency.get(op, self.default_concurrency))

    def deadline(self, op: str) -> float:
        """The configured deadline of `op`, else one longer than the waits the op makes."""
        if op in self.deadlines:
            return self.deadlines[op]
        boot = self.ip_timeout + 180.0  # define, boot, then wait for an address
        return {"create": boot, "reload": boot, "start": boot,
                "stop": self.stop_timeout + 120.0, "clear": 60.0,
                "provision": 3600.0}.get(op, 600.0)


class MachinesConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the machines layer reads from config.toml."""

    hypervisors: dict[str, HypervisorConfig]
    presets: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    settings: MachinesSettings = msgspec.field(default_factory=MachinesSettings)

    def hypervisor(self, name: str | None) -> HypervisorConfig:
        """The named hypervisor, or the default one; a clear error when unknown."""
        name = name or self.settings.default_hypervisor or self.first("libvirt") or next(
            iter(self.hypervisors), None)
        if name is None:
            raise MachinesError("no hypervisor configured: add [hypervisors.NAME] uri = ...")
        try:
            return self.hypervisors[name]
        except KeyError:
            known = ", ".join(sorted(self.hypervisors)) or "none"
            raise MachinesError(f"unknown hypervisor {name!r} (configured: {known})") from None

    def first(self, kind: ProviderKind) -> str | None:
        """The first configured hypervisor of `kind` (the default for what needs that kind:
        VMs go to a libvirt one, `systems register` to a physical rack)."""
        return next((n for n, c in self.hypervisors.items() if c.kind == kind), None)


def embedded_uri(root: Path | None = None) -> str:
    """qemu:///embed under reops' home where QEMU is installed, else libvirt's test driver."""
    if shutil.which("qemu-system-x86_64"):
        return f"qemu:///embed?root={root or home() / 'qemu'}"
    return "test:///default"


def load_machines_config(path: Path | None = None) -> MachinesConfig:
    """The machines tables of config.toml; `local` (embedded) unless a libvirt one is set."""
    p = path or config_path()
    data: dict[str, Any] = {}
    if p.exists():
        with p.open("rb") as f:
            data = tomllib.load(f)
    try:
        hyps = {
            name: msgspec.convert({"name": name, **table}, HypervisorConfig)
            for name, table in data.get("hypervisors", {}).items()
        }
        settings = msgspec.convert(data.get("machines", {}), MachinesSettings)
    except msgspec.ValidationError as e:
        raise MachinesError(f"{p}: {e}") from None
    if not any(c.kind == "libvirt" for c in hyps.values()) and "local" not in hyps:
        # a rack of physical machines does not take away the embedded default for VMs
        hyps["local"] = HypervisorConfig(name="local", uri=embedded_uri())
    return MachinesConfig(hypervisors=hyps, presets=data.get("presets", {}), settings=settings)
