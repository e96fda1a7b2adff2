"""Packages: update, upgrade, install, remove and query with whatever manager a host has.

Each op is one script that detects the manager with `command -v` (apt, dnf, yum, apk,
zypper, pacman) and then runs that manager's branch, so a mixed fleet needs one round
trip per host and no fact-gathering step. Writes are idempotent: `install` skips packages
already present, and `changed` comes from comparing the installed-package list before and
after, so it is honest whatever the manager prints. A host with none of the managers fails
with exit code 69 and a `reops: no supported package manager …` err.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import msgspec

from reops.ops.base import Op, Parser
from reops.ops.check import QUERY, Check, CheckReport
from reops.ops.text import (
    CHANGED,
    EX_UNAVAILABLE,
    UNCHANGED,
    changed_marker,
    fail,
    marker,
    script,
    sections,
    words,
)

Changed = Callable[[int, str], bool | None]

#: apt-get that never prompts and waits (like Ansible) for a held dpkg lock
#: (unattended-upgrades) instead of failing at once
APT_GET = "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60"

MANAGERS: tuple[str, ...] = ("apt", "dnf", "yum", "apk", "zypper", "pacman")

#: detects the manager into $pm and reports it in a `manager` section
DETECT = script(
    "set -f",
    "if command -v apt-get >/dev/null 2>&1; then pm=apt",
    "elif command -v dnf >/dev/null 2>&1; then pm=dnf",
    "elif command -v yum >/dev/null 2>&1; then pm=yum",
    "elif command -v apk >/dev/null 2>&1; then pm=apk",
    "elif command -v zypper >/dev/null 2>&1; then pm=zypper",
    "elif command -v pacman >/dev/null 2>&1; then pm=pacman",
    "else "
    + fail(EX_UNAVAILABLE, "no supported package manager found "
           "(looked for apt-get, dnf, yum, apk, zypper, pacman)"),
    "fi",
    marker("manager"),
    'echo "$pm"',
)

#: one line per installed package; apt and rpm print name<TAB>version<TAB>arch
LIST = {
    "apt": "dpkg-query -W -f='${db:Status-Abbrev}\\t${Package}\\t${Version}\\t${Architecture}\\n'"
           " | awk -F'\\t' '$1 ~ /^ii/ {print $2 \"\\t\" $3 \"\\t\" $4}'",
    "dnf": "rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n'",
    "yum": "rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n'",
    "apk": "apk list --installed 2>/dev/null",
    "zypper": "rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n'",
    "pacman": "pacman -Q",
}

#: exit 0 iff package "$1" is installed
IS_INSTALLED = {
    "apt": "dpkg-query -W -f='${db:Status-Abbrev}' \"$1\" 2>/dev/null | grep -q '^ii'",
    "dnf": 'rpm -q --quiet "$1"',
    "yum": 'rpm -q --quiet "$1"',
    "apk": 'apk info -e "$1" >/dev/null 2>&1',
    "zypper": 'rpm -q --quiet "$1"',
    "pacman": 'pacman -Q "$1" >/dev/null 2>&1',
}

#: prints the installed version of package "$1" (nothing when it is not installed)
VERSION_OF = {
    "apt": "dpkg-query -W -f='${db:Status-Abbrev} ${Version}' \"$1\" 2>/dev/null"
           " | awk '$1 ~ /^ii/ {print $2}'",
    "dnf": 'rpm -q --quiet "$1" && rpm -q --qf "%{VERSION}-%{RELEASE}" "$1"',
    "yum": 'rpm -q --quiet "$1" && rpm -q --qf "%{VERSION}-%{RELEASE}" "$1"',
    "apk": 'apk info -e "$1" >/dev/null 2>&1 && apk list --installed "$1" 2>/dev/null'
           " | awk '{print $1}' | head -n 1",
    "zypper": 'rpm -q --quiet "$1" && rpm -q --qf "%{VERSION}-%{RELEASE}" "$1"',
    "pacman": "pacman -Q \"$1\" 2>/dev/null | awk '{print $2}'",
}

UPDATE = {
    "apt": "apt-get update -q",
    "dnf": "dnf makecache -y",
    "yum": "yum makecache -y",
    "apk": "apk update",
    "zypper": "zypper --non-interactive refresh",
    "pacman": "pacman -Sy --noconfirm",
}

#: where each manager keeps its index, to tell whether `update` fetched anything
CACHE_DIR = {
    "apt": "/var/lib/apt/lists",
    "dnf": "/var/cache/dnf",
    "yum": "/var/cache/yum",
    "apk": "/var/cache/apk /lib/apk/db",
    "zypper": "/var/cache/zypp",
    "pacman": "/var/lib/pacman/sync",
}

UPGRADE = {
    "apt": f"{APT_GET} upgrade -y -q",
    "dnf": "dnf upgrade -y",
    "yum": "yum update -y",
    "apk": "apk upgrade",
    "zypper": "zypper --non-interactive update",
    "pacman": "pacman -Syu --noconfirm",
}

DIST_UPGRADE = {**UPGRADE, "apt": f"{APT_GET} dist-upgrade -y -q",
                "dnf": "dnf distro-sync -y", "apk": "apk upgrade --available",
                "zypper": "zypper --non-interactive dist-upgrade"}

INSTALL = {
    "apt": f"{APT_GET} install -y -q $todo",
    "dnf": "dnf install -y $todo",
    "yum": "yum install -y $todo",
    "apk": "apk add $todo",
    "zypper": "zypper --non-interactive install $todo",
    "pacman": "pacman -S --needed --noconfirm $todo",
}

REMOVE = {
    "apt": f"{APT_GET} remove -y -q $todo",
    "dnf": "dnf remove -y $todo",
    "yum": "yum remove -y $todo",
    "apk": "apk del $todo",
    "zypper": "zypper --non-interactive remove $todo",
    "pacman": "pacman -R --noconfirm $todo",
}


class Package(msgspec.Struct, frozen=True, kw_only=True):
    """One installed package (a row in a polars table)."""

    name: str
    version: str
    arch: str = ""
    manager: str = ""


def case(branches: Mapping[str, str], indent: str = "  ") -> str:
    """A `case $pm in … esac` running the branch for the detected manager."""
    arms = [f"{indent}{pm}) {cmd} ;;" for pm, cmd in branches.items()]
    return "\n".join(["case $pm in", *arms, "esac"])


def _function(name: str, branches: Mapping[str, str]) -> str:
    body = "\n".join("  " + line for line in case(branches).splitlines())
    return f"{name}() {{\n{body}\n}}"


def _list_changed(body: str) -> str:
    """Run `body` between two fingerprints of the package list; report changed/unchanged."""
    return script(
        _function("pkg_list", LIST),
        "before=$(pkg_list | cksum)",
        body,
        "after=$(pkg_list | cksum)",
        f'if [ "$before" = "$after" ]; then {UNCHANGED}; else {CHANGED}; fi',
    )


def _op(name: str, body: str, sudo: bool, become_user: str | None, *, parse: Parser,
        changed: Changed | None = None) -> Op:
    return Op(name=name, command=script(DETECT, body), sudo=sudo, become_user=become_user,
              parse=parse, changed=changed)


def manager_of(out: str) -> str:
    """The manager a pkg script detected (from its `manager` section)."""
    return sections(out).get("manager", "").strip()


def update(*, sudo: bool = False, become_user: str | None = None) -> Op:
    """Refresh the package index; `changed` when the manager fetched new index files."""
    body = script(
        "stamp=$(mktemp) || exit",
        f"{case(UPDATE)} || {{ rc=$?; rm -f \"$stamp\"; exit $rc; }}",
        case({pm: f"dirs='{d}'" for pm, d in CACHE_DIR.items()}),
        'new=$(find $dirs -type f -newer "$stamp" 2>/dev/null | head -n 1)',
        'rm -f "$stamp"',
        f'if [ -n "$new" ]; then {CHANGED}; else {UNCHANGED}; fi',
    )
    return _op("pkg.update", body, sudo, become_user, changed=changed_marker,
               parse=manager_of).with_(check=_detect_then(
                   "pkg.update", "would refresh the package index"))


def _detect_then(name: str, what: str) -> Check:
    """A check that finds the manager (none: the op would fail) and reports `what`."""
    return Check(probe=lambda diff: Op(name=name, command=DETECT),
                 answer=lambda h, out, diff: CheckReport(
                     changes=True, diff=f"{name}: {what} ({manager_of(out)})"))


def upgrade(*, dist: bool = False, refresh: bool = False, sudo: bool = False,
            become_user: str | None = None) -> Op:
    """Upgrade every package (`dist`: allow new dependencies/removals); `refresh` first."""
    cmds = DIST_UPGRADE if dist else UPGRADE
    body = case(cmds) + " || exit"
    if refresh:
        body = f"{case(UPDATE)} || exit\n{body}"
    simulate = script(DETECT, marker("pending"), case({
        "apt": "apt-get -s -q " + ("dist-upgrade" if dist else "upgrade")
               + " 2>/dev/null | awk '$1 == \"Inst\" {print $2}'",
        **{pm: "echo '?'" for pm in MANAGERS if pm != "apt"}}))

    def answer(h: object, out: str, diff: bool) -> CheckReport:
        pending = [x for x in sections(out).get("pending", "").split() if x]
        if pending == ["?"]:
            return CheckReport(changes=True, diff=f"pkg.upgrade: would upgrade "
                               f"({manager_of(out)}: cannot list without upgrading)")
        return CheckReport(changes=bool(pending), diff="\n".join(
            f"would upgrade {x}" for x in pending))

    return _op("pkg.upgrade", _list_changed(body), sudo, become_user, changed=changed_marker,
               parse=manager_of).with_(check=Check(
                   probe=lambda diff: Op(name="pkg.upgrade", command=simulate),
                   answer=answer))


def install(*packages: str, refresh: bool = False, sudo: bool = False,
            become_user: str | None = None) -> Op:
    """Install `packages` that are missing; an already-installed set is a no-op."""
    return _write("pkg.install", packages, INSTALL, missing=True, refresh=refresh, sudo=sudo,
                  become_user=become_user)


def remove(*packages: str, sudo: bool = False, become_user: str | None = None) -> Op:
    """Remove `packages` that are installed; absent ones are a no-op."""
    return _write("pkg.remove", packages, REMOVE, missing=False, refresh=False, sudo=sudo,
                  become_user=become_user)


def _write(name: str, packages: Sequence[str], cmds: Mapping[str, str], *, missing: bool,
           refresh: bool, sudo: bool, become_user: str | None) -> Op:
    if not packages:
        raise ValueError(f"{name} needs at least one package name")
    for p in packages:
        if not p or p.startswith("-") or any(c.isspace() for c in p):
            raise ValueError(f"not a package name: {p!r}")
    test = "||" if missing else "&&"
    body = script(
        _function("is_installed", IS_INSTALLED),
        "todo=",
        f'for p in {words(packages)}; do is_installed "$p" {test} todo="$todo $p"; done',
        f'if [ -z "$todo" ]; then {UNCHANGED}; exit 0; fi',
        f"{case(UPDATE)} || exit" if refresh else "",
        _list_changed(case(cmds) + " || exit"),
    )
    probe = script(
        DETECT,
        _function("version_of", VERSION_OF),
        marker("state"),
        f'for p in {words(packages)}; do v=$(version_of "$p" 2>/dev/null); '
        'printf "%s\\t%s\\n" "$p" "$v"; done',
    )

    def answer(h: object, out: str, diff: bool) -> CheckReport:
        notes, changes = [], False
        for row in sections(out).get("state", "").splitlines():
            pkg, _, version = row.partition("\t")
            if not pkg:
                continue
            if missing and not version:
                notes.append(f"would install {pkg}")
                changes = True
            elif missing:
                notes.append(f"{pkg} {version} is installed")
            elif version:
                notes.append(f"would remove {pkg} {version}")
                changes = True
            else:
                notes.append(f"{pkg} is not installed")
        return CheckReport(changes=changes, diff="\n".join(notes))

    return _op(name, body, sudo, become_user, changed=changed_marker, parse=manager_of
               ).with_(check=Check(probe=lambda diff: Op(name=name, command=probe),
                                   answer=answer))


def installed(*names: str, sudo: bool = False, become_user: str | None = None) -> Op:
    """Installed packages (all, or only `names`): `data` is a list of Package."""
    wanted = frozenset(names)

    def parse(out: str) -> list[Package]:
        pkgs = parse_installed(out)
        return [p for p in pkgs if p.name in wanted] if wanted else pkgs

    body = script(marker("packages"), case(LIST))
    return _op("pkg.installed", body, sudo, become_user, parse=parse).with_(check=QUERY)


_APK = re.compile(r"^(?P<name>.+)-(?P<version>[^-]+-r\d+)\s+(?P<arch>\S+)")


def parse_installed(out: str) -> list[Package]:
    """The `packages` section of an `installed` script into Package rows."""
    parts = sections(out)
    pm = parts.get("manager", "").strip()
    rows: list[Package] = []
    for line in parts.get("packages", "").splitlines():
        if not line.strip():
            continue
        if pm == "apk":
            m = _APK.match(line)
            if m:
                rows.append(Package(name=m["name"], version=m["version"], arch=m["arch"],
                                    manager=pm))
        elif pm == "pacman":
            name, _, version = line.partition(" ")
            rows.append(Package(name=name, version=version.strip(), manager=pm))
        else:
            fields = line.split("\t")
            if len(fields) >= 2:
                rows.append(Package(name=fields[0], version=fields[1],
                                    arch=fields[2] if len(fields) > 2 else "", manager=pm))
    return rows
