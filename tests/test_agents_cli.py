"""`reops hub`, `reops keys`, `reops agents` against real hub and agent processes."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from reops.cli.main import main
from reops.lab.agents import LabHub, start_agents, start_hub, wait_for_agents


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REOPS_HUB_BIND", "tcp://127.0.0.1:*")
    monkeypatch.setenv("REOPS_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "home").mkdir(mode=0o700)  # private, as reops makes it (else it warns)
    return tmp_path / "home"


@pytest.fixture
def hub(home: Path) -> Iterator[LabHub]:
    with start_hub(home, heartbeat_s=0.25, misses=4) as h:
        yield h


def reops(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_no_hub_is_one_clear_line(home: Path) -> None:
    code, out = reops("agents")
    assert code == 2
    assert out.strip() == (f"reops: error: no reops hub is running (control socket "
                           f"{home}/run/hub.sock); start one with `reops hub`")


def test_control_socket_is_private(hub: LabHub) -> None:
    assert stat.S_IMODE(hub.control_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(hub.control_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((hub.keys_dir / "hub.key_secret").stat().st_mode) == 0o600


def test_keys_flow_and_agents_listing(hub: LabHub, tmp_path: Path) -> None:
    with start_agents(["w1", "w2"], hub.bind, hub.key, hub.keys_dir, workdir=tmp_path / "ag",
                      accept=False, extra=["--heartbeat", "0.25"]):
        wait_for_pending(hub, {"w1", "w2"})
        code, out = reops("keys", "accept", "w1")
        assert (code, out.strip()) == (0, "accepted w1")
        code, out = reops("keys")
        assert code == 0 and "Pending keys (1):" in out and "w2" in out
        assert reops("keys", "accept", "nobody")[0] == 2
        assert reops("keys", "accept", "--all-pending") == (0, "accepted w2\n")
        wait_for_agents(hub.control_path, ["w1", "w2"])
        code, out = reops("agents", "--json")
        assert code == 0 and {a["name"] for a in json.loads(out)} == {"w1", "w2"}
        code, out = reops("agents")
        assert code == 0 and "connected" in out and "w2" in out
        assert reops("keys", "reject", "w2") == (0, "rejected w2\n")
        keys = json.loads(reops("keys", "--json")[1])
        assert {k["name"]: k["state"] for k in keys} == {"w1": "accepted", "w2": "rejected"}
        assert reops("keys", "delete", "w2") == (0, "deleted w2\n")


def wait_for_pending(hub: LabHub, names: set[str]) -> None:
    """Block until the hub has recorded `names` as pending (via its event stream)."""
    import asyncio

    from reops.control.client import HubClient
    from reops.control.wire import Event

    async def wait() -> None:
        client = HubClient(hub.control_path)
        try:
            events = client.pieces("subscribe", topics=["keys"])
            await anext(events)
            have = {k["name"] for k in await client.request("keys") if k["state"] == "pending"}
            while not names <= have:
                event = await asyncio.wait_for(anext(events), 15)
                assert isinstance(event, Event)
                have.add(event.data["agent"])
            await events.aclose()
        finally:
            await client.close()

    asyncio.run(wait())


def test_hub_background_print_key_and_stop(home: Path) -> None:
    code, out = reops("hub", "--background")
    try:
        assert code == 0 and len(out.strip().splitlines()[-1]) == 40
        key = out.strip().splitlines()[-1]
        assert reops("hub", "--print-key") == (0, key + "\n")
        code, out = reops("hub", "--background")
        assert code == 2 and "already running" in out
    finally:
        code, out = reops("hub", "--stop")
    assert code == 0 and "hub stopped" in out
    assert reops("agents")[0] == 2
