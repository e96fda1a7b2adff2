"""`[store] url` is honoured or refused, never silently ignored: systems, jobs and the hub's
flows keep SQLite files in the directory a `sqlite:///DIR` url names; on a PostgreSQL url
they all run on it, and an unreachable one is one line, exit 2 (the hub does not start
half-way). The password in the url
is never printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REOPS = str(Path(sys.executable).with_name("reops"))
PG_URL = "postgresql://reops:s3cret-pw@127.0.0.1:9/reops"


def reops(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REOPS_HOME": str(home), "REOPS_STORE_URL": url,
           "REOPS_HUB_CONTROL": "", "REOPS_HUB_BIND": "tcp://127.0.0.1:0"}
    return subprocess.run([REOPS, *args], env=env, capture_output=True, text=True, timeout=60)


def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    return h


def test_the_hub_says_in_one_line_when_its_postgresql_store_is_down(tmp_path: Path) -> None:
    """The hub's flows run on PostgreSQL (several controllers: test_hub_cluster.py): one
    that cannot be reached stops the hub at start in one line naming it."""
    h = home(tmp_path)
    done = reops(h, PG_URL, "hub")
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to PostgreSQL" in lines[0], done.stderr
    assert "postgresql://reops@127.0.0.1:9/reops" in lines[0]
    assert "s3cret-pw" not in done.stderr
    assert not (h / "machines.db").exists() and not (h / "flows.db").exists()


def test_systems_use_a_postgresql_url_and_say_in_one_line_when_it_is_down(
        tmp_path: Path) -> None:
    """Systems and jobs run on PostgreSQL (test_queue_cluster.py): an unreachable one is
    one line naming it (not its password), and no SQLite file is made instead."""
    h = home(tmp_path)
    done = reops(h, PG_URL, "systems", "ls")
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to PostgreSQL" in lines[0], done.stderr
    assert "postgresql://reops@127.0.0.1:9/reops" in lines[0]
    assert "s3cret-pw" not in done.stderr
    assert not (h / "machines.db").exists()


def test_a_sqlite_url_names_the_directory_of_the_machines_store(tmp_path: Path) -> None:
    h, elsewhere = home(tmp_path), tmp_path / "store"
    elsewhere.mkdir()
    done = reops(h, f"sqlite://{elsewhere}", "systems", "ls")
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "machines.db").exists() and not (h / "machines.db").exists()
