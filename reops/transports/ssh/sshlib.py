"""Import asyncssh without its slow start-up probe.

At import, asyncssh looks for liboqs (post-quantum key exchange) with
`ctypes.util.find_library`, which on Linux runs `ldconfig -p` and gcc in subprocesses:
~50-120 ms on every `reops` start. We answer that one lookup by scanning the linker's
directories (same answer for installed libraries), and leave every other lookup to ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import glob
import os
from collections.abc import Iterator

_OQS_NAMES = ("oqs", "liboqs")


def _linker_dirs() -> list[str]:
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for conf in glob.glob("/etc/ld.so.conf.d/*.conf"):
        with contextlib.suppress(OSError), open(conf) as f:
            dirs += [ln.strip() for ln in f if ln.strip().startswith("/")]
    dirs += ["/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib",
             *glob.glob("/usr/lib/*-linux-gnu"), *glob.glob("/lib/*-linux-gnu")]
    return dirs


def find_oqs() -> str | None:
    """liboqs' file name if the linker can find it, like find_library would say."""
    for d in _linker_dirs():
        hits = sorted(glob.glob(os.path.join(d, "liboqs.so*")))
        if hits:
            return os.path.basename(hits[-1])
    return None


@contextlib.contextmanager
def quick_library_probe() -> Iterator[None]:
    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return find_oqs() if name in _OQS_NAMES else real(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = real


with quick_library_probe():
    import asyncssh

__all__ = ["asyncssh"]
