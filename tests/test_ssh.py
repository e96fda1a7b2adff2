"""The SSH source against real sshd hosts: every failure mode is a Result, never a hang."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncssh
import msgspec

from reops import Host, Hosts, exec_, run
from reops.core.settings import Settings
from reops.lab.fleet import LabInfo
from reops.streams.steps import download, ls, upload

FAST = Settings(connect_timeout=5.0)


def lab_hosts(lab: LabInfo) -> Hosts:
    return lab.as_hosts()


def test_twenty_hosts_all_answer(lab: LabInfo) -> None:
    hosts = lab_hosts(lab)
    out = run(exec_(hosts, "echo $((6*7))", settings=FAST))
    assert len(hosts) == 20
    assert sorted(out.hosts) == sorted(hosts.names)
    assert [r.out for r in out.successful] == ["42\n"] * 20
    assert out.failure == {}
    assert all(r.transport == "ssh" and r.code == 0 for r in out.successful)


def test_exit_code_splits_failure(lab: LabInfo) -> None:
    hosts = lab_hosts(lab).glob("db*")
    out = run(exec_(hosts, "echo oops >&2; exit 3", settings=FAST))
    assert out.successful == []
    assert list(out.failure) == [3]
    assert {r.host for r in out.failure[3]} == set(hosts.names)
    assert all(r.status == "failed" and r.err == "oops\n" for r in out.failure[3])
    assert out.exit_code == 1


def test_down_host_is_a_failure_not_missing(lab: LabInfo, dead_address: tuple[str, int]
                                           ) -> None:
    addr, port = dead_address
    good = lab_hosts(lab).glob("web*")
    template = next(iter(good))
    down = msgspec.structs.replace(template, name="gone", address=addr, port=port)
    out = run(exec_(Hosts([*good, down]), "true", settings=FAST))
    assert len(out.hosts) == len(good) + 1
    [bad] = out.failure[-1]
    assert bad.host == "gone" and bad.status == "unreachable"
    assert f"connection refused by {addr}:{port}" in bad.err
    assert len(out.successful) == len(good)


def test_silent_host_hits_connect_timeout(lab: LabInfo, tarpit: tuple[str, int]) -> None:
    addr, port = tarpit
    template = next(iter(lab_hosts(lab)))
    pit = msgspec.structs.replace(template, name="pit", address=addr, port=port)
    ok = lab_hosts(lab).glob("cache*")
    out = run(exec_(Hosts([pit, *ok]), "true", settings=Settings(connect_timeout=0.5)))
    [r] = out.failure[-1]
    assert r.host == "pit" and r.status == "timeout"
    assert "within 0.5 s" in r.err and "connect timeout" in r.err
    assert len(out.successful) == len(ok)


def test_hung_command_times_out_while_others_finish(lab: LabInfo) -> None:
    hosts = lab_hosts(lab).glob("web*")
    slow = hosts["web3"].address
    cmd = f'case "$SSH_CONNECTION" in *" {slow} "*) sleep 60;; esac; echo done'
    out = run(exec_(hosts, cmd, settings=Settings(command_timeout=1.0)))
    [r] = out.failure[-1]
    assert r.host == "web3" and r.status == "timeout"
    assert "timed out after 1 s" in r.err
    assert r.duration_s < 30
    assert {x.host for x in out.successful} == set(hosts.names) - {"web3"}
    assert all(x.out == "done\n" for x in out.successful)


def test_connections_are_reused_across_calls(lab: LabInfo) -> None:
    hosts = lab_hosts(lab).glob("db*")
    first = run(exec_(hosts, "echo $SSH_CONNECTION", settings=FAST))
    second = run(exec_(hosts, "echo $SSH_CONNECTION", settings=FAST))
    # the client's source port is part of SSH_CONNECTION: same port, same connection
    ports1 = {r.host: r.out.split()[1] for r in first.successful}
    ports2 = {r.host: r.out.split()[1] for r in second.successful}
    assert ports1 == ports2 and len(ports1) == len(hosts)


def _rotated(lab_factory, tmp_path: Path) -> tuple[Host, Path]:  # type: ignore[no-untyped-def]
    fleet = lab_factory()
    info = fleet.info
    [host] = list(info.as_hosts())
    fleet.rotate_host_key(host.name)
    return host, info.known_hosts


def test_changed_host_key_strict_fails(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    host, known = _rotated(lab_factory, tmp_path)
    out = run(exec_(host, "true", settings=Settings(host_key_checking="strict")))
    [r] = out.failure[-1]
    assert r.status == "unreachable"
    assert "does not match" in r.err and "ssh-keygen" in r.err and str(known) in r.err


def test_changed_host_key_off_connects(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    host, _ = _rotated(lab_factory, tmp_path)
    out = run(exec_(host, "echo in", settings=Settings(host_key_checking="off")))
    assert [r.out for r in out.successful] == ["in\n"]


def test_accept_new_records_then_refuses_a_change(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = lab_factory()
    [host] = list(fleet.info.as_hosts())
    fresh = tmp_path / "known_hosts"
    unknown = msgspec.structs.replace(host, known_hosts=str(fresh))
    strict = run(exec_(unknown, "true", settings=Settings(host_key_checking="strict")))
    assert "is not in" in strict.failure[-1][0].err
    first = run(exec_(unknown, "true", settings=Settings(host_key_checking="accept-new")))
    assert first.ok
    # recorded under [address]:port, hashed or not (this box's ssh_config: HashKnownHosts)
    found = subprocess.run(["ssh-keygen", "-F", f"[{host.address}]:{host.port}", "-f",
                            str(fresh)], capture_output=True, text=True, check=False)
    assert found.returncode == 0, fresh.read_text()
    fleet.rotate_host_key(host.name)
    again = run(exec_(unknown, "true", settings=Settings(host_key_checking="accept-new")))
    assert "does not match" in again.failure[-1][0].err


def test_wrong_key_and_wrong_user(lab: LabInfo, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    other.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    other.chmod(0o600)
    base = next(iter(lab_hosts(lab)))
    wrong_key = msgspec.structs.replace(base, name="wk", key=str(other))
    wrong_user = msgspec.structs.replace(base, name="wu", user="nosuchuser")
    missing_key = msgspec.structs.replace(base, name="mk", key=str(tmp_path / "absent"))
    out = run(exec_(Hosts([wrong_key, wrong_user, missing_key]), "true", settings=FAST))
    by = {r.host: r for r in out.failed}
    assert "authentication failed for reops-lab@" in by["wk"].err or "authentication failed" \
        in by["wk"].err
    assert "authentication failed for nosuchuser@" in by["wu"].err
    assert "cannot load SSH key" in by["mk"].err
    assert all(r.code == -1 for r in by.values())


def test_upload_download_round_trip(lab: LabInfo, tmp_path: Path) -> None:
    hosts = lab_hosts(lab).glob("cache*")
    src = tmp_path / "payload.txt"
    body = "reops round trip\n" * 100
    src.write_text(body)
    remote = f"/tmp/reops-test-{os.getpid()}.txt"
    up = run(upload(hosts, str(src), remote, mode=0o640))
    assert up.ok and len(up.successful) == len(hosts)
    got = run(download(hosts, remote, str(tmp_path / "back")))
    assert got.ok
    for name in hosts.names:
        assert (tmp_path / "back" / name / Path(remote).name).read_text() == body
    perms = run(exec_(hosts, f"stat -c %a {remote}"))
    assert {r.out for r in perms.successful} == {"640\n"}
    missing = run(download(hosts, "/nonexistent/file", str(tmp_path / "none")))
    assert not missing.successful
    assert all("/nonexistent/file" in r.err for r in missing.failed)


def test_ls_parses_entries(lab: LabInfo) -> None:
    out = run(ls(lab_hosts(lab).glob("db1"), "/", "-1"))
    [r] = out.successful
    assert "etc" in r.data and "tmp" in r.data


CTRL_C_SCRIPT = """
import sys
from reactivex import operators as ops
from reops import Result, exec_, inventory, run

hosts = inventory(sys.argv[1]).select("web*")
cmd = sys.argv[2]

def tell(e):
    if isinstance(e, Result):
        print("done", e.host, flush=True)

out = run(exec_(hosts, cmd) | ops.do_action(tell))
print(out.to_json().decode(), flush=True)
print("interrupted" if out.interrupted else "finished", flush=True)
"""


def test_ctrl_c_returns_partial_outcome(lab: LabInfo, tmp_path: Path) -> None:
    """A real SIGINT to the process, as a terminal's Ctrl-C sends it."""
    fast = lab.hosts["web1"]
    nap = f"sleep 30.{os.getpid()}"  # a pattern only this test's commands have
    cmd = f'case "$SSH_CONNECTION" in *" {fast} "*) echo quick;; *) {nap};; esac'
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    p = subprocess.Popen([sys.executable, str(script), str(lab.inventory), cmd],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    first = p.stdout.readline()
    if not first:
        p.kill()
        raise AssertionError(p.communicate()[1])
    assert first.split() == ["done", "web1"]
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    *_, outcome_json, last = out.strip().splitlines()
    assert last == "interrupted" and "Traceback" not in err
    doc = json.loads(outcome_json)
    assert len(doc["hosts"]) == 10
    assert [r["host"] for r in doc["successful"]] == ["web1"]
    failed = [r for rs in doc["failure"].values() for r in rs]
    assert len(failed) == 9 and all("interrupted" in r["err"] for r in failed)
    # the interrupted hosts' commands were killed: nothing of ours still sleeps there
    left = run(exec_(lab.as_hosts()["web1"], f"pgrep -fa '[s]{nap[1:]}' || true"))
    assert left.successful[0].out == "", f"still running after Ctrl-C:\n{left.successful[0].out}"


def test_idle_connections_close_after_idle_timeout(lab: LabInfo) -> None:
    from reops.core.runtime import get_runtime
    from reops.transports.ssh.executor import SshExecutor

    host = lab_hosts(lab)["cache5"]
    settings = Settings(idle_timeout=0.3)
    assert run(exec_(host, "true", settings=settings)).ok
    rt = get_runtime()
    ssh = rt.resource("ssh", SshExecutor)
    here = (host.address, host.port)
    [conn] = [p.conn for key, p in ssh.pool._pool.items() if (key.address, key.port) == here]
    # the pool closes it by itself once idle: wait for that event (bounded), no polling
    rt.call(asyncio.wait_for(conn.wait_closed(), 30))
    assert all((key.address, key.port) != here for key in ssh.pool._pool)
    assert run(exec_(host, "echo back", settings=settings)).successful[0].out == "back\n"


def test_sudo_failure_is_a_clear_result(lab: LabInfo) -> None:
    host = lab_hosts(lab)["db3"]
    if lab.become_user:  # as root the lab user may sudo; this login's sudo wants a password
        host = msgspec.structs.replace(host, user=lab.become_user)
    out = run(exec_(host, "id -u", sudo=True))
    [r] = out.failed
    assert r.status == "failed" and "sudo: a password is required" in r.err
