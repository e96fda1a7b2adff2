"""`reops-agent` reads a hub key that begins with "-" (z85 keys can: about one in 85).

argparse takes `--hub-key -abc…` for a missing value; the agent then exited at once and a
lab waited for it in vain. The real entry point, run as a process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import zmq


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops_agent", *args], capture_output=True,
                          text=True, timeout=60)


def test_a_hub_key_beginning_with_a_dash_is_read_as_the_key(tmp_path: Path) -> None:
    public, _ = zmq.curve_keypair()
    dashed = "-" + public.decode()[1:]  # still 40 z85 characters
    p = agent("--hub", "tcp://127.0.0.1:1", "--hub-key", dashed, "--keys-dir",
              str(tmp_path), "--name", "not a name!")
    # the key was taken as the key: parsing went on to the next check, the name
    assert p.returncode == 2, p.stdout + p.stderr
    assert "expected one argument" not in p.stderr
    assert "invalid --name 'not a name!'" in p.stdout


def test_joined_form_still_works(tmp_path: Path) -> None:
    p = agent("--hub-key=-x", "--keys-dir", str(tmp_path), "--print-fingerprint")
    assert p.returncode == 0 and p.stdout.count(":") == 15, p.stdout + p.stderr
