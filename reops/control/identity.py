"""Is the agent connected under a host's name really that inventory host?

Agents name themselves; two inventories (two labs, staging and production) can both have
a `db1`. A name alone must never send a command to another machine, so the agent has to
prove it: the key pinned in the inventory (`agent_key = "FP"`, the fingerprint `reops keys`
and `reops-agent --print-fingerprint` show) matches its accepted key, or, with no pin, the
address it connects from (as the hub sees it) is one the host's `address` resolves to.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Mapping
from typing import Any

from reops.core.model import Host

#: the logger refusals are told on (logging is imported only for one: the one-shot CLI
#: never needs it)
LOGGER = "reops.agents"

#: how long a host name's resolved addresses are trusted
RESOLVE_TTL_S = 60.0
_resolved: dict[str, tuple[float, frozenset[str]]] = {}
_said: set[tuple[str, str]] = set()


def _canonical(address: str) -> str:
    """One spelling per IP (IPv4-mapped IPv6 as IPv4); other text as given."""
    text = address.strip().strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def resolve(address: str) -> frozenset[str]:
    """The IPs `address` stands for (itself if it is one); cached for a minute."""
    now = time.monotonic()
    hit = _resolved.get(address)
    if hit is not None and now - hit[0] < RESOLVE_TTL_S:
        return hit[1]
    canonical = _canonical(address)
    try:
        ipaddress.ip_address(canonical)
        ips = frozenset({canonical})
    except ValueError:
        try:
            infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
            ips = frozenset(_canonical(str(i[4][0])) for i in infos)
        except (OSError, UnicodeError):
            ips = frozenset()
    _resolved[address] = (now, ips)
    return ips


async def resolve_soon(address: str) -> frozenset[str]:
    """`resolve` without blocking the event loop (the resolver runs in a thread)."""
    hit = _resolved.get(address)
    if hit is not None and time.monotonic() - hit[0] < RESOLVE_TTL_S:
        return hit[1]
    try:
        ipaddress.ip_address(_canonical(address))
    except ValueError:
        import asyncio  # here: the blocking core (`agent_for`) serves the one-shot CLI, which
        # never loads asyncio

        return await asyncio.to_thread(resolve, address)
    return resolve(address)


def pinned_fingerprint(pin: str) -> str:
    """The comparable form of an `agent_key` pin: a fingerprint, or a z85 public key."""
    pin = pin.strip()
    if len(pin) == 40:  # a z85 key (a fingerprint is 32 hex digits, with or without colons)
        from reops_agent.protocol import fingerprint  # (only then: a CLI run skips the
        # agent's protocol module, its Structs and decoders)

        pin = fingerprint(pin)
    return pin.lower().replace(":", "").replace("-", "")


def mismatch(host: Host, agent: Mapping[str, Any]) -> str | None:
    """Why the agent connected as `host.name` is not `host` (one line), or None if it is."""
    name = host.name
    if host.agent_key:
        have = str(agent.get("fingerprint") or "")
        if pinned_fingerprint(host.agent_key) == have.lower().replace(":", ""):
            return None
        return (f"agent {name}'s key is {have or 'unknown'}, the inventory pins agent_key "
                f"{host.agent_key}: another machine uses this name, or the pin is out of date")
    seen = _canonical(str(agent.get("address") or ""))
    if seen and seen in resolve(host.address):
        return None
    says = host.address if _canonical(host.address) in resolve(host.address) else (
        f"{host.address} ({', '.join(sorted(resolve(host.address))) or 'unresolved'})")
    return (f"agent {name} connects from {seen or 'an unknown address'}, inventory says "
            f"{says}; pin agent_key or fix the address")


async def is_agent_for(host: Host, agent: Mapping[str, Any] | None) -> bool:
    """`agent_for` (the blocking core, what the one-shot CLI calls), resolving the host's
    address off the event loop first."""
    if agent is not None and not host.agent_key:
        await resolve_soon(host.address)
    return agent_for(host, agent)


def agent_for(host: Host, agent: Mapping[str, Any] | None) -> bool:
    """Whether `agent` (the hub's record named like `host`) may run `host`'s commands;
    a refusal is logged once per host and address."""
    if agent is None:
        return False
    why = mismatch(host, agent)
    if why is None:
        return True
    said = (host.name, str(agent.get("address")))
    if said not in _said and len(_said) < 10_000:
        _said.add(said)
        import logging

        logging.getLogger(LOGGER).warning("%s", why)
    return False


def connect_from(address: str, endpoint: str) -> str:
    """`endpoint` for an agent that must connect from local `address` (ZeroMQ's
    `tcp://SOURCE:0;HOST:PORT`): lab hosts share one machine but not one loopback address."""
    return f"tcp://{address}:0;{endpoint.removeprefix('tcp://')}"
