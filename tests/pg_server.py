"""A throwaway PostgreSQL for the tests: Debian's own binaries, a private cluster.

`initdb` into a fresh 0700 directory (as the `postgres` user when we are root: initdb
refuses root), `pg_ctl start -w` on a private unix socket directory and 127.0.0.1 on a
free port, password auth (scram) for the `reops` superuser. `pg_ctl -w` waits until the
server accepts connections (it polls like pg_isready, with a deadline); `stop` is
`pg_ctl stop -m fast` and removes the directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: seconds pg_ctl waits for the server to start or stop
PG_WAIT = 60


def pg_bin() -> Path | None:
    """Where Debian's PostgreSQL binaries are (the newest major version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(bindir: Path) -> None:
    """Stop and remove the clusters of test sessions that died without stopping theirs
    (killed by a timeout or SIGKILL): those whose owner process is gone. Live sessions'
    clusters (other engineers', other runs) are left alone."""
    for owner in Path(tempfile.gettempdir()).glob("reops-pg-*/owner.pid"):
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            continue
        data = owner.parent / "data"
        if (data / "postmaster.pid").exists():
            user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run([*user, str(bindir / "pg_ctl"), "stop", "-w", "-t", str(PG_WAIT),
                            "-m", "immediate", "-D", str(data)], capture_output=True,
                           timeout=PG_WAIT + 30, stdin=subprocess.DEVNULL, check=False)
        shutil.rmtree(owner.parent, ignore_errors=True)


class PgServer:
    """One private PostgreSQL cluster; `url(db)` for a database in it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="reops-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        self._user: str | None = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PG_WAIT + 30,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):"
                               f" {done.stdout}{done.stderr}\n{tail}")
        return done

    def start(self) -> None:
        sweep(self.bindir)
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.sockets.mkdir()
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user:
            pw = pwd.getpwnam(self._user)
            for p in (self.root, self.sockets, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data), "-U", "reops", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        for _attempt in range(5):  # the free port may be taken before postgres binds it
            self.port = _free_port()
            opts = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
                    " -c fsync=off -c full_page_writes=off -c max_connections=100")
            try:
                self._run("pg_ctl", "start", "-w", "-t", str(PG_WAIT), "-D", str(self.data),
                          "-l", str(self.log), "-o", opts)
                return
            except RuntimeError as e:
                if "could not bind" not in str(e) and "in use" not in str(e):
                    raise
        raise RuntimeError("no free port for PostgreSQL after 5 attempts")

    def url(self, db: str = "postgres", tcp: bool = False) -> str:
        if tcp:
            return f"postgresql://reops:{self.password}@127.0.0.1:{self.port}/{db}"
        return (f"postgresql://reops:{self.password}@/{db}"
                f"?host={self.sockets}&port={self.port}")

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every client connection is dropped."""
        self._run("pg_ctl", "restart", "-w", "-t", str(PG_WAIT), "-m", "fast",
                  "-D", str(self.data), "-l", str(self.log))

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-t", str(PG_WAIT), "-m", "fast",
                          "-D", str(self.data))
        shutil.rmtree(self.root, ignore_errors=True)
