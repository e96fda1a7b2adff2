"""The ops library through the real SSH source on the lab's sshd hosts.

Everything safe to run for real: facts, metrics, security queries, package and service
queries, file ops. Package writes never run here (see test_ops_pkg.py's stand-ins). The
lab's hosts are loopback sshds on this machine logging in as an unprivileged user, so
file ops work in a world-writable scratch directory, one host at a time where they would
otherwise race on the shared filesystem.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reops import run
from reops.core.model import Host, Hosts, Outcome
from reops.core.settings import Settings
from reops.lab.fleet import LabInfo
from reops.ops import facts, files, metrics, pkg, security, service
from reops.ops.base import Op
from reops.ops.text import EX_UNAVAILABLE
from reops.streams.source import source

FAST = Settings(connect_timeout=10.0, command_timeout=120.0)


def on(hosts: Hosts | Host, op: Op) -> Outcome:
    return run(source(hosts, op, via="ssh", settings=FAST))


def one(lab: LabInfo) -> Host:
    return next(iter(lab.as_hosts()))


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the lab user may write to (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="reops-ops-lab-", dir="/tmp"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_facts_on_every_host(lab: LabInfo) -> None:
    hosts = lab.as_hosts()
    out = on(hosts, facts.facts())
    assert out.failure == {} and len(out.successful) == len(hosts)
    for r in out.successful:
        f: facts.Facts = r.data
        assert f.os is not None and f.os.hostname == socket.gethostname()
        assert f.hardware is not None and f.hardware.cpus >= 1
        assert f.users and any(u.name == lab.user for u in f.users)


def test_metrics_on_every_host(lab: LabInfo) -> None:
    out = on(lab.as_hosts(), metrics.metrics(interval=0.2))
    assert out.failure == {}
    for r in out.successful:
        m: metrics.Metrics = r.data
        assert m.cpu is not None and m.cpu.busy_pct is not None
        assert m.memory is not None and m.memory.total > 0


def test_security_queries(lab: LabInfo) -> None:
    host = one(lab)
    listening = on(host, security.listening())
    assert listening.ok
    ports = {(x.address, x.port) for x in listening.successful[0].data}
    assert (host.address, host.port) in ports  # its own sshd
    for op in (security.ssh_sessions(), security.firewall()):
        assert on(host, op).ok


def test_queries_that_fail_clearly(lab: LabInfo) -> None:
    host = one(lab)
    status = on(host, service.status("ssh"))
    if not os.path.isdir(service.SYSTEMD_RUN_DIR):
        [r] = status.failure[EX_UNAVAILABLE]
        assert r.err.startswith("reops: systemd is not running on this host")
    installed = on(host, pkg.installed("bash"))
    assert [p.name for p in installed.successful[0].data] == ["bash"]


def test_file_ops_change_once(lab: LabInfo, scratch: Path) -> None:
    host = one(lab)
    conf = scratch / "app" / "app.conf"
    tmpl = scratch / "app.conf.tmpl"
    tmpl.write_text("host=$host port=$http_port\n")

    def changed(op: Op) -> bool | None:
        out = on(host, op)
        assert out.ok, out.failed[0].err
        return out.successful[0].changed

    assert changed(files.mkdir(str(conf.parent), mode=0o755)) is True
    assert changed(files.mkdir(str(conf.parent), mode=0o755)) is False
    assert changed(files.template(str(tmpl), str(conf))) is True
    assert changed(files.template(str(tmpl), str(conf))) is False
    assert conf.read_text() == f"host={host.name} port={host.vars['http_port']}\n"
    assert changed(files.line_in_file(str(conf), "debug=1")) is True
    assert changed(files.line_in_file(str(conf), "debug=1")) is False
    found = on(host, files.grep("^debug", str(conf)))
    assert [(m.line, m.text) for m in found.successful[0].data] == [(2, "debug=1")]
    assert changed(files.rm(str(conf.parent), recursive=True)) is True


def test_permission_denied_is_a_failure_with_the_reason(lab: LabInfo) -> None:
    out = on(one(lab), files.mkdir("/root/reops-should-not-exist"))
    [r] = out.failure[1]
    assert "Permission denied" in r.err


def test_sync_falls_back_to_sftp_upload(lab: LabInfo, scratch: Path) -> None:
    src = scratch / "site"
    (src / "css").mkdir(parents=True)
    (src / "css" / "a.css").write_text("body{}\n")
    op = files.sync(str(src), str(scratch / "www"))
    out = on(one(lab), op)
    assert out.ok, out.failed[0].err if out.failed else ""
    copied = list((scratch / "www").rglob("a.css"))
    assert copied and copied[0].read_text() == "body{}\n"
