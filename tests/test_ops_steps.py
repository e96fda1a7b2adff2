"""The Hosts-first steps end to end on the lab: files, sync (rsync and SFTP), queries,
collect, and the reboot wait (with a fake boot id: nothing here reboots anything).

Package writes and power ops only ever run as dry runs.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reops import run
from reops.core.model import Host, Hosts, Outcome, Result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.lab.fleet import LabInfo
from reops.ops import metrics as metrics_ops
from reops.ops import power
from reops.ops.base import Op
from reops.ops.files import sync as sync_op
from reops.ops.service import SYSTEMD_RUN_DIR
from reops.ops.text import EX_UNAVAILABLE, marker, script
from reops.streams.source import source
from reops.streams.steps import (
    boot_id,
    collect,
    cp,
    extract,
    facts,
    firewall,
    grep,
    line_in_file,
    listening,
    metrics,
    mkdir,
    pkg,
    reboot,
    rm,
    security_updates,
    service,
    shutdown,
    ssh_sessions,
    sync,
    template,
    to_metrics_table,
    wait_back,
    windows,
)
from reops.streams.stream import Stream
from reops.transports.ssh.rsync import local_rsync_argv, sync_via

FAST = Settings(connect_timeout=10.0, command_timeout=60.0)


def one(lab: LabInfo) -> Host:
    return next(iter(lab.as_hosts()))


def two(lab: LabInfo) -> Hosts:
    return Hosts(list(lab.as_hosts())[:2])


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the lab's unprivileged login user may write to."""
    d = Path(tempfile.mkdtemp(prefix="reops-steps-", dir="/tmp"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def only(out: Outcome) -> Result:
    [r] = out.results
    return r


# --- dry runs: every step says what it would run, and runs nothing ---


def test_every_step_dry_run_shows_its_command(tmp_path: Path) -> None:
    tmpl = tmp_path / "t.tmpl"
    tmpl.write_text("x=$host\n")
    hosts = Hosts([Host(name="h1", address="192.0.2.1"), Host(name="h2", address="192.0.2.2")])
    cases = {
        "mkdir -p": mkdir(hosts, "/srv/app", mode=0o755, dry_run=True),
        "rm -rf": rm(hosts, "/srv/old", recursive=True, dry_run=True),
        "cp -p": cp(hosts, "/etc/hosts", "/tmp/hosts", dry_run=True),
        "grep -nHE": grep(hosts, "^root", "/etc/passwd", dry_run=True),
        "tar -xvf": extract(hosts, "/tmp/a.tar.gz", "/srv", dry_run=True),
        "debug=1": line_in_file(hosts, "/etc/app.conf", "debug=1", dry_run=True),
        "x=h1": template(hosts, str(tmpl), "/etc/app.conf", dry_run=True),
        "sync /": sync(hosts, str(tmp_path), "/srv/www", dry_run=True),
        "apt-get": pkg.install(hosts, "nginx", dry_run=True),
        "remove": pkg.remove(hosts, "nginx", dry_run=True),
        "update": pkg.update(hosts, dry_run=True),
        "upgrade": pkg.upgrade(hosts, dry_run=True),
        "dpkg-query": pkg.installed(hosts, "bash", dry_run=True),
        "systemctl restart": service.restart(hosts, "nginx", dry_run=True),
        "ActiveState": service.status(hosts, "nginx", dry_run=True),
        "os-release": facts(hosts, dry_run=True),
        "/proc/loadavg": metrics(hosts, "load", dry_run=True),
        "ss -ltnup": listening(hosts, dry_run=True),
        "who": ssh_sessions(hosts, dry_run=True),
        "nft": firewall(hosts, dry_run=True),
        "Inst": security_updates(hosts, dry_run=True),
        "systemctl reboot": reboot(hosts, sudo=True, dry_run=True),
        "systemctl poweroff": shutdown(hosts, sudo=True, dry_run=True),
        "boot_id": boot_id(hosts, dry_run=True),
    }
    for needle, stream in cases.items():
        for r in stream.run().results:
            assert r.ok and r.transport == "local", (needle, r)
            want = f"x={r.host}" if needle == "x=h1" else needle  # rendered per host
            assert want in r.data["dry_run"], (needle, r.data["dry_run"][:300])


# --- queries on the real lab ---


def test_facts_and_package_query(lab: LabInfo) -> None:
    out = run(facts(two(lab), "os", "hardware", settings=FAST))
    assert out.ok and len(out.successful) == 2
    assert all(r.data.os.kernel == "Linux" and r.data.hardware.cpus >= 1 for r in out.results)
    found = only(run(pkg.installed(one(lab), "bash", settings=FAST)))
    assert found.ok and [p.name for p in found.data] == ["bash"]


def test_service_status_without_an_init_system_fails_clearly(lab: LabInfo) -> None:
    r = only(run(service.status(one(lab), "ssh", settings=FAST)))
    if os.path.isdir(SYSTEMD_RUN_DIR):
        pytest.skip("this machine runs systemd")
    assert r.status == "failed" and r.code == EX_UNAVAILABLE
    assert r.err.startswith("reops: systemd is not running on this host")


# --- files ---


def test_file_steps_round_trip(lab: LabInfo, scratch: Path) -> None:
    host = one(lab)
    app = scratch / "app"
    conf = app / "app.conf"
    tmpl = scratch / "app.conf.tmpl"
    tmpl.write_text("host=$host\nport=$http_port\n")

    def changed(stream: Stream) -> bool | None:
        r = only(run(stream))
        assert r.ok, r.err
        return r.changed

    assert changed(mkdir(host, str(app), mode=0o755, settings=FAST)) is True
    assert changed(mkdir(host, str(app), mode=0o755, settings=FAST)) is False
    assert changed(template(host, str(tmpl), str(conf), settings=FAST)) is True
    assert changed(template(host, str(tmpl), str(conf), settings=FAST)) is False
    assert conf.read_text() == f"host={host.name}\nport={host.vars['http_port']}\n"
    assert changed(line_in_file(host, str(conf), "debug=1", settings=FAST)) is True
    assert changed(line_in_file(host, str(conf), "debug=1", settings=FAST)) is False
    hits = only(run(grep(host, "^(port|debug)=", str(conf), settings=FAST)))
    assert [(m.line, m.text) for m in hits.data] == [
        (2, f"port={host.vars['http_port']}"), (3, "debug=1")]
    none = only(run(grep(host, "nothing-like-this", str(conf), settings=FAST)))
    assert none.ok and none.data == []
    assert changed(cp(host, str(conf), str(app / "copy.conf"), settings=FAST)) is True
    assert changed(cp(host, str(conf), str(app / "copy.conf"), settings=FAST)) is False
    archive = scratch / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmpl, arcname="bundle/app.conf.tmpl")
    unpacked = only(run(extract(host, str(archive), str(app / "x"), settings=FAST)))
    assert unpacked.ok and "bundle/app.conf.tmpl" in unpacked.data
    assert (app / "x" / "bundle" / "app.conf.tmpl").read_text() == tmpl.read_text()
    assert changed(rm(host, str(app), recursive=True, settings=FAST)) is True
    assert changed(rm(host, str(app), recursive=True, settings=FAST)) is False
    assert not app.exists()


def _site(root: Path) -> Path:
    src = root / "site"
    (src / "css").mkdir(parents=True)
    (src / "css" / "a.css").write_text("body{}\n")
    (src / "index.html").write_text("<h1>hi</h1>\n")
    for p in (src, src / "css"):
        p.chmod(0o755)
    return src


def test_sync_with_rsync_changes_once(lab: LabInfo, scratch: Path) -> None:
    host = one(lab)
    src, dest = _site(scratch), scratch / "www"
    first = only(run(sync(host, str(src), str(dest), settings=FAST)))
    assert first.ok, first.err
    assert sync_via(first.out) == "rsync" and first.changed is True
    assert {c.path for c in first.data} >= {"css/a.css", "index.html"}
    assert (dest / "css" / "a.css").read_text() == "body{}\n"
    again = only(run(sync(host, str(src), str(dest), settings=FAST)))
    assert again.ok and again.changed is False and again.data == []


def test_sync_falls_back_to_sftp_and_acts_like_rsync(lab: LabInfo, scratch: Path) -> None:
    host = one(lab)
    src, dest = _site(scratch), scratch / "www"
    (dest / "stale").mkdir(parents=True)
    (dest / "stale" / "old.txt").write_text("old\n")
    dest.chmod(0o777)
    (dest / "stale").chmod(0o777)
    op = sync_op(str(src), str(dest), delete=True, exclude=["*.tmp"])
    (src / "skip.tmp").write_text("never copied\n")
    no_rsync = op.with_(command="PATH=/nonexistent; " + str(op.command))

    def go() -> Result:
        return only(run(source(host, no_rsync, settings=FAST)))

    first = go()
    assert first.ok, first.err
    assert sync_via(first.out) == "sftp" and first.changed is True
    paths = {c.path for c in first.data}
    assert {"css/a.css", "index.html", "stale/"} <= paths
    assert (dest / "css" / "a.css").read_text() == "body{}\n"
    assert not (dest / "stale").exists() and not (dest / "skip.tmp").exists()
    assert go().changed is False  # same size and mtime: nothing sent
    (src / "index.html").write_text("<h1>changed</h1>\n")
    third = go()
    assert third.changed is True and [c.path for c in third.data] == ["index.html"]
    assert (dest / "index.html").read_text() == "<h1>changed</h1>\n"


def test_sync_with_sudo_but_no_rsync_fails_clearly(lab: LabInfo, scratch: Path) -> None:
    op = sync_op(str(_site(scratch)), str(scratch / "www"), sudo=True)
    no_rsync = op.with_(command="PATH=/nonexistent; " + str(op.command))
    r = only(run(source(one(lab), no_rsync, settings=FAST)))
    assert r.status == "failed" and r.code == 69 and "SFTP cannot sudo" in r.err


def test_rsync_follows_the_ssh_source_policy() -> None:
    host = Host(name="h", address="10.0.0.5", port=2200, key="/k/id", known_hosts="/k/kh")
    bare = Host(name="b", address="10.0.0.6")
    op = sync_op("/nonexistent-local", "/srv/www", delete=True, exclude=["*.tmp"])

    def ssh_e(h: Host, **settings: object) -> str:
        argv = local_rsync_argv(h, op, Settings(**settings))  # type: ignore[arg-type]
        return argv[argv.index("-e") + 1]

    strict = ssh_e(host, connect_timeout=7.5)
    assert "StrictHostKeyChecking=yes" in strict and "UserKnownHostsFile=/k/kh" in strict
    assert "ConnectTimeout=8" in strict and "-p 2200" in strict and "-i /k/id" in strict
    assert "IdentitiesOnly=yes" in strict
    assert "StrictHostKeyChecking=accept-new" in ssh_e(host, host_key_checking="accept-new")
    off = ssh_e(host, host_key_checking="off")
    assert "StrictHostKeyChecking=no" in off and "UserKnownHostsFile=/dev/null" in off
    assert "/k/kh" not in off  # off reads and writes no known_hosts file
    plain = ssh_e(bare, known_hosts="/etc/kh", user="deploy", key="/k/fleet")
    assert "UserKnownHostsFile=/etc/kh" in plain and "User=deploy" in plain
    assert "-i /k/fleet" in plain and "IdentitiesOnly=yes" in plain
    assert "-i /k/fleet" not in ssh_e(host, key="/k/fleet")  # the host's own key wins
    argv = local_rsync_argv(host, op, Settings())
    assert "--delete" in argv and argv[-1] == "10.0.0.5:/srv/www"


def test_sync_of_a_missing_local_path_fails_clearly(lab: LabInfo, scratch: Path) -> None:
    r = only(run(sync(one(lab), str(scratch / "nope"), str(scratch / "x"), settings=FAST)))
    assert r.status == "failed" and "no such local file" in r.err


# --- collect ---


def test_collect_samples_each_host_until_disposed(lab: LabInfo) -> None:
    hosts = two(lab)
    got: list[Result] = []
    enough = threading.Event()
    late = threading.Event()
    stopped = threading.Event()
    lock = threading.Lock()

    def on_next(r: Result) -> None:
        with lock:
            got.append(r)
            per_host = {h: sum(1 for x in got if x.host == h) for h in hosts.names}
        if stopped.is_set():
            late.set()
        if min(per_host.values()) >= 2:
            enough.set()

    sub = collect(hosts, ["load", "memory"], every=0.3, settings=FAST).subscribe(on_next)
    try:
        assert enough.wait(30), f"only {len(got)} samples"
    finally:
        sub.dispose()
        get_runtime().barrier()  # a sample being delivered as we disposed lands first
        stopped.set()
    assert not late.wait(1.0), "a sample arrived after dispose"
    with lock:
        results = list(got)
    assert all(r.ok and isinstance(r.data, metrics_ops.Metrics) for r in results)
    table = to_metrics_table(results)
    assert table.height == len(results) >= 4
    assert {"host", "at", "load1", "mem_used_pct"} <= set(table.columns)
    assert set(table["host"]) == set(hosts.names)


def test_windows_group_samples_in_time(lab: LabInfo) -> None:
    batches: list[list[Result]] = []
    full = threading.Event()

    def on_batch(batch: list[Result]) -> None:
        if batch:
            batches.append(batch)
            full.set()

    sub = windows(collect(two(lab), ["load"], every=0.2, settings=FAST), 0.5).subscribe(
        on_batch)
    try:
        assert full.wait(30)
    finally:
        sub.dispose()
    assert all(isinstance(r, Result) for r in batches[0])


def test_collect_rejects_bad_cadence() -> None:
    with pytest.raises(ValueError):
        collect(Hosts(), ["cpu"], every=0)
    with pytest.raises(ValueError):
        collect(Hosts(), ["cpu"], every=1, interval=2)


# --- waiting for a new boot (a fake boot id in a file; nothing reboots) ---


def _fake_boot(path: Path, becomes: str | None) -> tuple[Op, Op]:
    """An op that reports the boot id in `path` and (maybe) changes it a moment later."""
    probe_lines = [marker("boot_id"), f"cat {path}", marker("uptime"), "cat /proc/uptime"]
    later = (f'nohup sh -c "sleep 0.5; echo {becomes} > {path}" >/dev/null 2>&1 &'
             if becomes else "true")
    op = Op(name="power.reboot", command=script(
        f"[ -f {path} ] || echo before > {path}", *probe_lines, later),
        parse=power.parse_boot_id)
    probe = Op(name="power.boot_id", command=script(*probe_lines), parse=power.parse_boot_id)
    return op, probe


def test_wait_back_returns_once_the_boot_id_changes(lab: LabInfo, scratch: Path) -> None:
    op, probe = _fake_boot(scratch / "boot_id", becomes="after")
    r = only(run(wait_back(one(lab), op, probe, timeout=20, first_s=0.1, poll_s=0.2,
                           settings=FAST)))
    assert r.ok, r.err
    assert r.data.before.boot_id == "before" and r.data.after.boot_id == "after"
    assert r.changed is True and 0 < r.data.waited_s < 20
    assert "back after" in r.out


def test_wait_back_times_out_with_the_reason(lab: LabInfo, scratch: Path) -> None:
    op, probe = _fake_boot(scratch / "boot_id", becomes=None)
    r = only(run(wait_back(one(lab), op, probe, timeout=1.0, first_s=0.1, poll_s=0.2,
                           settings=FAST)))
    assert r.status == "timeout" and r.code == -1
    assert "not back within 1 s" in r.err and "same boot_id" in r.err
    assert r.data == power.BootId(boot_id="before", uptime_s=r.data.uptime_s)


def test_wait_back_keeps_the_ops_own_failure(lab: LabInfo) -> None:
    failing = Op(name="power.reboot", command="echo nope >&2; exit 77",
                 parse=power.parse_boot_id)
    r = only(run(wait_back(one(lab), failing, timeout=5, settings=FAST)))
    assert r.status == "failed" and r.code == 77 and "nope" in r.err
