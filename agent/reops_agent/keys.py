"""CurveZMQ key pairs on disk: z85 text, the secret readable by its owner only."""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.utils.z85


def write_keypair(directory: Path, stem: str) -> tuple[bytes, bytes]:
    """Create `stem.key` (public) and `stem.key_secret` (0600) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = zmq.curve_keypair()
    secret_path = directory / f"{stem}.key_secret"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    (directory / f"{stem}.key").write_bytes(public + b"\n")
    return public, secret


def load_keypair(directory: Path, stem: str, *, create: bool = True) -> tuple[bytes, bytes]:
    """The (public, secret) z85 pair stored as `stem.key*`, made on first use."""
    public_path, secret_path = directory / f"{stem}.key", directory / f"{stem}.key_secret"
    if not secret_path.exists():
        if not create:
            raise FileNotFoundError(f"no key pair {secret_path}")
        return write_keypair(directory, stem)
    secret = secret_path.read_bytes().strip()
    public = (public_path.read_bytes().strip() if public_path.exists()
              else zmq.curve_public(secret))
    return public, secret


def parse_public_key(text: str) -> bytes:
    """A z85 public key given inline or as the path of a file holding it."""
    candidate = text.strip()
    path = Path(candidate).expanduser()
    if path.is_file():  # a file first: a path can be 40 characters long too
        candidate = path.read_text().strip()
    if len(candidate) != 40:
        raise ValueError("a CurveZMQ public key is 40 z85 characters (or a file holding one)")
    try:
        zmq.utils.z85.decode(candidate)
    except (ValueError, KeyError):
        raise ValueError("the public key is not valid z85") from None
    return candidate.encode()
