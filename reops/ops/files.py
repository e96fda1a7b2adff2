"""File transfers over SFTP (or the agent's file functions)."""

from __future__ import annotations

from reops.ops.base import Op


def upload(local: str, remote: str, *, mode: int | None = None) -> Op:
    """Copy a local file (or directory, recursively) to `remote` on each host."""
    return Op(name="upload", kind="upload", local=local, remote=remote, mode=mode)


def download(remote: str, local: str) -> Op:
    """Copy `remote` from each host into `local/<host>/` (one folder per host)."""
    return Op(name="download", kind="download", local=local, remote=remote)
