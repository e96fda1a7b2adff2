"""Secret: a become (sudo) password that never shows itself.

Its repr and str are `***`, so a Settings, an Op or an exception that mentions one prints
no password; `reveal()` is the one way to the text, used only where the password is fed to
`sudo -S` on a command's stdin (never its argv). Sources, in order of precedence: the
`--ask-become-pass` prompt, `--become-pass-file FILE`, `$REOPS_BECOME_PASS`, or
`Settings(become_pass=Secret("…"))` / `configure(become_pass="…")` in Python.

    >>> s = Secret("hunter2")
    >>> s, str(s), f"{s}"
    (***, '***', '***')
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

#: what a Secret shows instead of itself
MASK = "***"


class SecretError(ValueError):
    """A password source that cannot be used; the message never contains the password."""


class Secret:
    """A password whose repr/str are `***`; compare and hash by value, reveal on purpose."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise SecretError(f"a password must be text, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The password itself: only for feeding it to sudo's stdin."""
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return True  # an empty password is still a password sudo may want

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled (it would be written out in clear)")


def from_file(path: str | Path) -> Secret:
    """The first line of `path` (without its newline) as a Secret; a file readable by
    others is refused, as ssh refuses an open private key."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        text = p.read_text()
    except FileNotFoundError:
        raise SecretError(f"{p}: no such become-password file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SecretError(f"{p}: cannot read the become-password file: "
                          f"{type(e).__name__}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{p}: the become-password file is open to group/others "
                          f"(mode {st.st_mode & 0o777:04o}); chmod 600 {p}")
    line = text.split("\n", 1)[0].rstrip("\r")
    return Secret(line)


def decode(kind: type, value: object) -> object:
    """msgspec dec_hook: a Settings field typed Secret accepts text (config, env)."""
    if kind is Secret and isinstance(value, Secret):
        return value
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    if kind is Secret:
        raise TypeError("must be text (a string)")
    raise NotImplementedError
