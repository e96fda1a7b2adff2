"""Each lab host's own view of the filesystem: its sshd runs in a private mount namespace.

As root, every host's sshd starts under `unshare --mount --propagation private` and a few
bind mounts, so what a session sees is that host's own:

  always     /run (pidfiles, sudo's timestamps, /run/sshd), /etc/init.d (the lab's
             services), /etc/sudoers.d (the lab's drop-in) and /etc/shadow (a copy in
             which the lab's password user has this lab's password)
  private_fs /tmp, the lab users' homes and /etc/motd as well: `files sync`, `changed`
             and a file in /tmp are per host (and invisible to the controller)

Root on a lab host is root on this machine, so the lab keeps it from changing the machine:
in the host's namespace every mount is read-only except what must stay writable (the lab
root, and with a shared filesystem /tmp and the lab users' homes), /etc and /opt are the
host's own overlays (`template(..., "/etc/app.conf", sudo=True)` writes that host's copy;
the machine's /etc is untouched), and sshd starts without the capabilities to undo that or
to take the machine down (CAP_SYS_ADMIN, SYS_BOOT, SYS_MODULE, SYS_TIME, SYS_RAWIO,
NET_ADMIN): `apt-get upgrade`, `reboot` or `mount` as root on a lab host fail.

Nothing is mounted in the controller's namespace: the mounts live and die with the host's
sshd and everything its sessions started (`namespace_pidfds` finds those for `stop`, even
daemons that left the process tree), so `lab down` leaves no mount behind. pytest's tmp
dirs (lab roots) live under /tmp: before a bind hides the directory holding the lab root,
the lab root is bound at the same path inside the host's private copy, so sshd still
reaches its config, host key, pidfile and AuthorizedKeysCommand file.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
from collections.abc import Iterable
from pathlib import Path

from reops.lab.procs import pidfd
from reops.lab.setup import LabError

#: a bind mount: (what, where) — `where` must exist (a directory or a file)
Bind = tuple[Path, Path]
#: system directories each host gets its own writable copy of (an overlay on the machine's)
OVERLAID = (Path("/etc"), Path("/opt"))
#: what root on a lab host may not do: undo the mounts, reboot, load modules, set the clock
DROPPED_CAPS = ("sys_admin", "sys_boot", "sys_module", "sys_time", "sys_rawio", "net_admin")


def fs_dir(host_dir: Path) -> Path:
    """Where a host's private copies of /tmp, /run, homes and /etc/motd live."""
    return host_dir / "fs"


def reset(host_dir: Path) -> None:
    """Forget a host's private files (its /tmp, home, /etc and /opt changes …)."""
    shutil.rmtree(fs_dir(host_dir), ignore_errors=True)


def host_binds(root: Path, host_dir: Path, name: str, homes: Iterable[tuple[str, Path]],
               *, private_fs: bool) -> list[Bind]:
    """Make host `name`'s private directories under `host_dir` and say what to bind where.

    `homes`: (user, home directory) of the lab's login users.
    """
    fs = fs_dir(host_dir)
    run = fs / "run"
    (run / "sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation chroot
    run.chmod(0o755)
    binds: list[Bind] = [
        (run, Path("/run")),
        *((src, dst) for src, dst in (
            (root / "etc" / "init.d", Path("/etc/init.d")),
            (root / "etc" / "sudoers.d", Path("/etc/sudoers.d")),
            (root / "etc" / "shadow", Path("/etc/shadow")),
        ) if src.exists() and dst.exists()),  # no sudo installed: the machine's own
    ]
    if private_fs:
        tmp = fs / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o1777)
        binds.append((tmp, Path("/tmp")))
        for user, home in homes:
            mine = fs / "home" / user
            mine.mkdir(parents=True, exist_ok=True)
            entry = pwd.getpwnam(user)
            os.chown(mine, entry.pw_uid, entry.pw_gid)
            mine.chmod(0o755)
            if home.is_dir():
                binds.append((mine, home))
        motd = fs / "etc" / "motd"
        motd.parent.mkdir(parents=True, exist_ok=True)
        motd.write_text(f"reops lab host {name}: its own /tmp, home and /etc/motd\n")
        if Path("/etc/motd").is_file():
            binds.append((motd, Path("/etc/motd")))
    return binds


def writable(root: Path, homes: Iterable[tuple[str, Path]], *, private_fs: bool
             ) -> list[Path]:
    """What stays writable in a host's read-only view: the lab root, and with a shared
    filesystem the machine's /tmp and the lab users' homes (older tests write there)."""
    keep = [Path(os.path.realpath(root))]
    if not private_fs:
        keep += [Path("/tmp"), *(home for _, home in homes if home.is_dir())]
    return keep


def overlays(host_dir: Path) -> list[tuple[Path, Path, Path]]:
    """(upper, work, where) of the host's own copies of /etc and /opt."""
    out = []
    for where in OVERLAID:
        if where.is_dir():
            base = fs_dir(host_dir) / "overlay" / where.name
            (base / "upper").mkdir(parents=True, exist_ok=True)
            (base / "work").mkdir(parents=True, exist_ok=True)
            out.append((base / "upper", base / "work", where))
    return out


def launcher(root: Path, binds: list[Bind], keep: list[Path],
             layers: list[tuple[Path, Path, Path]]) -> tuple[str, list[str]]:
    """(program, argv prefix) that makes a private mount namespace, mounts `binds` on a
    read-only view of the machine (but `keep`, and the overlays `layers`), drops
    DROPPED_CAPS, then execs the rest of its argv (sshd: the same pid all along, so
    readiness and stop work).

    A bind that would hide the lab root first gets the lab root bound inside it."""
    found = {p: shutil.which(p, path="/usr/bin:/bin:/usr/sbin:/sbin")
             for p in ("unshare", "setpriv")}
    if None in found.values():
        raise LabError("unshare/setpriv not found (install util-linux): the lab needs them "
                       "as root")
    unshare, setpriv = str(found["unshare"]), str(found["setpriv"])
    real_root = Path(os.path.realpath(root))
    q = shlex.quote
    lines = ["set -e"]
    keep = sorted(keep, key=lambda p: len(p.parts))  # a parent first: it would hide a child
    lines += [f"mount --bind {q(str(p))} {q(str(p))}" for p in keep]
    skip = "|".join(q(str(p)) for p in keep)
    lines += [  # every other mount read-only (devices stay writable: /dev/null …)
        "while read -r _ _ _ _ mp _; do",
        f'  case $mp in /dev|/dev/*|*\\*|{skip}) continue ;; esac',
        '  mount -o remount,bind,ro "$mp" 2>/dev/null || :',
        "done < /proc/self/mountinfo",
    ]
    lines += [f"mount -t overlay overlay -o "
              f"{q(f'lowerdir={where},upperdir={upper},workdir={work}')} {q(str(where))}"
              for upper, work, where in layers]
    for src, dst in binds:
        if dst.is_dir() and real_root.is_relative_to(dst):
            inner = src / real_root.relative_to(dst)
            inner.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount --bind {q(str(real_root))} {q(str(inner))}")
            lines.append(f"mount --rbind {shlex.quote(str(src))} {shlex.quote(str(dst))}")
        else:
            lines.append(f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))}")
    drop = ",".join(f"-{c}" for c in DROPPED_CAPS)
    lines.append(f'exec {q(setpriv)} --bounding-set {drop} -- "$@"')
    return unshare, [unshare, "--mount", "--propagation", "private", "--",
                     "/bin/sh", "-c", "\n".join(lines), "reops-lab-host"]


def mount_namespace(pid: int) -> str | None:
    """The mount namespace of `pid` (e.g. 'mnt:[4026532301]'), None when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def namespace_pidfds(sshd_pids: Iterable[int], skip: set[int]) -> dict[int, int]:
    """pidfd -> pid of every process in the mount namespaces of `sshd_pids` other than
    ours and those in `skip`: what a host's sessions left running (daemons started by an
    init script leave sshd's process tree, not its namespace)."""
    mine = mount_namespace(os.getpid())
    wanted = {ns for p in sshd_pids if (ns := mount_namespace(p)) is not None and ns != mine}
    if not wanted:
        return {}
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        pid = int(entry.name)
        if mount_namespace(pid) not in wanted:
            continue
        fd = pidfd(pid)
        if fd is None:
            continue
        if mount_namespace(pid) in wanted:  # still the same process (not a reused pid)
            out[fd] = pid
        else:
            os.close(fd)
    return out
