"""`reops exec --systems`: ops on machines from the systems store, through the Hosts bridge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def test_exec_on_a_registered_physical_system(lab_factory: Callable[..., Any],
                                             tmp_path: Path) -> None:
    fleet = lab_factory(hosts=1, base_port=22)  # systems carry an address, not a port
    info = fleet.info
    [address] = info.hosts.values()
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[hypervisors.rack]\nkind = "physical"\n')
    env = {**os.environ, "REOPS_HOME": str(home), "REOPS_CONFIG": str(home / "config.toml")}

    def reops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                              text=True, env=env, timeout=120)

    reg = reops("systems", "register", "box1", "--mac", "52:54:00:aa:bb:cc", "--ip", address,
                "--hypervisor", "rack", "--user", info.user)
    assert reg.returncode == 0, reg.stderr
    p = reops("exec", "--systems", "box1", "--key", str(info.key),
              "--known-hosts", str(info.known_hosts), "-o", "json", "--", "echo", "hi")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["hosts"] == ["box1"] and doc["successful"][0]["out"] == "hi\n"
    none = reops("exec", "--systems", "nothing*", "--", "true")
    assert none.returncode == 2 and "nothing" in none.stderr
