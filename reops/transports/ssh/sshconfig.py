"""OpenSSH client config (`~/.ssh/config`, `/etc/ssh/ssh_config`) read once, looked up per host.

asyncssh's `SSHClientConfig` evaluates `Host`/`Match`/`Include` the way ssh does (first
value wins, IdentityFile and CertificateFile add up, `%h`/`%p`/`%r` tokens), but it reads and
tokenises the files again for every connection. `SshConfig` keeps each file's tokenised
lines until its mtime changes and remembers the answer per (host, user, port), so a fleet of
200 hosts costs one read per file and one evaluation per distinct host; a bad line is one
`file:line: what` error (`SshConfigError`).
"""

from __future__ import annotations

import getpass
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reops.transports.ssh.sshlib import asyncssh

USER_CONFIG = "~/.ssh/config"
#: seconds between looks at the files' mtimes (an edit is noticed within this)
RECHECK_S = 1.0
SYSTEM_CONFIG = "/etc/ssh/ssh_config"

#: a tokenised line: (line number, lower-cased keyword, its arguments)
Line = tuple[int, str, tuple[str, ...]]


class SshConfigError(ValueError):
    """A line of an ssh_config file reops cannot use: `file:line: what`."""


@dataclass(frozen=True, slots=True)
class HostConfig:
    """What ssh_config says for one destination; None where it says nothing."""

    hostname: str | None = None
    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    certificate_files: tuple[str, ...] = ()
    identities_only: bool | None = None
    identity_agent: str | None = None
    proxy_jump: tuple[str, ...] | None = None  # () is `ProxyJump none`
    proxy_command: str | None = None
    known_hosts: tuple[str, ...] | None = None
    strict_host_key_checking: str | None = None
    hash_known_hosts: bool | None = None  # HashKnownHosts (Debian's ssh_config sets yes)


NOTHING = HostConfig()


def _tokenise(path: Path, text: str, conditionals: set[str], no_split: set[str]) -> list[Line]:
    """asyncssh's line splitting (`SSHConfig.parse`), done once per file version."""
    out: list[Line] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        try:
            split_args = shlex.split(line)
        except ValueError as e:
            raise SshConfigError(f"{path}:{line_no}: {e} (check its quotes)") from None
        args: list[str] = []
        loption = ""
        allow_equal = True
        for i, arg in enumerate(split_args, 1):
            if arg.startswith("="):
                if len(arg) > 1:
                    args.append(arg[1:])
            elif not allow_equal:
                args.extend(split_args[i - 1:])
                break
            elif arg.endswith("="):
                args.append(arg[:-1])
            elif "=" in arg:
                key, val = arg.split("=", 1)
                args += [key, val]
            else:
                args.append(arg)
            if i == 1:
                loption = args.pop(0).lower()
                allow_equal = loption in conditionals
        if loption in no_split:
            rest = line[len(loption):].strip()
            args = [rest[1:].strip() if rest.startswith("=") else rest]
        out.append((line_no, loption, tuple(args)))
    return out


class _Evaluation(asyncssh.config.SSHClientConfig):
    """asyncssh's evaluator, reading tokenised lines from `SshConfig` instead of files."""

    source: SshConfig

    def _match_host_cached(self, option: str, args: list[str]) -> None:
        """`Host` patterns, compiled once per config (asyncssh compiles them per line read)."""
        self._matching = self.source.host_matches(",".join(args), self._orig_host)
        args.clear()

    def _include_cached(self, option: str, args: list[str]) -> None:
        """`Include`, its globs expanded once per config version."""
        old_path, old_line_no = self._path, self._line_no
        for pattern in args:
            for path in self.source.included(pattern, self._default_path):
                self.parse(path)
        self._path, self._line_no = old_path, old_line_no
        self._matching = True
        args.clear()

    #: asyncssh's options plus the ones reops applies that asyncssh leaves to its caller
    _handlers = {  # noqa: RUF012 (asyncssh's own class attribute, extended)
        **asyncssh.config.SSHClientConfig._handlers,
        "host": ("Host", _match_host_cached),
        "include": ("Include", _include_cached),
        "stricthostkeychecking": ("StrictHostKeyChecking", asyncssh.config.SSHConfig._set_string),
        "hashknownhosts": ("HashKnownHosts", asyncssh.config.SSHConfig._set_bool),
    }

    def parse(self, path: Path) -> None:
        self._path = path
        self._line_no = 0
        self._matching = True
        self._tokens = {"%": "%"}
        for line_no, loption, args in self.source.lines(path):
            self._line_no = line_no
            if not self._matching and loption not in self._conditionals:
                continue
            try:
                option, handler = self._handlers[loption]
            except KeyError:
                continue  # options asyncssh does not use (ControlMaster, LogLevel …)
            todo = list(args)
            if not todo:
                self._error(f"Missing {option} value")
            handler(self, option, todo)
            if todo:
                self._error(f"Extra data at end: {' '.join(todo)}")
        self._set_tokens()
        for option in self._percent_expand:
            value = self._options.get(option)
            if isinstance(value, list):
                self._options[option] = [self._expand_val(v) for v in value]
            elif isinstance(value, str):
                self._options[option] = self._expand_val(value)


class SshConfig:
    """The ssh_config files of one fleet: parsed once per mtime, answers cached per host."""

    def __init__(self, paths: Sequence[str], required: bool = False) -> None:
        self.paths = [Path(os.path.expanduser(p)) for p in paths]
        self.required = required  # a file named on purpose (--ssh-config) must exist
        self._files: dict[Path, tuple[float, list[Line]]] = {}
        self._answers: dict[tuple[str, str | None, int | None], HostConfig] = {}
        self._patterns: dict[str, Any] = {}
        self._globs: dict[tuple[str, Path], list[Path]] = {}
        self._checked = -RECHECK_S  # monotonic time of the last look at the files' mtimes
        self.local_user = getpass.getuser()

    def host_matches(self, pattern: str, host: str) -> bool:
        """A `Host` line's pattern list against `host`: exact names by set membership,
        wildcards and negations by asyncssh's matcher, each compiled once."""
        compiled = self._patterns.get(pattern)
        if compiled is None:
            if any(c in pattern for c in "*?!"):
                compiled = asyncssh.pattern.WildcardPatternList(pattern)
            else:
                compiled = frozenset(pattern.split(","))
            self._patterns[pattern] = compiled
        if isinstance(compiled, frozenset):
            return host in compiled
        return bool(compiled.matches(host))

    def included(self, pattern: str, default: Path) -> list[Path]:
        """The files an `Include` pattern names, as asyncssh globs them (relative: ~/.ssh)."""
        key = (pattern, default)
        hit = self._globs.get(key)
        if hit is None:
            path = Path(pattern).expanduser()
            if path.anchor:
                rel, base = str(Path(*path.parts[1:])), Path(path.anchor)
            else:
                rel, base = pattern, default
            hit = self._globs[key] = sorted(p for p in base.glob(rel) if p.is_file())
        return hit

    def lines(self, path: Path) -> list[Line]:
        """The tokenised lines of `path` (empty when it does not exist)."""
        hit = self._files.get(path)
        if hit is not None:
            return hit[1]
        try:
            mtime = path.stat().st_mtime
            text = path.read_text()
        except FileNotFoundError:
            if self.required and path in self.paths:
                raise SshConfigError(f"{path}: no such ssh_config file (--ssh-config)") from None
            mtime, text = -1.0, ""
        except (OSError, UnicodeDecodeError) as e:
            raise SshConfigError(f"{path}: cannot read this ssh_config: {e}") from None
        lines = _tokenise(path, text, _Evaluation._conditionals, _Evaluation._no_split)
        self._files[path] = (mtime, lines)
        return lines

    def changed(self) -> bool:
        """Whether a file read so far changed (one stat per file, at most every RECHECK_S
        seconds: a stat per connect is not free); if so, everything is read again."""
        now_t = time.monotonic()
        if now_t - self._checked < RECHECK_S:
            return False
        self._checked = now_t
        for path, (mtime, _) in self._files.items():
            try:
                now = path.stat().st_mtime
            except OSError:
                now = -1.0
            if now != mtime:
                self._files.clear()
                self._answers.clear()
                self._globs.clear()
                return True
        return False

    def lookup(self, host: str, user: str | None = None, port: int | None = None) -> HostConfig:
        """What the files say for `ssh [user@]host [-p port]`: given user/port win.
        Answers are cached: call `changed()` first to notice edited files."""
        key = (host, user, port)
        hit = self._answers.get(key)
        if hit is None:
            hit = self._answers[key] = self._evaluate(host, user, port)
        return hit

    def _evaluate(self, host: str, user: str | None, port: int | None) -> HostConfig:
        make: Any = _Evaluation  # asyncssh types user/port as str/int; () means "not given"
        ev = make(None, False, False, True, self.local_user,
                  () if user is None else user, host, () if port is None else port)
        ev.source = self
        try:
            for path in self.paths:
                ev.parse(path)
        except asyncssh.config.ConfigParseError as e:
            raise SshConfigError(_file_line(str(e))) from None
        get: Any = ev.get
        jump = get("ProxyJump", _UNSET)
        command = get("ProxyCommand")
        strict = get("StrictHostKeyChecking")
        return HostConfig(
            hostname=_str(get("Hostname")),
            port=_int(get("Port")),
            user=_str(get("User")),
            identity_files=tuple(os.path.expanduser(p) for p in get("IdentityFile", ())),
            certificate_files=tuple(os.path.expanduser(p) for p in get("CertificateFile", ())),
            identities_only=get("IdentitiesOnly"),
            identity_agent=_str(get("IdentityAgent")),
            proxy_jump=None if jump is _UNSET else _jumps(jump),
            proxy_command=_str(command),
            known_hosts=(tuple(os.path.expanduser(p) for p in get("UserKnownHostsFile"))
                         if get("UserKnownHostsFile") else None),
            strict_host_key_checking=None if strict is None else str(strict).lower(),
            hash_known_hosts=get("HashKnownHosts"),
        )


_UNSET: Any = object()


def _jumps(value: Any) -> tuple[str, ...]:
    if value is None or str(value).lower() == "none":
        return ()
    return tuple(j.strip() for j in str(value).split(",") if j.strip())


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _file_line(message: str) -> str:
    """asyncssh's `path line N: reason` as `path:N: reason` plus what to do."""
    path, sep, rest = message.partition(" line ")
    if sep:
        num, _, reason = rest.partition(": ")
        message = f"{path}:{num}: {reason}"
    return f"{message} (fix the line, or run with --no-ssh-config)"


def config_paths(setting: bool | str) -> list[str]:
    """The files the `ssh_config` setting names: True: ssh's two; a path: only it (ssh -F)."""
    if setting is False or (isinstance(setting, str) and setting.lower() in
                            ("", "false", "no", "none", "off")):
        return []
    if setting is True or (isinstance(setting, str) and setting.lower() in ("true", "yes")):
        return [USER_CONFIG, SYSTEM_CONFIG]
    return [str(setting)]
