"""Where and how to connect to a host: inventory > reops settings > ssh_config > defaults.

A `Target` is everything that shapes one SSH connection (resolved address and port, user,
identities, known_hosts files and policy, the bastion it goes through, a ProxyCommand). It
is the pool key, so two hosts share a connection only when nothing about it differs, and a
bastion's Target is the key its one shared connection is pooled under. `Targets` resolves
and caches them per fleet: the ssh_config files are read once per mtime and each host is
evaluated once, so a warm run costs a stat per config file and a dict lookup per host.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from typing import Any

import msgspec

from reops.core.model import Host
from reops.core.settings import HostKeyPolicy, Settings
from reops.transports.ssh.sshconfig import NOTHING, SshConfig, SshConfigError, config_paths

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
#: how deep bastions may nest (each with its own jump) before it is called a loop
MAX_JUMPS = 8
#: ssh's StrictHostKeyChecking values as reops policies (`no`: changed keys too, so off)
STRICT = {"yes": "strict", "ask": "strict", "accept-new": "accept-new", "no": "off",
          "off": "off", "true": "strict", "false": "off"}


class TargetError(ValueError):
    """A host whose connection settings cannot be resolved (bad ssh_config, jump loop)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One SSH connection's settings; equal Targets share a pooled connection."""

    address: str
    port: int
    user: str
    keys: tuple[str, ...]  # identity files; () = asyncssh's defaults (~/.ssh/id_*)
    certs: tuple[str, ...]  # CertificateFile; `KEY-cert.pub` beside a key is found anyway
    identities_only: bool  # only `keys`: no agent
    agent: str | None  # IdentityAgent; None = $SSH_AUTH_SOCK
    known_hosts: tuple[str, ...]
    policy: HostKeyPolicy
    via: Target | None  # the last bastion (itself reached through its own `via`)
    proxy_command: str | None
    hash_known_hosts: bool = False  # accept-new records `|1|salt|hash` entries
    label: str = field(default="", compare=False)  # the host's name, for messages

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def chain(self) -> str:
        """` via bastion b1 -> b2`, or "" when direct, for messages."""
        hops: list[str] = []
        via = self.via
        while via is not None:
            hops.insert(0, via.label or via.endpoint)
            via = via.via
        return f" via bastion {' -> '.join(hops)}" if hops else ""


def local_user() -> str:
    return getpass.getuser()


class Targets:
    """Targets of one executor, cached per (host, settings) and ssh_config version."""

    def __init__(self) -> None:
        self._configs: dict[tuple[str, ...], SshConfig] = {}
        self._cache: dict[tuple[Any, ...], Target] = {}

    def config(self, settings: Settings) -> SshConfig | None:
        """The ssh_config files `settings.ssh_config` names, parsed once per fleet."""
        paths = tuple(config_paths(settings.ssh_config))
        if not paths:
            return None
        cfg = self._configs.get(paths)
        if cfg is None:
            cfg = self._configs[paths] = SshConfig(paths, required=settings.ssh_config
                                                   is not True)
        return cfg

    def get(self, host: Host, settings: Settings) -> Target:
        """`host`'s Target under `settings`; raises TargetError with one clear line."""
        cfg = self.config(settings)
        if cfg is not None and cfg.changed():
            self._cache.clear()
        key = (host.name, host.address, host.port, host.user, host.key, host.known_hosts,
               host.jump, host.implicit, settings.user, settings.key, settings.known_hosts,
               settings.host_key_checking, settings.ssh_config)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._resolve(host, settings, cfg, ())
        return hit

    def _resolve(self, host: Host, settings: Settings, cfg: SshConfig | None,
                 trail: tuple[str, ...]) -> Target:
        port_given = None if "port" in host.implicit else host.port
        try:
            hc = (NOTHING if cfg is None else
                  cfg.lookup(host.address, host.user or settings.user, port_given))
        except SshConfigError as e:
            raise TargetError(str(e)) from None
        address = hc.hostname if hc.hostname and "address" in host.implicit else host.address
        port = hc.port if hc.port and port_given is None else host.port
        key = host.key or settings.key
        if key:
            keys: tuple[str, ...] = (key,)
            certs: tuple[str, ...] = ()
            only = True
        else:
            keys = tuple(p for p in hc.identity_files if os.path.exists(p))  # as ssh: skip
            certs = tuple(p for p in hc.certificate_files if os.path.exists(p))
            only = bool(hc.identities_only) and bool(keys)
        known = host.known_hosts or settings.known_hosts
        # flags > ssh_config > strict: only an unset flag lets ssh_config decide
        policy: HostKeyPolicy = settings.host_key_checking or STRICT.get(  # type: ignore[assignment]
            hc.strict_host_key_checking or "yes", "strict")
        via = None
        proxy = None
        hops = host.jump if host.jump is not None else (
            None if hc.proxy_jump is None else tuple(_hop_host(s) for s in hc.proxy_jump))
        hops = tuple(h for h in hops or () if h.address not in (host.name, host.address))
        if hops:
            if len(trail) >= MAX_JUMPS or host.name in trail:
                loop = " -> ".join((*trail, host.name))
                raise TargetError(f"{trail[0] if trail else host.name}: jump chain loops or "
                                  f"is deeper than {MAX_JUMPS}: {loop} (give the bastion "
                                  "`jump = \"none\"` or `ProxyJump none`)")
            last = hops[-1]
            if len(hops) > 1:
                last = msgspec.structs.replace(last, jump=hops[:-1])
            via = self._resolve(last, settings, cfg, (*trail, host.name))
        elif host.jump is None and hc.proxy_command:
            proxy = hc.proxy_command
        return Target(
            address=address, port=port,
            user=host.user or settings.user or hc.user or local_user(),
            keys=keys, certs=certs, identities_only=only, agent=hc.identity_agent,
            known_hosts=(known,) if known else (hc.known_hosts or (DEFAULT_KNOWN_HOSTS,)),
            policy=policy, via=via, proxy_command=proxy,
            hash_known_hosts=bool(hc.hash_known_hosts), label=host.name,
        )


def _hop_host(spec: str) -> Host:
    """A ProxyJump hop `[user@]host[:port]` as a Host ssh_config resolves like any other."""
    user, _, rest = spec.rpartition("@")
    address, port = rest, None
    if rest.startswith("["):
        address, _, tail = rest[1:].partition("]")
        port = int(tail[1:]) if tail.startswith(":") and tail[1:].isdigit() else None
    elif rest.count(":") == 1:
        address, _, p = rest.partition(":")
        port = int(p) if p.isdigit() else None
    implicit = {"address"} | ({"port"} if port is None else set())
    return Host(name=spec, address=address, port=port or 22, user=user or None,
                implicit=frozenset(implicit))
