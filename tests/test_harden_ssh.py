"""Partial failure over SSH (issue 8), against real sshd hosts: a command runs at most once,
output is bounded, odd bytes and odd files cannot break a connection or hang a step."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

from reops.core.model import Host, Line, Result
from reops.core.settings import Settings
from reops.lab.fleet import LabInfo
from reops.ops.files import download, upload
from reops.ops.shell import exec_
from reops.transports.ssh import executor as ssh_source
from reops.transports.ssh.executor import SshExecutor
from reops.transports.ssh.output import Capture, cut_marker, spill_path
from reops.transports.ssh.sftp import current_umask

T = TypeVar("T")

#: bound on every wait in these tests: generous, so a loaded machine cannot fail them
DEADLINE = 120.0
SETTINGS = Settings(connect_timeout=30.0, command_timeout=DEADLINE)


def with_executor(settings: Settings, body: Callable[[SshExecutor], Awaitable[T]]) -> T:
    """Run `body` with a fresh executor (its own pool), closed afterwards; a body that
    hangs fails the test after DEADLINE (closing the connections ends what it waits on)."""
    async def main() -> T:
        ex = SshExecutor(settings)
        task = asyncio.ensure_future(body(ex))
        try:
            done, _ = await asyncio.wait({task}, timeout=DEADLINE)
            if not done:
                raise AssertionError(f"no answer within {DEADLINE:g} s")
            return task.result()
        finally:
            await ex.close()
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=DEADLINE)
    return asyncio.run(main())


def host_of(lab: LabInfo, name: str) -> Host:
    return lab.as_hosts()[name]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def kill_if(pid: int, needle: str) -> None:
    """Kill `pid` if it is still the process we started (its cmdline has `needle`)."""
    try:
        if needle in cmdline(pid):
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


# -- 1. at most once ----------------------------------------------------------------------


def test_connection_lost_mid_command_is_lost_and_not_rerun(lab: LabInfo, tmp_path: Path
                                                          ) -> None:
    """Kill the sshd session process serving our connection while the command runs."""
    host = host_of(lab, "web2")
    marker = f"/tmp/reops-harden-marker-{os.getpid()}"
    nap = f"sleep 60.{os.getpid()}"  # only this test's command sleeps this long
    cmd = f"echo run >> {marker}; echo pids $PPID $$; exec {nap}"

    async def body(ex: SshExecutor) -> tuple[Result, Result, str]:
        pids: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        def on_line(line: Line) -> None:
            if line.stream == "out" and line.text.startswith("pids ") and not pids.done():
                pids.set_result([int(x) for x in line.text.split()[1:]])

        running = asyncio.ensure_future(ex.run(host, exec_(cmd), on_line=on_line))
        session, shell = await pids
        session_cmd = cmdline(session)
        os.kill(session, signal.SIGKILL)  # the per-connection sshd, not the listener
        result = await running
        kill_if(shell, nap)  # the orphaned command, by its own pid
        first = await ex.run(host, exec_("echo $PPID $SSH_CONNECTION"))  # a new connection
        # now a pooled connection dies while idle, unnoticed: the event loop is blocked
        # until the session process is gone, so the next command finds it dead at channel
        # open, before any exec request: that one is retried on a fresh connection
        idle_session = int(first.out.split()[0])
        fd = os.pidfd_open(idle_session)
        try:
            os.kill(idle_session, signal.SIGKILL)
            assert select.select([fd], [], [], DEADLINE)[0], "sshd session did not exit"
        finally:
            os.close(fd)
        after = await ex.run(host, exec_("echo $SSH_CONNECTION"))
        assert after.out.split()[1] != first.out.split()[2]  # another client port
        return result, after, session_cmd

    try:
        result, after, session_cmd = with_executor(SETTINGS, body)
        # a session process ("sshd: user@notty"), not the listener ("sshd -D -e -f ...")
        assert session_cmd.startswith("sshd") and " -f " not in session_cmd, session_cmd
        marks = Path(marker).read_text()
    finally:
        Path(marker).unlink(missing_ok=True)
    assert marks == "run\n", f"the command ran {marks.count('run')} times"
    assert result.status == "lost" and result.code == -1
    assert f"connection to web2 ({host.address}:{host.port}) lost mid-command" in result.err
    assert "may have run" in result.err
    assert "\n" not in result.err.strip()
    assert after.status == "ok", after.err


# -- 14. bytes, not text ------------------------------------------------------------------


def test_invalid_utf8_keeps_the_pooled_connection(lab: LabInfo) -> None:
    """A byte that is not UTF-8 fails nothing, neither its command nor its neighbour."""
    host = host_of(lab, "web3")
    fifo = f"/tmp/reops-harden-fifo-{os.getpid()}"

    async def body(ex: SshExecutor) -> tuple[Result, Result]:
        made = await ex.run(host, exec_(f"rm -f {fifo}; mkfifo {fifo}"))
        assert made.ok, made.err
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_line(line: Line) -> None:
            if line.text == "ready" and not ready.done():
                ready.set_result(None)

        # the neighbour waits on the FIFO, so it is mid-command when the bad byte comes
        neighbour = asyncio.ensure_future(ex.run(
            host, exec_(f"echo $SSH_CONNECTION; echo ready; cat {fifo}; echo after"),
            on_line=on_line))
        await ready
        bad = await ex.run(host, exec_(
            f"echo $SSH_CONNECTION; printf 'a\\377b'; printf unrelated > {fifo}"))
        await ex.run(host, exec_(f"rm -f {fifo}"))
        return bad, await neighbour

    bad, neighbour = with_executor(SETTINGS, body)
    assert bad.status == "ok", bad.err
    conn_line, text = bad.out.split("\n", 1)
    assert text == "a\ufffdb"
    assert neighbour.status == "ok", neighbour.err
    assert neighbour.out.split("\n")[2:] == ["unrelatedafter", ""]
    assert neighbour.out.split("\n")[0] == conn_line  # same connection, same client port


# -- 13. bounded output -------------------------------------------------------------------

BIG = 50_000_000
PRINT_BIG = f"head -c {BIG} /dev/zero | tr '\\0' 'a'"


def test_big_output_is_cut_to_head_and_tail(lab: LabInfo) -> None:
    host = host_of(lab, "db1")
    cmd = f"{PRINT_BIG}; echo; echo THE-END; printf 'warn\\n' >&2"
    r = with_executor(SETTINGS, lambda ex: ex.run(host, exec_(cmd)))
    assert r.status == "ok", r.err
    cap = Settings().max_output
    total = BIG + len("\nTHE-END\n")
    marker = cut_marker(total - cap, "stdout", None)
    assert marker in r.out  # the exact number of bytes left out
    assert len(r.out) == cap + len(marker)
    assert r.out.startswith("a" * (cap // 2) + marker)
    assert r.out.endswith("a\nTHE-END\n")
    assert r.err == "warn\n"  # each stream has its own cap


def test_endless_line_streams_in_bounded_pieces(lab: LabInfo) -> None:
    host = host_of(lab, "db2")
    settings = msgspec.structs.replace(SETTINGS, max_line=4096, max_output=8192)
    pieces: list[int] = []

    def on_line(line: Line) -> None:
        assert line.stream == "out"
        pieces.append(len(line.text))

    r = with_executor(settings, lambda ex: ex.run(host, exec_(PRINT_BIG), on_line=on_line))
    assert r.status == "ok", r.err
    assert max(pieces) <= 4096  # never the whole 50 MB line at once
    assert sum(pieces) == BIG  # and nothing lost
    assert len(r.out) == 8192 + len(cut_marker(BIG - 8192, "stdout", None))


def test_spill_keeps_every_byte(lab: LabInfo, tmp_path: Path) -> None:
    host = host_of(lab, "db3")
    spill = tmp_path / "spill"
    settings = msgspec.structs.replace(SETTINGS, max_output=1000, output_spill=str(spill))
    r = with_executor(settings, lambda ex: ex.run(host, exec_("seq 1 20000; echo oops >&2")))
    assert r.status == "ok", r.err
    [file] = list((spill / "db3").iterdir())
    full = "".join(f"{i}\n" for i in range(1, 20001)).encode()
    assert file.read_bytes() == full
    assert cut_marker(len(full) - 1000, "stdout", file) in r.out
    assert stat.S_IMODE((spill / "db3").stat().st_mode) == 0o700
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert r.err == "oops\n"  # under the cap: no spill file for stderr


def test_spill_that_cannot_be_written_is_said(tmp_path: Path) -> None:
    """Pure: an unusable spill directory costs the spill, not the step, and the text says so."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cap = Capture(4, "stderr", lambda: spill_path(str(blocker), "h1", "exec", "stderr"))
    cap.feed(b"0123456789")
    cap.close()
    assert cap.text().startswith("01\n… [reops: cut 6 bytes of stderr; could not keep all of")
    assert cap.text().endswith("raise max_output] …\n89")


def test_cut_never_splits_a_character() -> None:
    """Pure: a cut through multi-byte UTF-8 drops whole characters and counts their bytes."""
    cap = Capture(11, "stdout")
    data = "é".encode() * 1000  # 2 bytes each; head 5 and tail 6 bytes cut mid-character
    for i in range(0, len(data), 7):
        cap.feed(data[i:i + 7])
    text = cap.text()
    assert "\ufffd" not in text
    assert text == "éé" + cut_marker(2000 - 10, "stdout", None) + "ééé"


# -- 17. transfers that cannot finish -----------------------------------------------------


def test_transfers_to_and_from_a_fifo_time_out(lab: LabInfo, tmp_path: Path) -> None:
    host = host_of(lab, "cache1")
    fifo = f"/tmp/reops-harden-fifo-dl-{os.getpid()}"
    fifo_up = f"/tmp/reops-harden-fifo-up-{os.getpid()}"
    settings = msgspec.structs.replace(SETTINGS, command_timeout=2.0)

    async def body(ex: SshExecutor) -> tuple[Result, Result, Result]:
        made = await ex.run(host, exec_(f"rm -f {fifo} {fifo_up}; mkfifo {fifo} {fifo_up}"))
        assert made.ok, made.err
        got = await ex.run(host, download(fifo, str(tmp_path / "dl")))
        put = await ex.run(host, upload(__file__, fifo_up))  # a writer waits for a reader
        # unblock the server's stuck sftp children, then clean up
        after = await ex.run(host, exec_(
            f"timeout 5 sh -c 'echo x > {fifo}'; timeout 5 cat {fifo_up} >/dev/null; "
            f"rm -f {fifo} {fifo_up}; echo alive"))
        return got, put, after

    got, put, after = with_executor(settings, body)
    assert got.status == "timeout" and got.code == -1, got.err
    assert f"cache1:{fifo}" in got.err and "timed out after 2 s" in got.err
    assert put.status == "timeout" and f"cache1:{fifo_up}" in put.err, put.err
    assert after.status == "ok" and after.out.endswith("alive\n")  # connection still good


# -- 12. downloads cannot plant setuid files ------------------------------------------------


def test_download_drops_setuid_and_keeps_host_dir_private(lab: LabInfo, tmp_path: Path
                                                          ) -> None:
    host = host_of(lab, "cache2")
    remote = f"/tmp/reops-harden-suid-{os.getpid()}"

    async def body(ex: SshExecutor) -> Result:
        made = await ex.run(host, exec_(f"printf x > {remote}; chmod 6777 {remote}; "
                                        f"stat -c %a {remote}"))
        assert made.out == "6777\n", made.out + made.err
        try:
            return await ex.run(host, download(remote, str(tmp_path / "dl")))
        finally:
            await ex.run(host, exec_(f"rm -f {remote}"))

    r = with_executor(SETTINGS, body)
    assert r.status == "ok", r.err
    local = Path(r.out)
    assert local.read_text() == "x"
    assert stat.S_IMODE(local.stat().st_mode) == 0o777 & ~current_umask()
    assert stat.S_IMODE((tmp_path / "dl" / "cache2").stat().st_mode) == 0o700


# -- 18. fleet-size traps -------------------------------------------------------------------


def test_accept_new_parses_known_hosts_once(lab: LabInfo, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = tmp_path / "known_hosts"
    hosts = [msgspec.structs.replace(h, known_hosts=str(fresh)) for h in lab.as_hosts()]
    parses: list[str] = []
    real = ssh_source.asyncssh.read_known_hosts

    def counting(path: str) -> object:
        parses.append(path)
        return real(path)

    monkeypatch.setattr(ssh_source.asyncssh, "read_known_hosts", counting)
    settings = msgspec.structs.replace(SETTINGS, host_key_checking="accept-new", forks=2)

    async def body(ex: SshExecutor) -> tuple[list[Result], int]:
        first = await asyncio.gather(*(ex.run(h, exec_("true")) for h in hosts))
        return list(first), len(ex.pool._caches.options)

    results, options = with_executor(settings, body)
    assert [r.status for r in results] == ["ok"] * len(hosts)
    assert len(fresh.read_text().splitlines()) == len(hosts)
    assert len(parses) <= 2, f"known_hosts parsed {len(parses)} times for {len(hosts)} hosts"
    assert options <= 2, f"{options} option sets for one login"
    strict = msgspec.structs.replace(SETTINGS, host_key_checking="strict")
    again = with_executor(strict, lambda ex: asyncio.gather(
        *(ex.run(h, exec_("true")) for h in hosts)))
    assert [r.status for r in again] == ["ok"] * len(hosts)  # the entries are right


def test_pool_never_holds_more_than_forks(lab: LabInfo) -> None:
    hosts = list(lab.as_hosts())
    forks = 3
    settings = msgspec.structs.replace(SETTINGS, forks=forks)
    seen: list[int] = []

    async def body(ex: SshExecutor) -> tuple[list[Result], int]:
        def on_line(line: Line) -> None:  # sampled while commands run
            seen.append(len(ex.pool._pool) + len(ex.pool._connecting))

        results = await asyncio.gather(*(ex.run(h, exec_("echo hi"), on_line=on_line)
                                         for h in hosts))
        return list(results), len(ex.pool._pool)

    results, left = with_executor(settings, body)
    assert [r.status for r in results] == ["ok"] * len(hosts)
    assert len(seen) == len(hosts)
    assert max(seen) <= forks and left <= forks
