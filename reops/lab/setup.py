"""What a machine needs before a lab can start: an sshd binary, and as root the privsep
directory and an unlocked login user whose shell is /bin/sh (cheap per command)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path


class LabError(RuntimeError):
    """The lab could not be brought up, acted on or found; the message says why."""


def sshd_binary() -> str:
    path = os.environ.get("PATH", "")
    found = shutil.which("sshd", path=f"/usr/sbin:/usr/local/sbin:/sbin:{path}")
    if not found:
        raise LabError("sshd not found (install openssh-server)")
    return os.path.abspath(found)  # sshd re-execs itself and insists on an absolute path


def ensure_root_prerequisites(user: str) -> None:
    """As root: sshd's privsep dir and an unlocked login user with a cheap shell."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    if not user_exists(user):
        try:
            run_checked(["useradd", "--system", "--create-home", "--shell", "/bin/sh", user])
        except LabError:
            if not user_exists(user):  # else another lab created it at the same moment
                raise
    # without PAM, sshd refuses accounts whose password field starts with "!" (locked);
    # useradd --system creates exactly that. "*" means: no password, but not locked.
    if shadow_password(user).startswith("!"):
        run_checked(["usermod", "--password", "*", user])


def user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def shadow_password(user: str) -> str:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1]
    except OSError:
        pass
    return ""


def run_checked(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise LabError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")
