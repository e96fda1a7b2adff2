"""Settings: every timeout, bound and policy comes from here, never from a literal in code.

Values come from, in order: defaults below, `~/.reops/config.toml` (or $REOPS_CONFIG),
`REOPS_<NAME>` environment variables, then command-line flags.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

HostKeyPolicy = Literal["strict", "accept-new", "off"]


def home() -> Path:
    """reops' own directory (keys, store, sockets): $REOPS_HOME or ~/.reops."""
    return Path(os.environ.get("REOPS_HOME", Path.home() / ".reops")).expanduser()


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach hosts: bounds, timeouts and the host-key policy."""

    forks: int = 256  # hosts worked on at once; sized for hundreds of hosts
    connect_timeout: float = 10.0  # seconds to connect + authenticate
    command_timeout: float | None = None  # seconds per command; None waits forever
    idle_timeout: float = 60.0  # seconds an unused SSH connection stays open
    host_key_checking: HostKeyPolicy = "strict"
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts, as ssh does
    user: str | None = None
    key: str | None = None  # private key for hosts without their own (default: ssh's)
    sudo: bool = False
    keepalive_interval: float = 15.0  # SSH keepalives, so dead peers are noticed
    # captured output per host per stream: the first and last max_output/2 bytes are kept,
    # the middle is cut with a marker (a host printing gigabytes costs the controller ~this)
    max_output: int = 2 * 1024 * 1024
    output_spill: str | None = None  # directory for the full output of cut streams
    max_line: int = 64 * 1024  # streamed Lines longer than this arrive in pieces

    def with_(self, **changes: Any) -> Settings:
        clean = {k: v for k, v in changes.items() if v is not None}
        return msgspec.structs.replace(self, **clean)


def config_path() -> Path:
    return Path(os.environ.get("REOPS_CONFIG", home() / "config.toml")).expanduser()


S = TypeVar("S", bound=msgspec.Struct)


def load_table(cls: type[S], table: str, env_prefix: str, path: Path | None = None,
               lists: tuple[str, ...] = ()) -> S:
    """A settings Struct from a config.toml table, then `<env_prefix><FIELD>` variables
    (comma-separated for the fields in `lists`); errors name the file and table."""
    data: dict[str, Any] = {}
    p = path or config_path()
    if p.exists():
        with p.open("rb") as f:
            data.update(tomllib.load(f).get(table, {}))
    for name in cls.__struct_fields__:
        env = os.environ.get(f"{env_prefix}{name.upper()}")
        if env is not None:
            data[name] = tuple(x for x in env.split(",") if x) if name in lists else env
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as e:
        raise ValueError(f"{p}: [{table}] {e}") from None


def load_settings(path: Path | None = None) -> Settings:
    """Settings from the config file's [ssh] table and REOPS_* variables."""
    return load_table(Settings, "ssh", "REOPS_", path)
