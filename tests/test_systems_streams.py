"""Machines as Streams: create | then(next step) with one Result per system, via the runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from systems_fixtures import config_toml

from reops.core.model import Host, Hosts, Line, Result
from reops.core.runtime import get_runtime
from reops.store.model import MachinesError
from reops.streams.operators import then
from reops.streams.stream import Stream, run
from reops.systems.api import connect
from reops.systems.streams import create, machines
from reops.transports.base import DryRun


def seen_address(hosts: Hosts) -> Stream:
    """A next step that reports the address it was given (no network needed)."""
    from reops.core.settings import Settings
    from reops.ops.base import Op
    from reops.streams.stream import fanout

    async def one(host: Host, on_line: Callable[[Line], None] | None) -> Result:
        op = Op(name="where", command=f"echo {host.address}")
        return await DryRun().run(host, op, Settings())

    return Stream(fanout(hosts, one), hosts)


def test_create_then_next_step_sees_the_discovered_ip(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path))
    monkeypatch.setenv("REOPS_CONFIG", str(config_toml(tmp_path)))
    rt = get_runtime()
    api = rt.call(connect(hub=False))
    try:
        rt.call(api.add_type("redis", "", None, {}))
        with pytest.raises(MachinesError, match="unknown preset 'huge'"):
            create("redis", ["huge"], api=api)
        out = run(create("redis", ["tiny"], count=2, api=api) | then(seen_address))
        assert out.ok and len(out.successful) == 2
        assert all(r.out.startswith("echo 192.168.122.") for r in out.successful)
        stopped = run(machines("stop", "typed:redis", api=api))
        assert [r.data for r in stopped.successful] == [{"stop": "shut down"}] * 2
        assert all(r.transport == "libvirt" for r in stopped.successful)
        bad = run(machines("revert", "typed:redis", name="nope", api=api))
        assert not bad.ok and "has no snapshot 'nope'" in bad.failed[0].err
    finally:
        rt.call(api.aclose())
