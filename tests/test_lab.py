"""The lab against the real thing: OpenSSH's ssh/sftp and asyncssh with strict host keys."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest

from reops.lab.fleet import Lab, LabError, LabInfo, addresses, host_names

LabFactory = Callable[..., Lab]


async def connect(info: LabInfo, name: str) -> asyncssh.SSHClientConnection:
    """A strict connection to one lab host: only the lab's key and known_hosts count."""
    return await asyncssh.connect(
        info.hosts[name],
        port=info.port,
        username=info.user,
        client_keys=[str(info.key)],
        known_hosts=str(info.known_hosts),
        agent_path=None,
        config=None,
        connect_timeout=10,
    )


async def run(info: LabInfo, name: str, command: str) -> str:
    async with await connect(info, name) as conn:
        done = await conn.run(command, check=True)
    return str(done.stdout)


def openssh(info: LabInfo, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The OpenSSH client, strict, exactly as a user would type it."""
    return subprocess.run(
        [
            "ssh",
            "-i", str(info.key),
            "-o", f"UserKnownHostsFile={info.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-F", "/dev/null",
            "-p", str(info.port),
            f"{info.user}@{info.hosts[name]}",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip


def running(pid: int) -> bool:
    """Whether `pid` exists and has not exited (an orphaned zombie has exited, and some
    sandboxes' pid 1 never reaps them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def zombie_children() -> list[int]:
    """Exited children of this process nobody collected (stopped sshd must be reaped)."""
    me, out = os.getpid(), []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if state == "Z" and int(ppid) == me:
                out.append(int(entry.name))
    return out


def lab_processes(root: Path) -> list[int]:
    """Pids whose command line mentions the lab's directory (its sshd listeners)."""
    needle = str(root).encode()
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if needle in Path(entry.path, "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# -- layout -------------------------------------------------------------------------------


def test_addresses_skip_network_broadcast_and_localhost() -> None:
    got = addresses("127.0.0.254", 4)
    assert got == ["127.0.0.254", "127.0.1.1", "127.0.1.2", "127.0.1.3"]
    assert "127.0.0.1" not in addresses("127.0.0.0", 3)
    with pytest.raises(LabError):
        addresses("127.255.255.250", 10)


def test_host_names_are_half_web_quarter_db_quarter_cache() -> None:
    names = host_names(20)
    assert [sum(n.startswith(g) for n in names) for g in ("web", "db", "cache")] == [10, 5, 5]
    assert host_names(1) == ["web1"]
    assert host_names(3) == ["web1", "db1", "cache1"]


def test_inventory_known_hosts_and_keys(lab: LabInfo) -> None:
    data = tomllib.loads(lab.inventory.read_text())
    assert data["defaults"] == {
        "user": lab.user,
        "port": lab.port,
        "key": "id_ed25519",
        "known_hosts": "known_hosts",
    }
    assert data["groups"]["web"]["vars"] == {"http_port": 8080}
    hosts = data["hosts"]
    assert list(hosts) == list(lab.hosts)
    assert hosts["web1"] == {
        "address": "127.0.1.1",
        "groups": ["web"],
        "tags": {"dc": "ams", "role": "frontend"},
    }
    assert hosts["web2"]["tags"]["dc"] == "fra"
    assert len({h["address"] for h in hosts.values()}) == len(hosts) == 20
    assert (lab.inventory.parent / data["defaults"]["key"]).samefile(lab.key)
    lines = lab.known_hosts.read_text().splitlines()
    assert len(lines) == 20
    assert lines[0].startswith(f"[127.0.1.1]:{lab.port} ssh-ed25519 AAAA")
    assert len({line.split()[2] for line in lines}) == 20  # a host key per host
    assert lab.key.stat().st_mode & 0o077 == 0  # ssh refuses group/world-readable keys


def test_inventory_loads_with_reops_inventory(lab: LabInfo) -> None:
    inventory = pytest.importorskip("reops.core.inventory")
    inv = inventory.inventory(lab.inventory)
    assert list(inv.hosts) == list(lab.as_hosts())
    web1 = inv["web1"]
    assert (web1.address, web1.port, web1.user) == ("127.0.1.1", lab.port, lab.user)
    assert Path(web1.key).samefile(lab.key)
    assert len(inv.select("group:db")) == 5


# -- reaching the hosts -------------------------------------------------------------------


async def test_every_host_answers_over_strict_asyncssh(lab_factory: LabFactory) -> None:
    info = lab_factory(hosts=5).info
    outs = await asyncio.gather(*(run(info, name, "echo $((1+1))") for name in info.hosts))
    assert outs == ["2\n"] * 5


async def test_session_lab_serves_many_connections_at_once(lab: LabInfo) -> None:
    outs = await asyncio.gather(
        *(run(lab, name, "hostname >/dev/null; echo ok") for name in lab.hosts)
    )
    assert outs == ["ok\n"] * len(lab.hosts)


def test_openssh_client_logs_in(lab: LabInfo) -> None:
    done = openssh(lab, "db1", "echo", "$((6*7))")
    assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr


def test_sftp_upload_and_download(lab: LabInfo, tmp_path: Path) -> None:
    src, back = tmp_path / "up.txt", tmp_path / "down.txt"
    src.write_text("payload\n")
    remote = f"reops-lab-test-{os.getpid()}.txt"
    batch = f"put {src} {remote}\nget {remote} {back}\nrm {remote}\n"
    done = subprocess.run(
        [
            "sftp", "-b", "-",
            "-i", str(lab.key),
            "-o", f"UserKnownHostsFile={lab.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-F", "/dev/null",
            "-P", str(lab.port),
            f"{lab.user}@{lab.hosts['cache1']}",
        ],
        input=batch,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert back.read_text() == "payload\n"


async def test_asyncssh_sftp(lab: LabInfo, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("via asyncssh\n")
    async with await connect(lab, "web3") as conn, conn.start_sftp_client() as sftp:
        await sftp.put(str(src), "a-asyncssh.txt")
        await sftp.get("a-asyncssh.txt", str(tmp_path / "b.txt"))
        await sftp.remove("a-asyncssh.txt")
    assert (tmp_path / "b.txt").read_text() == "via asyncssh\n"


# -- destructive: one fresh lab per test ----------------------------------------------------


async def test_rotated_host_key_fails_strict_check(lab_factory: LabFactory) -> None:
    fleet = lab_factory()
    info = fleet.info
    before = info.known_hosts.read_text()
    fleet.rotate_host_key("web1")
    assert info.known_hosts.read_text() == before  # known_hosts deliberately left stale
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await run(info, "web1", "true")
    done = openssh(info, "web1", "true")
    assert done.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stderr


async def test_stopped_host_refuses_then_comes_back(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=2)
    info = fleet.info
    fleet.stop_host("web1")
    assert fleet.status() == {"web1": False, "cache1": True}
    with pytest.raises(ConnectionRefusedError):
        await run(info, "web1", "true")
    assert await run(info, "cache1", "echo up") == "up\n"  # the others are untouched
    fleet.start_host("web1")
    assert all(fleet.status().values())
    assert await run(info, "web1", "echo back") == "back\n"


async def test_stopping_a_host_drops_its_open_sessions(lab_factory: LabFactory) -> None:
    fleet = lab_factory()
    async with await connect(fleet.info, "web1") as conn:
        busy = await conn.create_process("echo $$; exec sleep 300")
        remote_pid = int(await busy.stdout.readline())
        assert running(remote_pid)
        fleet.stop_host("web1")  # like the machine going away, not like `systemctl restart`
        assert not running(remote_pid)  # the command went down with it
        with pytest.raises((asyncssh.Error, OSError)):
            await asyncio.wait_for(conn.run("echo still", check=True), 10)


def test_down_leaves_no_sshd_and_is_idempotent(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=3)
    assert len(lab_processes(fleet.root)) == 3
    fleet.stop_host("web1")
    fleet.down()
    assert lab_processes(fleet.root) == []
    assert zombie_children() == []
    assert not (fleet.root / "state.json").exists()
    assert not any(fleet.status().values())
    fleet.down()  # again: nothing to do, no error


def test_down_from_another_process(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=2)
    assert Lab.load(fleet.root).status() == {"web1": True, "cache1": True}
    code = ("import sys, pathlib, reops.lab.fleet; "
            "reops.lab.fleet.Lab.load(pathlib.Path(sys.argv[1])).down()")
    repo = Path(__file__).parent.parent
    subprocess.run([sys.executable, "-c", code, str(fleet.root)], check=True, cwd=repo)
    assert lab_processes(fleet.root) == []
    assert not any(fleet.status().values())
    with pytest.raises(LabError, match="no lab"):
        Lab.load(fleet.root)
    fleet.down()  # this process started them: it collects the exited sshd
    assert zombie_children() == []


def test_two_handles_on_one_lab_agree(lab_factory: LabFactory) -> None:
    fleet = lab_factory(hosts=2)
    other = Lab.load(fleet.root)  # as `reops lab ...` in another shell would
    other.stop_host("cache1")
    assert fleet.status() == {"web1": True, "cache1": False}
    fleet.start_host("cache1")
    assert other.status() == {"web1": True, "cache1": True}
    assert zombie_children() == []


async def test_user_lab_and_test_lab_coexist_on_other_ports(
    lab: LabInfo, lab_factory: LabFactory
) -> None:
    # same addresses as the session lab, another port: what a user's `reops lab up` does
    other = lab_factory(hosts=2, first_address="127.0.1.1").info
    assert other.port != lab.port
    assert other.hosts["web1"] == lab.hosts["web1"]
    assert await run(other, "web1", "echo user") == "user\n"
    assert await run(lab, "web1", "echo test") == "test\n"


def test_taken_address_is_reported_and_nothing_is_left_running(
    lab: LabInfo, tmp_path: Path
) -> None:
    clash = Lab(tmp_path / "clash", hosts=2, base_port=lab.port)  # 127.0.1.1-2: taken
    with pytest.raises(LabError, match="Address already in use"):
        clash.up()
    assert lab_processes(clash.root) == []
    assert not (clash.root / "state.json").exists()


def test_sshd_config_errors_are_reported(tmp_path: Path) -> None:
    class Broken(Lab):
        def _sshd_config(self, name: str, address: str) -> str:
            return super()._sshd_config(name, address) + "NoSuchOption yes\n"

    broken = Broken(tmp_path / "broken", hosts=3, first_address="127.0.252.1")
    with pytest.raises(LabError, match=r"Bad configuration option: NoSuchOption(.|\n)*config: "):
        broken.up()
    assert lab_processes(broken.root) == []
    assert zombie_children() == []


def test_up_twice_is_refused(lab_factory: LabFactory) -> None:
    fleet = lab_factory()
    with pytest.raises(LabError, match="already up"):
        Lab(fleet.root, hosts=1, first_address=fleet.first_address, base_port=fleet.port).up()
    assert all(fleet.status().values())


# -- the failure fixtures ------------------------------------------------------------------


async def test_dead_address_refuses(dead_address: tuple[str, int]) -> None:
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*dead_address)


async def test_tarpit_never_speaks(tarpit: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*tarpit)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.2)
    finally:
        writer.close()
