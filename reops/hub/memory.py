"""The hub's memory: its RSS, glibc's account of its heap, and handing freed pages back.

At 10,000 agents nearly all of the hub's memory is libzmq's, per connection (measured in
bench/bench_zmq_memory.py). glibc keeps freed memory inside its heaps for reuse; after a
burst (a fleet registering, the ZAP handler's pipes released) `trim()` returns the free
pages to the kernel. It is called once a burst is over, never per message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33+)."""

    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc with malloc_trim and mallinfo2; None elsewhere."""
    try:
        c = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        c.malloc_trim.argtypes, c.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        c.mallinfo2.argtypes, c.mallinfo2.restype = [], _MallInfo2
    except (OSError, AttributeError):  # musl, macOS, an old glibc
        return None
    return c


def rss_kb() -> int | None:
    """This process's resident set (KB), or None where /proc does not say."""
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def heap_in_use() -> int | None:
    """Bytes glibc's malloc has handed out and not got back (all arenas), or None."""
    c = _glibc()
    if c is None:
        return None
    m = c.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def trim() -> bool:
    """Return glibc's free heap pages to the kernel (malloc_trim(0)); whether it could.

    It walks every arena under its lock (tens of ms for a large heap): run it off the event
    loop (asyncio.to_thread) and only after a burst, never on the message path."""
    c = _glibc()
    if c is None:
        return False
    c.malloc_trim(0)
    return True
