"""Shared fixtures: a real sshd fleet on loopback, plus hosts that hang or refuse.

Address plan (all loopback, never 127.0.0.1), so test labs never meet a user's
`reops lab up` (127.0.1.x:2222), each other, or another engineer's test session running
at the same time (hence ephemeral ports, retried when taken):

    127.0.1.x   : ephemeral   the session `lab`
    127.0.2.x   : ephemeral   the session `named_lab` (hosts named in /etc/hosts)
    127.0.3.x   : ephemeral   `bastion_lab` (targets: in its own network namespace)
    127.0.10-249: ephemeral   one /24 per `lab_factory` lab
    127.0.250.1 : ephemeral   `tarpit`
    127.0.251.1 : ephemeral   `dead_address`
    127.0.252+  : any         free for tests that build a `Lab` by hand

Set REOPS_TEST_PORT to pin the labs' port (e.g. 2322) when debugging with `ssh`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reops.lab.fleet import FIRST_ADDRESS, Lab, LabError, LabInfo

#: a fixed port for the test labs (unset: a free ephemeral port per lab)
PINNED_PORT = int(os.environ.get("REOPS_TEST_PORT", "0"))
#: how many ports to try when another process holds the one we picked
PORT_ATTEMPTS = 5
SESSION_LAB_HOSTS = 20
NAMED_LAB_HOSTS = 6
NAMED_LAB_ADDRESS = "127.0.2.1"
BASTION_LAB_HOSTS = 3
BASTION_LAB_ADDRESS = "127.0.3.1"
TARPIT_ADDRESS = "127.0.250.1"
DEAD_ADDRESS = "127.0.251.1"

LabFactory = Callable[..., Lab]


def free_port(address: str) -> int:
    """A port the kernel says is free on `address` right now (may be taken by the time
    sshd binds: callers retry)."""
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def up_on_free_port(root: Path, hosts: int, **kwargs: Any) -> Lab:
    """Bring a lab up on `base_port`, or on a free port, retrying when that one is taken."""
    first = kwargs.setdefault("first_address", FIRST_ADDRESS)
    kwargs.setdefault("names", False)  # addressed by IP unless a test asks for names=True
    pinned = kwargs.pop("base_port", PINNED_PORT)
    for attempt in range(PORT_ATTEMPTS):
        fleet = Lab(
            root / f"try{attempt}", hosts=hosts, base_port=pinned or free_port(first), **kwargs
        )
        try:
            fleet.up()
            return fleet
        except LabError as e:
            if pinned or "Address already in use" not in str(e):
                raise
    raise LabError(f"no free port for a lab on {first} after {PORT_ATTEMPTS} attempts")


@pytest.fixture(autouse=True)
def _private_history(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs a test makes (CLI, run(), flows) are recorded in a history directory of its own
    (REOPS_HISTORY_PATH, inherited by the processes it starts), never in ~/.reops."""
    monkeypatch.setenv("REOPS_HISTORY_PATH", str(tmp_path_factory.mktemp("history")))


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    """A 20-host lab shared by the whole session; do not stop or rotate its hosts."""
    fleet = up_on_free_port(tmp_path_factory.mktemp("lab"), SESSION_LAB_HOSTS)
    try:
        yield fleet.info
    finally:
        fleet.down()


@pytest.fixture(scope="session")
def named_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    """A 6-host lab (web1-3, db1, cache1-2) whose hosts have names, shared by the session.

    The inventory and known_hosts use the names (`info.names`: web1.<lab-id>.lab.reops.test,
    in /etc/hosts while it is up); `info.hosts` still maps each host to its IP address.
    Needs root (skips otherwise); do not stop or rotate its hosts."""
    if os.geteuid() != 0:
        pytest.skip("lab host names need root (/etc/hosts)")
    fleet = up_on_free_port(
        tmp_path_factory.mktemp("named-lab"), NAMED_LAB_HOSTS,
        first_address=NAMED_LAB_ADDRESS, names=True,
    )
    try:
        yield fleet.info
    finally:
        fleet.down()


@pytest.fixture(scope="session")
def bastion_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    """A bastion-mode lab shared by the session: host `bastion` (127.0.3.1) and 3 targets
    (web1, db1, cache1) in a network namespace, reachable ONLY through the bastion.

    The inventory gives every target `jump = "bastion"`; `info.ssh_config` is an OpenSSH
    client config with ProxyJump (`ssh -F ...ssh_config web1`); hosts are named as in
    `named_lab`; `info.hosts` maps each host to its IP (the targets' exist only in their
    namespace). Needs root (skips otherwise); do not stop or rotate its hosts."""
    if os.geteuid() != 0:
        pytest.skip("bastion mode needs root (a network namespace)")
    fleet = up_on_free_port(
        tmp_path_factory.mktemp("bastion-lab"), BASTION_LAB_HOSTS,
        first_address=BASTION_LAB_ADDRESS, names=True, bastion=True,
    )
    try:
        yield fleet.info
    finally:
        fleet.down()


@pytest.fixture(scope="session")
def _lab_blocks() -> Iterator[int]:
    """Third octets handed to factory labs, so no two of them share an address."""
    return itertools.count(10)


@pytest.fixture
def lab_factory(
    tmp_path_factory: pytest.TempPathFactory, _lab_blocks: Iterator[int]
) -> Iterator[LabFactory]:
    """Make fresh labs (already up) for destructive tests; all are taken down afterwards.

    `lab_factory()` gives one host; `lab_factory(hosts=5)`; any other `Lab` keyword
    (base_port, first_address, user, ...) overrides the defaults.
    """
    made: list[Lab] = []

    def make(hosts: int = 1, **kwargs: Any) -> Lab:
        if "first_address" not in kwargs:
            blocks = [next(_lab_blocks) for _ in range((hosts + 252) // 253)]
            if blocks[-1] > 249:
                raise RuntimeError("lab_factory ran out of address blocks")
            kwargs["first_address"] = f"127.0.{blocks[0]}.1"
        new = up_on_free_port(tmp_path_factory.mktemp("lab"), hosts, **kwargs)
        made.append(new)
        return new

    try:
        yield make
    finally:
        for each in made:
            each.down()


class _Tarpit:
    """A TCP listener that accepts connections and never says a word."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_server((address, 0), backlog=128)
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name="tarpit", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # shutdown() below wakes accept() up
                return
            self.accepted.append(conn)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join()
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def tarpit() -> Iterator[tuple[str, int]]:
    """(address, port) that accepts TCP but never sends an SSH banner: connect timeouts."""
    pit = _Tarpit(TARPIT_ADDRESS)
    try:
        yield pit.address
    finally:
        pit.close()


@pytest.fixture
def dead_address() -> tuple[str, int]:
    """(address, port) where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind((DEAD_ADDRESS, 0))
        return DEAD_ADDRESS, s.getsockname()[1]


@pytest.fixture(scope="session")
def pg() -> Iterator[Any]:
    """A real PostgreSQL (Debian's binaries, `tests/pg_server.py`) for the session: a
    private cluster on a unix socket dir and 127.0.0.1:<free port>, stopped (pg_ctl stop
    -m fast) and removed at the end, even when a test failed. Skips where not installed."""
    from pg_server import PgServer, pg_bin

    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg: Any) -> Iterator[str]:
    """The URL of a fresh, empty database in the session's PostgreSQL, dropped after."""
    import psycopg

    name = f"t_{os.urandom(6).hex()}"
    with psycopg.connect(pg.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield pg.url(name)
    finally:
        with psycopg.connect(pg.url(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ── helpers the tests import (one home for what several of them do) ─────────────────────


class Seen:
    """What a subscription received; `wait` blocks until a condition holds (a deadline, never
    a sleep); an error the subscription gets fails the wait at once, naming it."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def error(self, e: BaseException) -> None:
        with self._cond:
            self.errors.append(e)
            self._cond.notify_all()

    def wait(self, pred: Callable[[list[Any]], bool], what: str,
             timeout: float = 60.0) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: pred(self.items) or bool(self.errors), timeout)
            assert not self.errors, f"the subscription failed: {self.errors[0]!r}"
            assert ok, f"timed out waiting for {what}; got {self.items}"
            return list(self.items)

    def wait_error(self, timeout: float = 60.0) -> BaseException:
        with self._cond:
            assert self._cond.wait_for(lambda: bool(self.errors), timeout), self.items
            return self.errors[0]


@contextlib.contextmanager
def crashed_lab(root: Path, shows: str, **lab: Any) -> Iterator[str]:
    """A lab at `root` whose creating process was SIGKILLed right after `up`, as a crash
    leaves one (state, sshds, its namespace or /etc/hosts block): yields the line that
    `shows` (an expression over `lab` and `info`, its LabInfo) printed before the kill.
    Afterwards the creator is gone and the lab is down, whatever the test did."""
    import signal
    import subprocess
    import sys

    args = ", ".join(f"{k}={v!r}" for k, v in lab.items())
    script = ("import sys; from pathlib import Path; from reops.lab.fleet import Lab\n"
              f"lab = Lab(Path({str(root)!r}), {args})\n"
              f"info = lab.up(); print({shows}, flush=True); sys.stdin.read()\n")
    creator = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert creator.stdout is not None
        line = creator.stdout.readline().strip()
        assert line, "the lab did not come up"
        os.kill(creator.pid, signal.SIGKILL)
        creator.wait()
        yield line
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
        if (root / "state.json").exists():
            Lab.load(root).down()


def lab_down_cli(root: Path) -> None:
    """`reops lab down --dir root`, as a user runs it; it must succeed."""
    import subprocess
    import sys

    down = subprocess.run([sys.executable, "-m", "reops", "lab", "down", "--dir", str(root)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr


def as_nobody(fn: Callable[[], str]) -> str:
    """What `fn` returns when run with the effective uid of nobody (65534), in a forked
    child so this process keeps root: how a test sees what an unprivileged user gets."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read)
            os.seteuid(65534)
            os.write(write, fn().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        said = f.read()
    os.waitpid(pid, 0)
    return said
