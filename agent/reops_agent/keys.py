"""CurveZMQ key pairs on disk: z85 text, the secret readable by its owner only.

(os.path, not pathlib: the agent imports this, and pathlib costs an idle agent ~0.6 MB.)
"""

from __future__ import annotations

import os

import zmq
import zmq.utils.z85

StrPath = str | os.PathLike[str]


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_keypair(directory: StrPath, stem: str) -> tuple[bytes, bytes]:
    """Create `stem.key` (public) and `stem.key_secret` (0600) in `directory`."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public, secret = zmq.curve_keypair()
    secret_path = os.path.join(directory, f"{stem}.key_secret")
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    with open(os.path.join(directory, f"{stem}.key"), "wb") as f:
        f.write(public + b"\n")
    return public, secret


def load_keypair(directory: StrPath, stem: str, *, create: bool = True
                 ) -> tuple[bytes, bytes]:
    """The (public, secret) z85 pair stored as `stem.key*`, made on first use."""
    public_path = os.path.join(directory, f"{stem}.key")
    secret_path = os.path.join(directory, f"{stem}.key_secret")
    if not os.path.exists(secret_path):
        if not create:
            raise FileNotFoundError(f"no key pair {secret_path}")
        return write_keypair(directory, stem)
    secret = _read_bytes(secret_path).strip()
    public = (_read_bytes(public_path).strip() if os.path.exists(public_path)
              else zmq.curve_public(secret))
    return public, secret


def parse_public_key(text: str) -> bytes:
    """A z85 public key given inline or as the path of a file holding it."""
    candidate = text.strip()
    path = os.path.expanduser(candidate)
    if os.path.isfile(path):  # a file first: a path can be 40 characters long too
        with open(path) as f:
            candidate = f.read().strip()
    if len(candidate) != 40:
        raise ValueError("a CurveZMQ public key is 40 z85 characters (or a file holding one)")
    try:
        zmq.utils.z85.decode(candidate)
    except (ValueError, KeyError):
        raise ValueError("the public key is not valid z85") from None
    return candidate.encode()
