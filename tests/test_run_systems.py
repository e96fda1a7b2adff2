"""`reops run flows/examples/fleet_report.py --systems SEL`: the fleet report (what `make run
GUESTS=N` runs) covers a real lab's hosts AND a real tiny guest on embedded QEMU, reached as a
Host named by its hostname at its port forward, with facts read inside the guest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import LabFactory
from tests.test_guests import CACHE, _qemu_pids, _why_not

pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "flows" / "examples" / "fleet_report.py"
Reops = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def reops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reops]:
    """A REOPS_HOME of its own with an embedded QEMU under a short root; guests destroyed."""
    home = tmp_path_factory.mktemp("runsys")
    home.chmod(0o700)
    root = f"/tmp/reops-r-{os.getpid()}"  # QEMU's monitor socket path must stay short
    config = home / "config.toml"
    config.write_text(f'[hypervisors.local]\nuri = "qemu:///embed?root={root}"\n\n'
                      "[machines]\nip_timeout = 90\nstop_timeout = 30\n")
    env = {**os.environ, "REOPS_HOME": str(home), "REOPS_CONFIG": str(config)}

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                              text=True, env=env, timeout=timeout, cwd=home)

    try:
        yield run
    finally:
        run("systems", "destroy", "-f", "all")
        for pid in _qemu_pids(root):  # a destroy that failed must not leak a guest
            os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def guest(reops: Reops) -> tuple[str, str]:
    """One running tiny guest of Type `guest`: (its hostname, the kernel release it boots)."""
    p = reops("images", "build", "tiny", "--cache", str(CACHE), timeout=600)
    assert p.returncode == 0, p.stderr
    meta = json.loads(next(CACHE.glob("tiny-*/tiny.image.json")).read_text())
    kernel = next(k.removeprefix("linux-image-") for k in meta["versions"]
                  if k.startswith("linux-image-"))
    assert reops("types", "add", "guest", "-d", "tiny guests").returncode == 0
    p = reops("systems", "create", "guest", "--preset", "tiny", "--image", "tiny")
    assert p.returncode == 0, p.stderr
    p = reops("systems", "ls", "typed:guest & running", "-o", "json")
    assert p.returncode == 0, p.stderr
    (system,) = json.loads(p.stdout)
    return system["machine"]["hostname"], kernel


def test_fleet_report_includes_running_guests(reops: Reops, guest: tuple[str, str],
                                              lab_factory: LabFactory,
                                              tmp_path: Path) -> None:
    hostname, kernel = guest
    lab = lab_factory(hosts=2).info
    save = tmp_path / "fleet.parquet"
    p = reops("run", str(REPORT), "--inventory", str(lab.inventory), "--selector", "all",
              "--systems", "typed:guest & running", "--save", str(save))
    assert p.returncode == 0, p.stdout + p.stderr
    df = pl.read_parquet(save)
    rows = {h: json.loads(d) for h, d, s in df.select("host", "data", "status").iter_rows()
            if s == "ok"}
    assert set(rows) == {*lab.hosts, hostname}, rows.keys()
    # the guest's kernel is the one its image boots, read inside the guest (not the host's)
    assert rows[hostname]["os"]["kernel_release"] == kernel
    assert all(rows[h]["os"]["kernel_release"] != kernel for h in lab.hosts)
    assert hostname in p.stdout  # and it has its row in the printed table


def test_systems_matching_nothing_is_one_line(reops: Reops,
                                              lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=1).info
    p = reops("run", str(REPORT), "--inventory", str(lab.inventory), "--selector", "all",
              "--systems", "typed:nosuchtype")
    assert p.returncode == 0, p.stderr  # the inventory's hosts are still reported
    warning = [line for line in p.stderr.splitlines() if "typed:nosuchtype" in line]
    assert len(warning) == 1 and "matched no machines" in warning[0], p.stderr
    assert "Traceback" not in p.stderr
    p = reops("run", str(REPORT), "--inventory", str(lab.inventory), "--systems", "typd:web")
    assert p.returncode == 2 and "did you mean 'typed:'" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
