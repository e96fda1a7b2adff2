"""`reops-agent --allow`: an agent serves only the built-ins it was told to (issue 8).

The Runner is the agent's real function table (real subprocesses for `shell`); the CLI is
the real `reops-agent` entry point.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reops_agent.functions import Runner


def test_only_allowed_builtins_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    runner = Runner(allow=("facts", "file.read"))
    refused = runner.run(1, "shell", [f"touch {marker}"], {}, timeout=10)
    assert refused.status == "error" and "not allowed" in refused.err
    assert "--allow facts,file.read" in refused.err
    assert not marker.exists()  # the command never ran
    wrote = runner.run(2, "file.write", [str(marker), b"x"], {}, timeout=10)
    assert wrote.status == "error" and not marker.exists()
    facts = runner.run(3, "facts", [], {}, timeout=10)
    assert facts.status == "ok", facts.err
    assert (runner.run(4, "ping", [], {}, timeout=10)).status == "ok"
    assert "shell" not in runner.names and "file.stat" in runner.names  # what Hello says


def test_everything_is_served_without_allow(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = Runner().run(1, "shell", [f"touch {marker}"], {}, timeout=10)
    assert done.status == "ok" and marker.exists()


def test_an_unknown_allowed_name_is_a_usage_error(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "reops_agent", "--hub", "tcp://127.0.0.1:1",
                        "--hub-key", "x" * 40, "--keys-dir", str(tmp_path), "--allow",
                        "facts,shel"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "--allow: unknown function(s) shel" in p.stdout + p.stderr
