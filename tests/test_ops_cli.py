"""The op commands as users run them: `reops facts|pkg|service|files|metrics|security|reboot`.

Real runs go through `python -m reops` on the session lab; the dry-run matrix runs
in-process (click's CliRunner) to stay fast, restoring the process defaults that the
commands set. Package writes and power ops only ever run as dry runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from reops.cli import ops as cli_ops
from reops.cli.main import main
from reops.lab.fleet import LabInfo
from reops.ops.service import SYSTEMD_RUN_DIR
from reops.streams.source import defaults


def reops(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reops", *args], capture_output=True,
                          text=True, timeout=timeout)


class Ran:
    """What an in-process run printed and how it exited (like CompletedProcess)."""

    def __init__(self, returncode: int, stdout: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, ""


def run(runner: CliRunner, *args: str) -> Ran:
    res = runner.invoke(main, list(args))
    return Ran(res.exit_code, res.output)


@pytest.fixture
def in_process() -> Iterator[CliRunner]:
    """A CliRunner; the defaults the command configures are put back afterwards."""
    d = defaults()
    saved = msgspec.structs.asdict(d)
    try:
        yield CliRunner()
    finally:
        for k, v in saved.items():
            setattr(d, k, v)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the lab's unprivileged login user may write to."""
    d = Path(tempfile.mkdtemp(prefix="reops-ops-cli-", dir="/tmp"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_help_lists_the_op_commands() -> None:
    p = reops("--help")
    for name in ("facts", "metrics", "pkg", "service", "files", "security", "reboot",
                 "shutdown"):
        assert f"  {name} " in p.stdout


def test_facts_json_is_the_outcome_with_typed_data(lab: LabInfo) -> None:
    p = reops("facts", "-i", str(lab.inventory), "group:db", "-o", "json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) == {"hosts", "successful", "failure", "run", "steps"} and doc["failure"] == {}
    assert doc["run"]["selector"] == "group:db" and doc["run"]["check"] is False
    assert doc["run"]["command"].startswith("reops facts") and doc["run"]["pipeline"] == "facts"
    assert [(s["host"], s["step"]) for s in doc["steps"]] == [(h, 0) for h in doc["hosts"]]
    assert sorted(doc["hosts"]) == sorted(h for h in lab.hosts if h.startswith("db"))
    data = doc["successful"][0]["data"]
    assert data["os"]["kernel"] == "Linux" and data["hardware"]["cpus"] >= 1
    assert {"network", "users", "uptime_s", "boot_time"} <= set(data)


def test_facts_pretty_is_a_table(lab: LabInfo, in_process: CliRunner) -> None:
    p = run(in_process, "facts", "-i", str(lab.inventory), "web1,web2", "os", "hardware")
    assert p.returncode == 0, p.stdout
    # both hosts ok: one gathered ✔ block (same OS line) naming both, then the table
    assert re.search(r"^✔ web\[1-2\] \(2\) facts ≤\d+\.\d\ds  \S", p.stdout, re.M), p.stdout
    assert p.stdout.count("✔") == 1
    rows = [line.split()[0] for line in p.stdout.splitlines() if line.startswith("web")]
    assert rows == ["web1", "web2"]
    header = next(line for line in p.stdout.splitlines() if line.startswith("host"))
    assert header.split() == ["host", "os", "kernel", "cpus", "memory", "disks", "address",
                              "uptime"]
    assert "2 ok · 2 hosts" in p.stdout


def test_service_status_without_systemd_fails_clearly(lab: LabInfo,
                                                       in_process: CliRunner) -> None:
    if os.path.isdir(SYSTEMD_RUN_DIR):
        pytest.skip("this machine runs systemd")
    p = run(in_process, "service", "status", "-i", str(lab.inventory), "web1", "ssh")
    assert p.returncode == 1
    assert "✘ web1" in p.stdout and "exit 69" in p.stdout
    assert "reops: systemd is not running on this host" in p.stdout


def test_pkg_installed_query(lab: LabInfo, in_process: CliRunner) -> None:
    p = run(in_process, "pkg", "installed", "-i", str(lab.inventory), "cache1", "bash",
            "-o", "json")
    assert p.returncode == 0, p.stderr
    [r] = json.loads(p.stdout)["successful"]
    assert [pkg["name"] for pkg in r["data"]] == ["bash"] and r["data"][0]["version"]


def test_pkg_install_dry_run_prints_and_runs_nothing(lab: LabInfo,
                                                       in_process: CliRunner) -> None:
    p = run(in_process, "pkg", "install", "-i", str(lab.inventory), "group:web", "nginx",
            "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "would run:" in p.stdout and "apt-get" in p.stdout and "nginx" in p.stdout
    assert p.stdout.count("would run:") == 1  # the same script for every host, once


def test_every_op_dry_run_prints_its_command(lab: LabInfo, in_process: CliRunner,
                                             tmp_path: Path) -> None:
    tmpl = tmp_path / "t.tmpl"
    tmpl.write_text("name=$host\n")
    inv = ["-i", str(lab.inventory)]
    cases: dict[str, list[str]] = {
        "apt-get": ["pkg", "update", "web1"],
        "upgrade -y": ["pkg", "upgrade", "web1", "--dist"],
        "install -y": ["pkg", "install", "web1", "nginx", "curl"],
        "remove -y": ["pkg", "remove", "web1", "nginx"],
        "dpkg-query": ["pkg", "installed", "web1", "bash"],
        "os-release": ["facts", "web1"],
        "/proc/loadavg": ["metrics", "web1", "load"],
        "ss -ltnup": ["security", "listening", "web1"],
        "who": ["security", "sessions", "web1"],
        "iptables": ["security", "firewall", "web1"],
        "dist-upgrade": ["security", "updates", "web1"],
        "mkdir -p": ["files", "mkdir", "web1", "/srv/app", "--mode", "755"],
        "rm -rf": ["files", "rm", "web1", "/srv/app", "-r"],
        "cp -p": ["files", "cp", "web1", "/etc/hosts", "/tmp/h"],
        "grep -nHE": ["files", "grep", "web1", "^root", "/etc/passwd"],
        "tar -xvf": ["files", "extract", "web1", "/tmp/a.tgz", "/srv"],
        "debug=1": ["files", "line-in-file", "web1", "/etc/app.conf", "debug=1"],
        "name=web1": ["files", "template", "web1", str(tmpl), "/etc/app.conf"],
        f"sync {tmp_path}": ["files", "sync", "web1", str(tmp_path), "/srv/www"],
        "upload ": ["files", "upload", "web1", str(tmpl), "/tmp/t"],
        "download web1:/etc/hostname": ["files", "download", "web1", "/etc/hostname", "d"],
    }
    for verb in ("start", "stop", "restart", "reload", "enable", "disable", "status"):
        cases[f"systemctl {verb if verb != 'status' else 'show'}"] = [
            "service", verb, "web1", "nginx"]
    cases["systemctl reboot"] = ["reboot", "web1", "--sudo"]
    cases["systemctl poweroff"] = ["shutdown", "web1", "--sudo"]
    for needle, argv in cases.items():
        res = in_process.invoke(main, [*argv, *inv, "--dry-run"])
        assert res.exit_code == 0, (argv, res.output)
        assert "would run:" in res.output and needle in res.output, (argv, res.output[-800:])


def test_files_round_trip(lab: LabInfo, scratch: Path, in_process: CliRunner) -> None:
    inv = ["-i", str(lab.inventory)]
    app = scratch / "app"
    tmpl = scratch / "app.tmpl"
    tmpl.write_text("name=$host env=$env\n")

    def changed(*argv: str) -> bool:
        p = run(in_process, "files", *argv, *inv, "-o", "json")
        assert p.returncode == 0, p.stdout + p.stderr
        [r] = json.loads(p.stdout)["successful"]
        return bool(r["changed"])

    assert changed("mkdir", "web1", str(app), "--mode", "0750") is True
    assert oct(app.stat().st_mode & 0o777) == "0o750"
    assert changed("template", "web1", str(tmpl), str(app / "c"), "--vars", "env=prod")
    assert not changed("template", "web1", str(tmpl), str(app / "c"), "--vars", "env=prod")
    assert (app / "c").read_text() == "name=web1 env=prod\n"
    assert changed("line-in-file", "web1", str(app / "c"), "debug=1")
    p = run(in_process, "files", "grep", "web1", "^debug", str(app / "c"), *inv)
    assert p.returncode == 0 and "1 matching lines" in p.stdout
    assert f"{app / 'c'}  2     debug=1" in p.stdout  # the table: path, line, text
    assert changed("line-in-file", "web1", str(app / "c"), "debug=1", "--absent")
    p = run(in_process, "files", "rm", "web1", str(app), "-r", *inv)  # no TTY: no question
    assert p.returncode == 0 and "changed" in p.stdout and not app.exists()


def test_rm_recursive_asks_on_a_terminal(lab: LabInfo, scratch: Path, in_process: CliRunner,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_ops, "_interactive", lambda: True)
    keep = scratch / "keep"
    keep.mkdir()
    argv = ["files", "rm", "web1", str(keep), "-r", "-i", str(lab.inventory)]
    res = in_process.invoke(main, argv, input="n\n")
    assert res.exit_code == 1 and "Remove recursively on 1 hosts (web1)?" in res.output
    assert keep.exists()
    res = in_process.invoke(main, [*argv, "--yes"])
    assert res.exit_code == 0 and not keep.exists()


def test_sync_says_which_path_it_took(lab: LabInfo, scratch: Path,
                                      in_process: CliRunner) -> None:
    site = scratch / "site"
    site.mkdir()
    (site / "index.html").write_text("hi\n")
    site.chmod(0o755)
    # one host: lab hosts share one filesystem, so two rsyncs into one directory would race
    argv = ["files", "sync", "web1", str(site), str(scratch / "www"), "-i",
            str(lab.inventory)]
    p = run(in_process, *argv)
    assert p.returncode == 0, p.stdout
    assert "(via rsync)" in p.stdout and (scratch / "www" / "index.html").exists()


def test_metrics_every_streams_rows_until_count(lab: LabInfo) -> None:
    p = reops("metrics", "-i", str(lab.inventory), "web1,web2", "load", "memory", "--every",
              "0.3", "--count", "2", "-o", "jsonl")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert all(r["status"] == "ok" and "load1" in r and "mem_used_pct" in r for r in rows)
    assert min(sum(1 for r in rows if r["host"] == h) for h in ("web1", "web2")) >= 2


def test_usage_errors_exit_2(lab: LabInfo, in_process: CliRunner) -> None:
    inv = ["-i", str(lab.inventory)]
    for argv, says in (
        (["metrics", "web1", "--every", "1", "-o", "json"], "use -o pretty"),
        (["files", "upload", "web1", __file__, "/tmp/x", "--become-user", "nobody"],
         "--become-user does not apply"),
        (["facts", "web1", "nosuchpart"], "unknown fact parts"),
        (["files", "mkdir", "web1", "/x", "--mode", "rwx"], "octal mode"),
    ):
        res = in_process.invoke(main, [*argv, *inv])
        assert res.exit_code == 2, (argv, res.output)
        assert says in res.output, (argv, res.output)


def test_views_read_typed_data() -> None:
    from reops.core.model import Result
    from reops.ops.facts import Facts
    from reops.ops.metrics import Load, Metrics
    from reops.ops.security import Listener
    from reops.ops.service import ServiceStatus
    from reops.sinks import views

    def ok(data: object, changed: bool | None = None) -> Result:
        return Result(host="h", op="x", status="ok", code=0, data=data, changed=changed)

    running = ServiceStatus(name="nginx.service", init="systemd", active=True, state="active",
                            sub="running", enabled=True, unit_file_state="enabled", pid=812)
    assert views.status_line(ok(running)) == "active (running) · enabled · pid 812"
    assert views.change_line(ok("apt", changed=False)) == "apt: no change"
    assert views.change_line(ok("apt", changed=True)) == "apt"
    assert views.facts_rows(ok(Facts(uptime_s=90061.0)))[0][-1] == "1d 1h"
    cells = views.metrics_cells(Metrics(at=0.0, load=Load(load1=0.5, load5=0, load15=0)))
    assert cells[2] == "0.5" and cells[4] == "-"
    ports = [Listener(proto="tcp", address="0.0.0.0", port=p) for p in (443, 22, 80)]
    assert views.ports_line(ok(ports)) == "22/tcp, 80/tcp, 443/tcp"
