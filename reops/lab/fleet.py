"""A local fleet of real OpenSSH sshd "hosts" on loopback, for demos and tests.

Each host is its own sshd listening on its own 127.0.x.y address with its own ed25519
host key, so everything reops does over SSH (strict known_hosts, key auth, sftp, many
hosts at once, a host going down, a changed host key) is exercised against the real
server rather than a mock.

Readiness is event-driven: sshd (Debian/Ubuntu builds, and upstream >= 9.8) sends the
systemd notification ``READY=1`` on ``$NOTIFY_SOCKET`` once its listen socket is bound.
Daemonising is *not* a readiness signal: sshd forks into the background before it binds.

    >>> lab = Lab(Path("lab"), hosts=20)
    >>> info = lab.up()
    >>> lab.stop_host("web1"); lab.start_host("web1")
    >>> Lab.load(Path("lab")).down()
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import secrets
import selectors
import shutil
import signal
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from reops.core.model import Host, Hosts
from reops.lab import bastion as jumps
from reops.lab import hostfs, services
from reops.lab import names as hostnames
from reops.lab import sudo as labsudo
from reops.lab.procs import (
    ProcessError,
    child_exited,
    descendants,
    parent_of,
    pidfd,
    reap,
    wait_exit,
)
from reops.lab.setup import LabError, ensure_root_prerequisites, sshd_binary

#: the login user created for the lab when running as root
LAB_USER = "reops-lab"
#: where the first host listens; 127.0.0.1 is never used (it is everybody's localhost)
FIRST_ADDRESS = "127.0.1.1"
DEFAULT_PORT = 2222
DEFAULT_HOSTS = 20
#: seconds to wait for all sshd processes to report readiness (or exit) before giving up
START_TIMEOUT = 60.0
#: seconds to wait for an sshd to exit after SIGTERM before sending SIGKILL
STOP_TIMEOUT = 10.0

STATE_VERSION = 1
ROLES = {"web": "frontend", "db": "database", "cache": "cache", "bastion": "bastion"}
GROUP_VARS: dict[str, dict[str, Any]] = {
    "web": {"http_port": 8080},
    "db": {"db_port": 5432},
    "cache": {"cache_port": 6379},
    "bastion": {},
}
_CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class LabInfo:
    """Everything a client needs to reach a running lab."""

    root: Path
    inventory: Path
    known_hosts: Path
    key: Path
    hosts: Mapping[str, str]  # name -> address, in inventory order
    user: str
    port: int
    #: name -> the DNS name /etc/hosts gives it (empty: the lab is addressed by IP)
    names: Mapping[str, str] = field(default_factory=dict)
    #: bastion mode: the host every other one is reached through (ProxyJump), else None
    bastion: str | None = None
    #: an OpenSSH client config for the lab: `ssh -F <ssh_config> web1`
    ssh_config: Path | None = None
    #: as root: the login whose sudo needs a password, and the file holding it (0600)
    become_user: str | None = None
    become_pass_file: Path | None = None
    #: whether each host has its own /tmp, home and /etc/motd (root only)
    private_fs: bool = False

    def address(self, name: str) -> str:
        """What the inventory says to connect to: the host's DNS name, else its IP."""
        return self.names.get(name, self.hosts[name])

    def as_hosts(self) -> Hosts:
        """The lab's hosts as model values (key, known_hosts, port and user filled in; in
        bastion mode each target jumps through the bastion, as the inventory says)."""
        made: dict[str, Host] = {}
        for name in self.hosts:
            via = made.get(self.bastion) if self.bastion and name != self.bastion else None
            made[name] = Host(
                name=name,
                address=self.address(name),
                port=self.port,
                user=self.user,
                key=str(self.key),
                known_hosts=str(self.known_hosts),
                groups=(_group_of(name),),
                tags={"dc": _dc_of(name), "role": ROLES[_group_of(name)]},
                vars=dict(GROUP_VARS[_group_of(name)]),
                jump=(via,) if via is not None else None,
            )
        return Hosts(made.values())


def _group_of(name: str) -> str:
    return name.rstrip("0123456789")


def _dc_of(name: str) -> str:
    number = name[len(_group_of(name)) :]
    return "ams" if not number or int(number) % 2 else "fra"


def host_names(n: int) -> list[str]:
    """About half web, a quarter db, a quarter cache: web1.., db1.., cache1..."""
    db, cache = (n + 1) // 4, (n + 2) // 4
    web = n - db - cache
    return [
        *(f"web{i}" for i in range(1, web + 1)),
        *(f"db{i}" for i in range(1, db + 1)),
        *(f"cache{i}" for i in range(1, cache + 1)),
    ]


def addresses(first: str, n: int) -> list[str]:
    """n loopback addresses from `first`, skipping .0, .255 and 127.0.0.1."""
    addr = ipaddress.IPv4Address(first)
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    out: list[str] = []
    while len(out) < n:
        if addr not in loopback:
            raise LabError(f"ran out of loopback addresses after {first} for {n} hosts")
        last = int(addr) & 0xFF
        if last not in (0, 255) and str(addr) != "127.0.0.1":
            out.append(str(addr))
        addr += 1
    return out


def known_hosts_pattern(address: str, port: int) -> str:
    """How ssh names a host in known_hosts: bare for port 22, else [addr]:port."""
    return address if port == 22 else f"[{address}]:{port}"


class Lab:
    """A fleet of sshd processes under `root`; state lives in root/state.json."""

    def __init__(
        self,
        root: Path,
        hosts: int = DEFAULT_HOSTS,
        base_port: int = DEFAULT_PORT,
        user: str | None = None,
        *,
        first_address: str = FIRST_ADDRESS,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        names: bool = True,
        bastion: bool = False,
        private_fs: bool = False,
    ) -> None:
        if hosts < 1:
            raise LabError(f"a lab needs at least one host, not {hosts}")
        self.root = Path(root).absolute()
        self.port = base_port
        self.first_address = first_address
        self.as_root = os.geteuid() == 0
        me = pwd.getpwuid(os.geteuid()).pw_name
        self.user = user or (LAB_USER if self.as_root else me)
        if self.user == "root":
            raise LabError("the lab never logs in as root (PermitRootLogin no); pick another user")
        if not self.as_root and self.user != me:
            raise LabError(f"an unprivileged sshd can only log in as {me}, not {self.user}")
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        #: tells this lab's host names apart from any other lab's
        self.lab_id = hostnames.new_lab_id()
        #: whether hosts get /etc/hosts names (root only: an unprivileged lab keeps IPs)
        self.named = names and self.as_root and hostnames.can_write()
        #: one-line remarks for the user (e.g. why the lab has no names)
        self.notes: list[str] = []
        if names and not self.named:
            why = "names need root" if not self.as_root else f"{hostnames.HOSTS_FILE} is read-only"
            self.notes.append(f"lab: hosts are addressed by IP: {why} (they go in /etc/hosts)")
        #: each host its own /tmp, home and /etc/motd (a private mount namespace; root only)
        self.private_fs = private_fs and self.as_root
        if not self.as_root:
            self.notes.append(
                "lab: not root: the hosts share this machine's filesystem and have no sudo "
                "and no services (run `reops lab up` as root for those)"
            )
        elif (no_sudo := labsudo.missing()) is not None:
            self.notes.append(no_sudo)
        #: bastion mode: targets in a network namespace, reachable only through BASTION
        self.bastion = bastion
        if bastion:
            jumps.require_root()
        hosts_ = [jumps.BASTION] * bastion + host_names(hosts)
        self.hosts: dict[str, str] = dict(
            zip(hosts_, addresses(first_address, len(hosts_)), strict=True)
        )
        self.pids: dict[str, int | None] = dict.fromkeys(hosts_)
        self._spawned: set[int] = set()  # our unreaped children: their pids cannot be reused

    # -- paths -------------------------------------------------------------------------

    @property
    def has_sudo(self) -> bool:
        """Whether the hosts get the lab's sudo (root, with sudo and openssl installed)."""
        return self.as_root and labsudo.missing() is None

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def host_dir(self, name: str) -> Path:
        return self.root / "hosts" / name

    def config_path(self, name: str) -> Path:
        return self.host_dir(name) / "sshd_config"

    def log_path(self, name: str) -> Path:
        return self.host_dir(name) / "sshd.log"

    @property
    def info(self) -> LabInfo:
        """Where the lab's inventory, keys and hosts are (valid once up)."""
        return LabInfo(
            root=self.root,
            inventory=self.root / "inventory.toml",
            known_hosts=self.root / "known_hosts",
            key=self.root / "id_ed25519",
            hosts=dict(self.hosts),
            user=self.user,
            port=self.port,
            names=self.names,
            bastion=jumps.BASTION if self.bastion else None,
            ssh_config=self.root / "ssh_config",
            become_user=labsudo.PW_USER if self.has_sudo else None,
            become_pass_file=self.root / labsudo.PASS_FILE if self.has_sudo else None,
            private_fs=self.private_fs,
        )

    @property
    def netns(self) -> str | None:
        """Bastion mode: the network namespace the targets (and the bastion's sshd) run in."""
        return jumps.netns_name(self.lab_id) if self.bastion else None

    @property
    def names(self) -> dict[str, str]:
        """Host -> its DNS name in /etc/hosts; empty when the lab is addressed by IP."""
        if not self.named:
            return {}
        return {n: hostnames.host_fqdn(n, self.lab_id) for n in self.hosts}

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def load(cls, root: Path) -> Lab:
        """The lab whose state is in `root` (e.g. to stop it from another process)."""
        root = Path(root).absolute()
        try:
            state = json.loads((root / "state.json").read_text())
        except FileNotFoundError:
            raise LabError(f"no lab at {root} (no state.json; is it up?)") from None
        except json.JSONDecodeError as e:
            raise LabError(f"{root / 'state.json'}: {e}") from None
        if state.get("version") != STATE_VERSION:
            raise LabError(f"{root / 'state.json'}: unknown state version {state.get('version')}")
        lab = cls.__new__(cls)
        lab.root = root
        lab.port = state["port"]
        lab.first_address = state["first_address"]
        lab.as_root = os.geteuid() == 0
        lab.user = state["user"]
        lab.start_timeout = state.get("start_timeout", START_TIMEOUT)
        lab.stop_timeout = state.get("stop_timeout", STOP_TIMEOUT)
        lab.lab_id = state.get("lab_id", "0")
        lab.named = bool(state.get("named", False))
        lab.bastion = bool(state.get("bastion", False))
        lab.private_fs = bool(state.get("private_fs", False)) and lab.as_root
        lab.notes = []
        lab.hosts = {name: h["address"] for name, h in state["hosts"].items()}
        lab.pids = {name: h["pid"] for name, h in state["hosts"].items()}
        lab._spawned = set()
        return lab

    def up(self) -> LabInfo:
        """Generate keys and configs, start every host's sshd at once, return the info."""
        if self.state_path.exists():
            running = [n for n, up in Lab.load(self.root).status().items() if up]
            if running:
                raise LabError(
                    f"a lab is already up at {self.root} ({len(running)} hosts running); "
                    "take it down first"
                )
            Lab.load(self.root)._drop_netns()  # left by a crashed lab in this root
        sshd = sshd_binary()
        if self.as_root:
            ensure_root_prerequisites(self.user)
        self._write_files()
        if self.as_root:  # sudo (with and without a password) and services on the hosts
            for name in self.hosts:  # a new lab: no /tmp, /etc changes … of an old one
                hostfs.reset(self.host_dir(name))
            if labsudo.prepare(self.root, self.user):
                self._write_become_inventory()
            services.install(self.root)
        self._save()
        try:
            self._write_names()
            if self.netns:
                jumps.create_netns(self.netns)
            self._launch(list(self.hosts), sshd)
        except BaseException:
            self.down()
            raise
        return self.info

    def down(self) -> None:
        """Stop every sshd this lab started (and their sessions); forget the state."""
        if not self.state_path.exists() and not any(self.pids.values()):
            return
        self._sync()
        self._stop(list(self.hosts))
        self._drop_netns()
        if self.as_root:  # also a block left by a crashed earlier lab in this root
            hostnames.remove_block(self.root)
            labsudo.cleanup(self.root)
        self.state_path.unlink(missing_ok=True)

    def status(self) -> dict[str, bool]:
        """Which hosts are up: name -> True when its sshd is running."""
        self._sync()
        return {name: self._alive(name) for name in self.hosts}

    def stop_host(self, name: str) -> None:
        """Take one host down: its sshd and its open sessions go away (connections refused)."""
        self._check(name)
        self._sync()
        self._stop([name])
        self._save()

    def start_host(self, name: str) -> None:
        """Bring one stopped host back, with whatever host key it has on disk."""
        self._check(name)
        self._sync()
        if self._alive(name):
            return
        self._launch([name], sshd_binary())

    def rotate_host_key(self, name: str) -> None:
        """Give a host a new host key and restart it; known_hosts keeps the old key."""
        self._check(name)
        self._sync()
        was_up = self._alive(name)
        if was_up:
            self._stop([name])
        _write_key(self.host_dir(name) / "ssh_host_ed25519_key", _new_key())
        if was_up:
            self._launch([name], sshd_binary())
        else:
            self._save()

    # -- files -------------------------------------------------------------------------

    def _write_files(self) -> None:
        """Keys, known_hosts, authorized_keys, inventory and one sshd_config per host."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the login user must reach authorized_keys
        client = _new_key()
        _write_key(self.root / "id_ed25519", client)
        pub = client.export_public_key("openssh").decode()
        (self.root / "id_ed25519.pub").write_text(pub)
        _write_text(self.root / "authorized_keys", pub, 0o644)
        lines = []
        for name, address in self.hosts.items():
            d = self.host_dir(name)
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
            key = _new_key()
            _write_key(d / "ssh_host_ed25519_key", key)
            host_pub = key.export_public_key("openssh").decode().split()
            lines.append(f"{self._known_as(name)} {host_pub[0]} {host_pub[1]}\n")
            self.config_path(name).write_text(self._sshd_config(name, address))
        _write_text(self.root / "known_hosts", "".join(lines), 0o644)
        _write_text(self.root / "inventory.toml", self._inventory(), 0o644)
        _write_text(self.root / "ssh_config", self._ssh_config(), 0o644)

    def _known_as(self, name: str) -> str:
        """The host's known_hosts patterns, as ssh writes them: its name (when it has one)
        first, then its IP (what ssh adds with CheckHostIP; tools given the IP still match)."""
        ip = known_hosts_pattern(self.hosts[name], self.port)
        if fqdn := self.names.get(name):
            return f"{known_hosts_pattern(fqdn, self.port)},{ip}"
        return ip

    def _write_names(self) -> None:
        """Put the hosts' names in /etc/hosts (or drop a stale block of this root)."""
        if self.named:
            entries = {fqdn: self.hosts[n] for n, fqdn in self.names.items()}
            hostnames.write_block(self.root, self.lab_id, entries)
        elif self.as_root:
            hostnames.remove_block(self.root)

    def _ssh_config(self) -> str:
        """The lab for OpenSSH's client (`ssh -F ssh_config web1`): names, ProxyJump."""

        def q(p: Path) -> str:
            return '"' + str(p) + '"'

        out = [f"# generated by reops lab: ssh -F {q(self.root / 'ssh_config')} web1", ""]
        for name in self.hosts:
            out += [f"Host {name}", f"    HostName {self.names.get(name, self.hosts[name])}"]
            if self.bastion and name != jumps.BASTION:
                out.append(f"    ProxyJump {jumps.BASTION}")
            out.append("")
        out += [
            "Host *",
            f"    Port {self.port}",
            f"    User {self.user}",
            f"    IdentityFile {q(self.root / 'id_ed25519')}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {q(self.root / 'known_hosts')}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "",
        ]
        return "\n".join(out)

    def _drop_netns(self) -> None:
        """Delete the lab's network namespace (bastion mode); its processes must be gone."""
        if self.netns:
            jumps.delete_netns(self.netns)

    def _sshd_config(self, name: str, address: str) -> str:
        d = self.host_dir(name)
        auth_keys = self.root / "authorized_keys"
        lines = [
            f"ListenAddress {address}:{self.port}",
            "AddressFamily inet",
            f"HostKey {d / 'ssh_host_ed25519_key'}",
            f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {auth_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin no",
            f"AllowUsers {self.user}" + (f" {labsudo.PW_USER}" if self.has_sudo else ""),
            "MaxStartups 1000:30:2000",
            "MaxSessions 100",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "LogLevel ERROR",
            "Subsystem sftp internal-sftp",
        ]
        if self.as_root:
            # sshd opens AuthorizedKeysFile as the login user, who cannot get through a
            # 0700 parent (pytest's tmp dirs, /root); then the key comes from this command.
            cat = shutil.which("cat") or "/usr/bin/cat"
            path = str(auth_keys).replace("%", "%%").replace('"', '\\"')
            lines += [f'AuthorizedKeysCommand {cat} "{path}"', "AuthorizedKeysCommandUser root"]
        return "\n".join(lines) + "\n"

    def _write_become_inventory(self) -> None:
        """inventory-become.toml: the same hosts, logging in as the user whose sudo needs
        this lab's password (in become_pass)."""
        text = (self.root / "inventory.toml").read_text()
        ours = f"user = {_toml_str(self.user)}"
        text = text.replace(ours, f"user = {_toml_str(labsudo.PW_USER)}", 1)
        _write_text(self.root / "inventory-become.toml", text, 0o644)

    def _inventory(self) -> str:
        out = [
            "# generated by reops lab; relative paths are relative to this file",
            "[defaults]",
            f"user = {_toml_str(self.user)}",
            f"port = {self.port}",
            'key = "id_ed25519"',
            'known_hosts = "known_hosts"',
            "",
        ]
        groups = list(dict.fromkeys(_group_of(n) for n in self.hosts))
        for g in groups:
            kv = ", ".join(f"{k} = {json.dumps(v)}" for k, v in GROUP_VARS[g].items())
            out += [f"[groups.{g}]", f"vars = {{ {kv} }}", ""]
        for name, address in self.hosts.items():
            g = _group_of(name)
            out += [
                f"[hosts.{name}]",
                f"address = {_toml_str(self.names.get(name, address))}",
                *([f"jump = {_toml_str(jumps.BASTION)}"]
                  if self.bastion and name != jumps.BASTION else []),
                f"groups = [{_toml_str(g)}]",
                f'tags = {{ dc = "{_dc_of(name)}", role = "{ROLES[g]}" }}',
                "",
            ]
        return "\n".join(out)

    def _save(self) -> None:
        state = {
            "version": STATE_VERSION,
            "port": self.port,
            "first_address": self.first_address,
            "user": self.user,
            "start_timeout": self.start_timeout,
            "stop_timeout": self.stop_timeout,
            "lab_id": self.lab_id,
            "named": self.named,
            "bastion": self.bastion,
            "private_fs": self.private_fs,
            "hosts": {n: {"address": a, "pid": self.pids.get(n)} for n, a in self.hosts.items()},
        }
        _write_text(self.state_path, json.dumps(state, indent=1) + "\n", 0o644)

    # -- processes ------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Lab({str(self.root)!r}, hosts={len(self.hosts)}, port={self.port})"

    def _sync(self) -> None:
        """Take pids from state.json: another process (`reops lab ...`) may have acted."""
        try:
            saved = json.loads(self.state_path.read_text())["hosts"]
        except (OSError, ValueError, KeyError):
            return
        for name in self.hosts:
            new, old = saved.get(name, {}).get("pid"), self.pids.get(name)
            if new == old or (new is None and self._alive(name)):
                continue  # unchanged, or started here and not saved yet
            if old in self._spawned and (fd := pidfd(old)) is not None:
                reap(fd)  # our own child, stopped elsewhere: collect the zombie
                os.close(fd)
            self._spawned.discard(old or 0)
            self.pids[name] = new

    def _check(self, name: str) -> None:
        if name not in self.hosts:
            raise LabError(f"no host {name!r} in the lab at {self.root}")

    def _ours(self, pid: int, name: str) -> bool:
        """Whether `pid` is still this lab's sshd for `name` (pids get reused).

        A child we spawned and have not reaped is ours for sure (its cmdline can read
        empty just after posix_spawn returns: the kernel lets the parent go before it
        has set up the new program's arguments). Anything else must name our config.
        """
        if pid in self._spawned and child_exited(pid) is not None:
            return True
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.config_path(name)).encode() in cmdline

    def _alive(self, name: str) -> bool:
        pid = self.pids.get(name)
        if pid is None:
            return False
        if pid in self._spawned and (exited := child_exited(pid)) is not None:
            return not exited
        return self._ours(pid, name)  # a zombie's cmdline is empty: not up

    #: bastion mode, while its host starts: the listening socket bound in the root namespace
    _listener: socket.socket | None = None

    def _launch(self, names: list[str], sshd: str) -> None:
        """Start hosts; in bastion mode inside the lab's network namespace, except for the
        bastion's listening socket, bound out here first (see reops.lab.bastion)."""
        if self.bastion and jumps.BASTION in names:
            self._listener = jumps.listen(self.hosts[jumps.BASTION], self.port)
        try:
            with jumps.entered(self.netns):
                self._start(names, sshd)
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    def _spawn_bastion(self, name: str, sshd: str, env: dict[str, str]) -> int:
        """The bastion: a socket-activation shim that runs `sshd -i` per connection."""
        assert self._listener is not None
        log = self.log_path(name)
        log.write_bytes(b"")
        fd = self._listener.fileno()
        argv = jumps.shim_argv(fd, sshd, self.config_path(name))
        os.set_inheritable(fd, True)  # only for this spawn (subprocess closes fds anyway)
        try:
            return os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_APPEND, 0),
                    (os.POSIX_SPAWN_OPEN, 2, str(log), os.O_WRONLY | os.O_APPEND, 0),
                ],
                setsid=True,
            )
        finally:
            os.set_inheritable(fd, False)

    def _start(self, names: list[str], sshd: str) -> None:
        """Spawn one sshd per host, then wait for each to say READY=1 or to exit."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        notify = f"reops-lab-{os.getpid()}-{secrets.token_hex(8)}"
        sock.bind("\0" + notify)  # abstract: no path length or permission trouble
        env = {"NOTIFY_SOCKET": "@" + notify, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        pending: dict[int, str] = {}
        with sock, selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            try:
                for name in names:
                    pid = self._spawn(name, sshd, env)
                    self.pids[name] = pid
                    self._spawned.add(pid)
                    pending[pid] = name
                    sel.register(os.pidfd_open(pid), selectors.EVENT_READ, pid)
                    # read notifications as they come: the kernel queues only a few
                    # datagrams (net.unix.max_dgram_qlen) and sshd blocks on a full queue
                    self._handle(sel.select(0), sel, sock, pending)
                self._save()
                self._await_ready(sel, sock, pending)
            finally:
                for key in list(sel.get_map().values()):
                    if key.data is not None:
                        os.close(key.fd)

    def _spawn(self, name: str, sshd: str, env: dict[str, str]) -> int:
        if self._listener is not None and name == jumps.BASTION:
            return self._spawn_bastion(name, sshd, env)
        log = self.log_path(name)
        log.write_bytes(b"")
        program, argv = sshd, [sshd, "-D", "-e", "-f", str(self.config_path(name))]
        if self.as_root:  # its own mount namespace: /run, sudoers … (and /tmp, home)
            users = (self.user, labsudo.PW_USER) if self.has_sudo else (self.user,)
            homes = [(u, Path(pwd.getpwnam(u).pw_dir)) for u in users]
            binds = hostfs.host_binds(self.root, self.host_dir(name), name, homes,
                                      private_fs=self.private_fs)
            keep = hostfs.writable(self.root, homes, private_fs=self.private_fs)
            layers = hostfs.overlays(self.host_dir(name))
            program, prefix = hostfs.launcher(self.root, binds, keep, layers)
            argv = prefix + argv
        return os.posix_spawn(
            program,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_APPEND, 0),
                (os.POSIX_SPAWN_OPEN, 2, str(log), os.O_WRONLY | os.O_APPEND, 0),
            ],
            setsid=True,  # a Ctrl-C in the launching terminal must not take the lab down
        )

    def _await_ready(
        self, sel: selectors.BaseSelector, sock: socket.socket, pending: dict[int, str]
    ) -> None:
        deadline = time.monotonic() + self.start_timeout
        while pending:
            events = sel.select(deadline - time.monotonic())
            if not events:
                names = ", ".join(sorted(pending.values()))
                raise LabError(
                    f"sshd did not report readiness within {self.start_timeout:g}s for: "
                    f"{names} (reops lab needs an sshd with systemd notify support: "
                    "Debian/Ubuntu builds or OpenSSH >= 9.8)"
                )
            self._handle(events, sel, sock, pending)

    def _handle(
        self,
        events: list[tuple[selectors.SelectorKey, int]],
        sel: selectors.BaseSelector,
        sock: socket.socket,
        pending: dict[int, str],
    ) -> None:
        """Mark hosts whose sshd said READY=1; fail on one that exited instead."""
        for key, _ in events:
            if key.data is None:  # a notification; the kernel tells us who sent it
                msg, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(_CRED.size))
                pid = next(
                    (
                        _CRED.unpack(data[: _CRED.size])[0]
                        for level, kind, data in anc
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                    ),
                    None,
                )
                if pid in pending and b"READY=1" in msg.split(b"\n"):
                    del pending[pid]
                    self._close_pidfd(sel, pid)
            else:  # an sshd exited before it was ready
                pid = key.data
                name = pending.pop(pid)
                reap(key.fd)
                self._spawned.discard(pid)
                self.pids[name] = None
                log = self.log_path(name).read_text(errors="replace").strip()
                raise LabError(
                    f"sshd for {name} ({self.hosts[name]}:{self.port}) exited: "
                    f"{log or 'no output'}\n  config: {self.config_path(name)}"
                )

    @staticmethod
    def _close_pidfd(sel: selectors.BaseSelector, pid: int) -> None:
        for key in list(sel.get_map().values()):
            if key.data == pid:
                sel.unregister(key.fd)
                os.close(key.fd)

    def _stop(self, names: Iterable[str]) -> None:
        """SIGTERM each host's sshd and its sessions; wait on pidfds until they are gone."""
        fds: dict[int, int] = {}  # pidfd -> pid: signals and waits cannot hit a reused pid
        try:
            for n in names:
                pid = self.pids.get(n)
                if pid is not None and (fd := pidfd(pid)) is not None:
                    if self._ours(pid, n):
                        fds[fd] = pid
                    else:  # long gone (perhaps our zombie) or the pid was reused
                        reap(fd)
                        os.close(fd)
            # the open sessions: per-connection sshd and the users' commands below them
            roots = set(fds.values())
            tree = descendants(roots)
            family = set(fds.values()) | set(tree)
            for pid in tree:
                if (fd := pidfd(pid)) is not None:
                    if parent_of(pid) in family:
                        fds[fd] = pid
                    else:
                        os.close(fd)
            # and what left that tree but not the host (daemons an init script started):
            # everything else in the hosts' private mount namespaces
            fds.update(hostfs.namespace_pidfds(roots, skip=set(fds.values())))
            for fd in fds:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGTERM)
            try:
                wait_exit(fds, self.stop_timeout)
            except ProcessError as e:
                raise LabError(str(e)) from None
        finally:
            for fd in fds:
                os.close(fd)
        for n in names:
            self._spawned.discard(self.pids.get(n) or 0)
            self.pids[n] = None
            (self.host_dir(n) / "sshd.pid").unlink(missing_ok=True)


def _new_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def _write_key(path: Path, key: asyncssh.SSHKey) -> None:
    _write_text(path, key.export_private_key("openssh").decode(), 0o600)


def _write_text(path: Path, text: str, mode: int) -> None:
    """Write atomically with `mode` (readers never see a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string
