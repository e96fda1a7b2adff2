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


def _temp_file(path: str, data: bytes, mode: int) -> str:
    """`data` in a new file beside `path` (fsynced), to be renamed or linked into place:
    a reader never sees half a key."""
    tmp = f"{path}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_keypair(directory: StrPath, stem: str, *, replace: bool = True
                  ) -> tuple[bytes, bytes]:
    """Create `stem.key` (public) and `stem.key_secret` (0600) in `directory`, each file
    appearing whole. `replace=False`: a pair made meanwhile by another thread or process
    wins (the secret is linked into place, which fails if it exists) and is returned, so
    everyone making the pair at once gets the same one."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public, secret = zmq.curve_keypair()
    secret_path = os.path.join(directory, f"{stem}.key_secret")
    tmp = _temp_file(secret_path, secret + b"\n", 0o600)
    try:
        if replace:
            os.replace(tmp, secret_path)
        else:
            try:
                os.link(tmp, secret_path)
            except FileExistsError:
                return load_keypair(directory, stem, create=False)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    public_path = os.path.join(directory, f"{stem}.key")
    os.replace(_temp_file(public_path, public + b"\n", 0o644), public_path)
    return public, secret


def load_keypair(directory: StrPath, stem: str, *, create: bool = True
                 ) -> tuple[bytes, bytes]:
    """The (public, secret) z85 pair stored as `stem.key*`, made on first use (once, however
    many make it at the same moment). The public key is derived from the secret, so the
    pair always matches (`stem.key` is what people copy to pin it)."""
    secret_path = os.path.join(directory, f"{stem}.key_secret")
    if not os.path.exists(secret_path):
        if not create:
            raise FileNotFoundError(f"no key pair {secret_path}")
        return write_keypair(directory, stem, replace=False)
    secret = _read_bytes(secret_path).strip()
    try:
        return zmq.curve_public(secret), secret
    except (ValueError, zmq.ZMQError):
        raise ValueError(f"{secret_path} is not a CurveZMQ secret key (40 z85 characters): "
                         "remove it (and its .key) to make a new pair, or restore it") from None


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
