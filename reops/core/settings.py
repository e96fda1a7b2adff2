"""Settings: every timeout, bound and policy comes from here, never from a literal in code.

Values come from, in order: defaults below, `~/.reops/config.toml` (or $REOPS_CONFIG),
`REOPS_<NAME>` environment variables, then command-line flags.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from reops.core.secrets import Secret, decode

HostKeyPolicy = Literal["strict", "accept-new", "off"]
#: a count of at least one (0 would wait forever: nothing may run)
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
#: seconds that must pass before something happens (0 or less makes no sense)
Seconds = Annotated[float, msgspec.Meta(gt=0)]
#: seconds where 0 turns the feature off
SecondsOrOff = Annotated[float, msgspec.Meta(ge=0)]


class ConfigError(ValueError):
    """A setting out of range or of the wrong type; the message names where it came from."""


def home() -> Path:
    """reops' own directory (keys, store, sockets): $REOPS_HOME or ~/.reops.

    Made private (0700) here, before anything creates a file or a sub-directory in it (a
    `mkdir(parents=True)` of home/keys would otherwise leave home itself 0755). An existing
    one open to group or others is left as it is, with a warning once.
    """
    path = _home_path()
    if path not in _homes_checked:
        _homes_checked.add(path)
        _make_private(path)
    return path


_homes_checked: set[Path] = set()


def _home_path() -> Path:
    """Where home is, without making it (finding config.toml must not create anything)."""
    return Path(os.environ.get("REOPS_HOME", Path.home() / ".reops")).expanduser()


def _make_private(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
        return
    except FileExistsError:
        pass
    except OSError:
        return  # not ours to make (read-only, no permission): whoever writes there says so
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if path.is_dir() and mode & 0o077:
        sys.stderr.write(f"reops: warning: {path} is open to group/others (mode {mode:04o}); "
                         f"it holds keys and state: chmod 700 {path}\n")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach hosts: bounds, timeouts and the host-key policy."""

    forks: AtLeastOne = 256  # hosts worked on at once; sized for hundreds of hosts
    connect_timeout: Seconds = 10.0  # seconds to connect + authenticate
    command_timeout: Seconds | None = None  # seconds per command; None waits forever
    idle_timeout: SecondsOrOff = 60.0  # seconds an unused SSH connection stays open
    # None: ssh_config's StrictHostKeyChecking, else strict; given, it beats ssh_config
    host_key_checking: HostKeyPolicy | None = None
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts, as ssh does
    user: str | None = None
    key: str | None = None  # private key for hosts without their own (default: ssh's)
    # OpenSSH client config: true reads ~/.ssh/config and /etc/ssh/ssh_config as ssh does,
    # a path reads only that file (ssh -F), false reads none
    ssh_config: bool | str = True
    sudo: bool = False
    # fed to `sudo -S` on stdin when an op runs with sudo (never argv, logs or output);
    # None: `sudo -n` (passwordless). $REOPS_BECOME_PASS, --become-pass-file, --ask-become-pass
    become_pass: Secret | None = None
    keepalive_interval: SecondsOrOff = 15.0  # SSH keepalives, so dead peers are noticed
    # captured output per host per stream: the first and last max_output/2 bytes are kept,
    # the middle is cut with a marker (a host printing gigabytes costs the controller ~this)
    max_output: int = 2 * 1024 * 1024
    output_spill: str | None = None  # directory for the full output of cut streams
    max_line: int = 64 * 1024  # streamed Lines longer than this arrive in pieces

    def with_(self, **changes: Any) -> Settings:
        """A copy with `changes` (None means unchanged), checked like loaded settings."""
        clean = {k: v for k, v in changes.items() if v is not None}
        new = msgspec.structs.replace(self, **clean)
        origins = {k: f"{k}={v!r}" for k, v in clean.items()}
        return _convert(msgspec.structs.asdict(new), type(new), origins, "settings")


def config_path() -> Path:
    return Path(os.environ.get("REOPS_CONFIG", _home_path() / "config.toml")).expanduser()


S = TypeVar("S", bound=msgspec.Struct)


def load_table(cls: type[S], table: str, env_prefix: str, path: Path | None = None,
               lists: tuple[str, ...] = ()) -> S:
    """A settings Struct from a config.toml table, then `<env_prefix><FIELD>` variables
    (comma-separated for the fields in `lists`); errors name the file and table."""
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}  # field -> where its value came from, for error messages
    p = path or config_path()
    if p.exists():
        try:
            with p.open("rb") as f:
                section = tomllib.load(f).get(table, {})
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        if not isinstance(section, dict):
            raise ConfigError(f"{p}: [{table}] must be a table")
        data.update(section)
        origins.update({k: f"{p}: [{table}] {k} = {v!r}" for k, v in section.items()})
    for name in cls.__struct_fields__:
        var = f"{env_prefix}{name.upper()}"
        env = os.environ.get(var)
        if env is not None:
            data[name] = tuple(x for x in env.split(",") if x) if name in lists else env
            origins[name] = f"{var}={env!r}"
    return _convert(data, cls, origins, f"{p}: [{table}]")


#: fields whose values no error message may show
SECRET_FIELDS = ("become_pass",)


def _convert(data: dict[str, Any], cls: type[S], origins: dict[str, str], where: str) -> S:
    """`data` as a `cls`; a bad value raises a one-line ConfigError naming its source
    (variable, file and key, or argument) and what is accepted."""
    try:
        return msgspec.convert(data, cls, strict=False, dec_hook=decode)
    except msgspec.ValidationError as e:
        text = str(e)
        m = re.search(r" - at `\$\.(\w+)`", text)
        if m is None:
            raise ConfigError(f"{where}: {text}") from None
        field = m.group(1)
        wanted = text[:m.start()]
        wanted = re.sub(r"^Expected", "must be", wanted) if wanted else "is not valid"
        if wanted.startswith("Invalid enum value"):
            choices = typing.get_args(typing.get_type_hints(cls).get(field))
            wanted = "must be one of " + ", ".join(map(repr, choices))
        source = origins.get(field, f"{where} {field}")
        if field in SECRET_FIELDS:  # name where it came from, never the value
            source = source.split("=", 1)[0].rstrip()
        raise ConfigError(f"{source}: {field} {wanted}; fix or unset it") from None


def load_settings(path: Path | None = None) -> Settings:
    """Settings from the config file's [ssh] table and REOPS_* variables."""
    return load_table(Settings, "ssh", "REOPS_", path)


#: file descriptors kept free for the process itself (event loop, stdio, logs, libraries)
RESERVED_FDS = 64
#: descriptors one host being worked on may hold: its connection, and one to spare
FDS_PER_FORK = 2


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one: a fleet needs a socket per host, and
    the usual soft 1024 is far below what the hard limit allows. Returns the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel caps NOFILE at fs.nr_open anyway
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = soft
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def fd_bounded(settings: Settings) -> tuple[Settings, str | None]:
    """`settings` with `forks` lowered to what the open-file limit allows, and a note
    saying so (None when nothing changed): past it, connections fail with EMFILE."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return settings, None
    most = max(1, (soft - RESERVED_FDS) // FDS_PER_FORK)
    if settings.forks <= most:
        return settings, None
    return settings.with_(forks=most), (
        f"forks {settings.forks} lowered to {most}: the open-file limit (ulimit -n) is {soft}; "
        "raise its hard limit to work on more hosts at once")
