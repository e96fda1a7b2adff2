"""Provisioning recipe for machines of the `redis` type.

    reops types add redis --description "redis server" --provision flows/redis.py --arg port=6379
    reops systems create redis --preset small --preset debian-12 --count 2

Each new system runs `provision(hosts, **args)` once it has booted and has an address;
`reops systems provision SELECTOR` runs it again. A recipe is plain reops code: it returns
a Stream (or an Outcome, or an Op), one Result per host.
"""

from __future__ import annotations

from reops import Stream, line_in_file, pkg, service, then


def provision(hosts: object, port: str = "6379") -> Stream:
    """Install redis, set its port, restart it: each step only where the last one worked."""
    return (
        pkg.install(hosts, "redis-server", sudo=True)
        | then(line_in_file, "/etc/redis/redis.conf", f"port {port}", regex="^port ", sudo=True)
        | then(service.restart, "redis-server", sudo=True)
    )
