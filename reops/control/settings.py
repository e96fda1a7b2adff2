"""The hub's settings: endpoints, key store, heartbeat policy, call bounds.

Values come from defaults below, the `[hub]` table of ~/.reops/config.toml (or
$REOPS_CONFIG), then `REOPS_HUB_<NAME>` environment variables, then command-line flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec

from reops.core.settings import home, load_table

DEFAULT_PORT = 7720


class HubSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the hub listens, where its keys live and how it judges agents alive."""

    # where agents connect (CurveZMQ): loopback unless told otherwise, so a new hub is not
    # reachable from the network (and from its pending-key queue) by accident
    bind: str = f"tcp://127.0.0.1:{DEFAULT_PORT}"
    control: str = ""  # local control socket path; default <home>/run/hub.sock
    keys_dir: str = ""  # key store; default <home>/keys
    heartbeat_s: float = 5.0  # heartbeat interval, both ways (agents adopt it)
    misses: int = 3  # missed heartbeats before an agent is lost
    auto_accept: bool = False  # accept every new agent key (labs only)
    call_grace_s: float = 5.0  # wait beyond a call's own timeout before failing it here
    max_calls: int = 100_000  # in-flight calls; more are refused, not queued without bound
    call_timeout_s: float = 3600.0  # deadline of a call given none (none waits forever)
    max_message: int = 4 * 1024 * 1024  # largest agent frame accepted (results are split)
    # pending keys kept; new claims beyond are refused (0: keys only by `reops keys` / deploy)
    max_pending: Annotated[int, msgspec.Meta(ge=0)] = 1000
    # new pending keys recorded a minute (bursts up to that); more are refused, not queued
    pending_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 120
    services: tuple[str, ...] = ()  # "module:attach" functions run with the Controller
    # this controller's name among those sharing a store (claims, heartbeats, `reops jobs
    # ls --controller`); default: the host name. Give each controller on a host its own.
    name: str = ""
    # the bus (hub/bus.py): publishers connect to bus_in (XSUB), subscribers to bus_out
    # (XPUB), both CurveZMQ with the hub's key; default: `bind`'s address, its port + 1 / + 2
    bus_in: str = ""
    bus_out: str = ""
    # messages queued per subscriber (and per publisher) before newer ones are dropped
    bus_hwm: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    bus_max_message: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024  # larger: dropped

    def with_(self, **changes: Any) -> HubSettings:
        clean = {k: v for k, v in changes.items() if v is not None}
        return msgspec.structs.replace(self, **clean)

    @property
    def controller_name(self) -> str:
        """`name`, else the host name: who holds a claim or beats in a shared store."""
        if self.name:
            return self.name
        import socket  # (here: a one-shot client never needs the hub's name)

        return socket.gethostname()

    @property
    def control_path(self) -> Path:
        return Path(self.control).expanduser() if self.control else home() / "run" / "hub.sock"

    @property
    def keys_path(self) -> Path:
        return Path(self.keys_dir).expanduser() if self.keys_dir else home() / "keys"

    @property
    def bus_in_endpoint(self) -> str:
        """Where publishers connect: bus_in, else next to the agents' port (+1)."""
        return self.bus_in or _next_to(self.bind, 1)

    @property
    def bus_out_endpoint(self) -> str:
        """Where subscribers connect: bus_out, else next to the agents' port (+2)."""
        return self.bus_out or _next_to(self.bind, 2)

    @property
    def lost_after_s(self) -> float:
        """Silence after which an agent (or the hub, for an agent) counts as gone."""
        return self.heartbeat_s * self.misses


def _next_to(endpoint: str, offset: int) -> str:
    """`endpoint` with its port moved by `offset` (a wildcard port stays a wildcard)."""
    base, _, port = endpoint.rpartition(":")
    return f"{base}:{int(port) + offset}" if port.isdigit() else f"{base}:*"


def load_hub_settings(path: Path | None = None) -> HubSettings:
    """HubSettings from the config file's [hub] table and REOPS_HUB_* variables."""
    return load_table(HubSettings, "hub", "REOPS_HUB_", path, lists=("services",))
