"""Packages: one detect-and-act script per op, parsers over captured and sample outputs.

Write paths never touch this machine's packages: they run against stand-in `apk` and
`pacman` executables (a PATH with only those and the coreutils the scripts use), which
record their arguments and keep a package list in a file. The real apt read path (the
installed-package query, and no-op install/remove) runs against this Debian 12 host.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reops.core.model import Host
from reops.ops import pkg
from reops.ops.base import Op
from reops.ops.text import EX_UNAVAILABLE

DATA = Path(__file__).parent / "data" / "ops"
HOST = Host(name="h1", address="10.0.0.1")
TOOLS = ("sh", "cksum", "grep", "awk", "mktemp", "find", "head", "rm", "cat", "mv", "tail")

FAKE_APK = r"""#!/bin/sh
echo "apk $*" >> "$FAKE_LOG"
case "$1" in
  info) [ "$2" = -e ] && grep -q "^$3-[^-]*-r[0-9]* " "$FAKE_STATE" ;;
  list) cat "$FAKE_STATE" ;;
  add) shift
       for p; do case $p in nosuch*) echo "ERROR: unable to select packages:" >&2
                 echo "  $p (no such package)" >&2; exit 1 ;; esac; done
       for p; do echo "$p-1.0-r0 x86_64 {$p} (MIT) [installed]" >> "$FAKE_STATE"; done ;;
  del) shift
       for p; do grep -v "^$p-[^-]*-r[0-9]* " "$FAKE_STATE" > "$FAKE_STATE.new"
                 mv "$FAKE_STATE.new" "$FAKE_STATE"; done ;;
  update) echo "OK: 23000 distinct packages available" ;;
  upgrade) sed_free=$(grep -v '^musl-' "$FAKE_STATE"); echo "$sed_free" > "$FAKE_STATE"
           echo "musl-1.2.5-r0 x86_64 {musl} (MIT) [installed]" >> "$FAKE_STATE" ;;
esac
"""

FAKE_PACMAN = r"""#!/bin/sh
echo "pacman $*" >> "$FAKE_LOG"
case "$1" in
  -Q) if [ -n "$2" ]; then grep -q "^$2 " "$FAKE_STATE"; else cat "$FAKE_STATE"; fi ;;
  -S) shift; for p; do case $p in -*) continue ;; esac
                         echo "$p 1.0-1" >> "$FAKE_STATE"; done ;;
  -R) shift; for p; do grep -v "^$p " "$FAKE_STATE" > "$FAKE_STATE.new"
                         mv "$FAKE_STATE.new" "$FAKE_STATE"; done ;;
  -Sy|-Syu) echo ":: Synchronizing package databases..." ;;
esac
"""


class Fake:
    """A host whose only package manager is a stand-in; runs pkg scripts against it."""

    def __init__(self, root: Path, manager: str | None, state: str = "") -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        for tool in TOOLS:
            for d in ("/usr/bin", "/bin"):
                if os.path.exists(f"{d}/{tool}"):
                    os.symlink(f"{d}/{tool}", self.bin / tool)
                    break
        if manager:
            script = {"apk": FAKE_APK, "pacman": FAKE_PACMAN}[manager]
            (self.bin / manager).write_text(script)
            (self.bin / manager).chmod(0o755)
        self.state = root / "state"
        self.state.write_text(state)
        self.log = root / "log"
        self.log.write_text("")

    def run(self, op: Op) -> tuple[int, str, str]:
        env = {"PATH": str(self.bin), "FAKE_STATE": str(self.state), "FAKE_LOG": str(self.log)}
        p = subprocess.run([str(self.bin / "sh"), "-c", op.command_for(HOST)],
                           capture_output=True, text=True, env=env, timeout=60)
        return p.returncode, p.stdout, p.stderr

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


def changed(op: Op, code: int, out: str) -> bool | None:
    assert op.changed is not None
    return op.changed(code, out)


# --- command generation ---

@pytest.mark.parametrize(("op", "lines"), [
    (pkg.install("nginx", "curl"), [
        'for p in nginx curl; do is_installed "$p" || todo="$todo $p"; done',
        "  apt) DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 install"
        " -y -q $todo ;;",
        "  dnf) dnf install -y $todo ;;",
        "  apk) apk add $todo ;;",
        "  zypper) zypper --non-interactive install $todo ;;",
        "  pacman) pacman -S --needed --noconfirm $todo ;;",
    ]),
    (pkg.install("nginx", refresh=True), ["  apt) apt-get update -q ;;"]),
    (pkg.remove("telnet"), [
        'for p in telnet; do is_installed "$p" && todo="$todo $p"; done',
        "  yum) yum remove -y $todo ;;",
        "  apk) apk del $todo ;;",
    ]),
    (pkg.upgrade(), ["  apt) DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60"
                     " upgrade -y -q ;;",
                     "  pacman) pacman -Syu --noconfirm ;;"]),
    (pkg.upgrade(dist=True), ["  apt) DEBIAN_FRONTEND=noninteractive apt-get -o "
                              "DPkg::Lock::Timeout=60 dist-upgrade -y -q ;;",
                              "  dnf) dnf distro-sync -y ;;"]),
    (pkg.update(), ["  apt) apt-get update -q ;;",
                    "  zypper) zypper --non-interactive refresh ;;"]),
    (pkg.installed(), ['echo "::reops:: packages"', "  pacman) pacman -Q ;;"]),
])
def test_script_lines(op: Op, lines: list[str]) -> None:
    cmd = op.command_for(HOST)
    assert cmd.startswith("set -f\nif command -v apt-get >/dev/null 2>&1; then pm=apt\n")
    for line in lines:
        assert line in cmd.splitlines()


def test_sudo_wraps_the_whole_script() -> None:
    cmd = pkg.install("nginx", sudo=True).command_for(HOST)
    assert cmd.startswith("sudo -n -- sh -c 'set -f\n")
    cmd = pkg.installed(become_user="app").command_for(HOST)
    assert cmd.startswith("sudo -n -u app -- sh -c ")


@pytest.mark.parametrize("bad", [(), ("-y",), ("a b",), ("",)])
def test_bad_package_names_are_refused(bad: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        pkg.install(*bad)


# --- parsers over captured (real) and hand-written (sample) outputs ---

@pytest.mark.parametrize(("fixture", "manager", "count", "some"), [
    ("real-debian12-pkg-installed.txt", "apt", 923,
     pkg.Package(name="bash", version="5.2.15-2+b8", arch="amd64", manager="apt")),
    ("sample-alpine319-pkg-installed.txt", "apk", 5,
     pkg.Package(name="musl", version="1.2.4_git20230717-r4", arch="x86_64", manager="apk")),
    ("sample-alpine319-pkg-installed.txt", "apk", 5,
     pkg.Package(name="openssh-server", version="9.6_p1-r0", arch="x86_64", manager="apk")),
    ("sample-fedora39-pkg-installed.txt", "dnf", 3,
     pkg.Package(name="openssl-libs", version="3.1.1-4.fc39", arch="x86_64", manager="dnf")),
    ("sample-arch-pkg-installed.txt", "pacman", 3,
     pkg.Package(name="linux", version="6.7.4.arch1-1", manager="pacman")),
])
def test_parse_installed(fixture: str, manager: str, count: int, some: pkg.Package) -> None:
    out = (DATA / fixture).read_text()
    rows = pkg.parse_installed(out)
    assert len(rows) == count
    assert {r.manager for r in rows} == {manager}
    assert some in rows
    assert pkg.manager_of(out) == manager


def test_installed_filters_by_name() -> None:
    out = (DATA / "real-debian12-pkg-installed.txt").read_text()
    op = pkg.installed("bash", "dash", "not-a-package")
    assert op.parse is not None
    assert [p.name for p in op.parse(out)] == ["bash", "dash"]


# --- this host (Debian 12, apt): read path and no-op writes, for real ---

def test_installed_on_this_host() -> None:
    op = pkg.installed("bash", "dpkg")
    p = subprocess.run(["sh", "-c", op.command_for(HOST)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert op.parse is not None
    rows = op.parse(p.stdout)
    assert [r.name for r in rows] == ["bash", "dpkg"]
    assert all(r.manager == "apt" and r.version and r.arch for r in rows)


@pytest.mark.parametrize("op", [pkg.install("bash", "dash"),
                                pkg.remove("reops-no-such-package")])
def test_noop_writes_on_this_host_do_not_call_apt(op: Op) -> None:
    p = subprocess.run(["sh", "-c", op.command_for(HOST)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "::reops:: manager\napt\n::reops:: unchanged\n"
    assert changed(op, p.returncode, p.stdout) is False


# --- write paths against stand-in managers ---

def test_no_package_manager_is_a_clear_failure(tmp_path: Path) -> None:
    code, out, err = Fake(tmp_path, None).run(pkg.install("nginx"))
    assert code == EX_UNAVAILABLE
    assert err == ("reops: no supported package manager found "
                   "(looked for apt-get, dnf, yum, apk, zypper, pacman)\n")
    assert out == ""


APK_STATE = ("busybox-1.36.1-r15 x86_64 {busybox} (GPL-2.0-only) [installed]\n"
             "musl-1.2.4-r2 x86_64 {musl} (MIT) [installed]\n")


def test_apk_install_only_missing_then_noop(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "apk", APK_STATE)
    op = pkg.install("busybox", "nginx", "curl")
    code, out, err = fake.run(op)
    assert code == 0, err
    assert changed(op, code, out) is True
    assert "apk add nginx curl" in fake.calls()
    code, out, _ = fake.run(op)
    assert changed(op, code, out) is False
    assert fake.calls()[-1].startswith("apk info -e")  # no second `apk add`


def test_apk_install_unknown_package_fails_with_the_managers_error(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "apk", APK_STATE)
    code, _, err = fake.run(pkg.install("nosuchpkg"))
    assert code == 1 and "nosuchpkg (no such package)" in err


def test_apk_remove_upgrade_update(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "apk", APK_STATE)
    rm = pkg.remove("musl", "absent")
    code, out, _ = fake.run(rm)
    assert (code, changed(rm, code, out)) == (0, True)
    assert "apk del musl" in fake.calls()
    code, out, _ = fake.run(rm)
    assert (code, changed(rm, code, out)) == (0, False)
    up = pkg.upgrade()
    code, out, _ = fake.run(up)
    assert (code, changed(up, code, out)) == (0, True)  # musl came back at a new version
    code, out, _ = fake.run(up)
    assert (code, changed(up, code, out)) == (0, False)
    upd = pkg.update()
    code, out, _ = fake.run(upd)
    assert code == 0 and changed(upd, code, out) is False and "apk update" in fake.calls()


def test_pacman_install_and_installed(tmp_path: Path) -> None:
    fake = Fake(tmp_path, "pacman", "bash 5.2.026-2\n")
    op = pkg.install("bash", "vim")
    code, out, _ = fake.run(op)
    assert (code, changed(op, code, out)) == (0, True)
    assert "pacman -S --needed --noconfirm vim" in fake.calls()
    q = pkg.installed()
    code, out, _ = fake.run(q)
    assert q.parse is not None
    assert q.parse(out) == [pkg.Package(name="bash", version="5.2.026-2", manager="pacman"),
                            pkg.Package(name="vim", version="1.0-1", manager="pacman")]
