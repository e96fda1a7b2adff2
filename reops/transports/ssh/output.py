"""Bounded capture of a command's output: keep the head and the tail, cut the middle.

A host printing gigabytes must not cost the controller gigabytes. Each stream keeps its
first and last `max_output // 2` bytes (plus one read chunk); the text says exactly how many
bytes were cut and, when `output_spill` is set, which file has all of them. Bytes become
text as UTF-8 with U+FFFD for invalid sequences, so the same bytes give the same text on
every transport. Streamed Lines are split at `max_line` so one endless line is never held.
"""

from __future__ import annotations

import codecs
import os
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

from reops.core.model import Line

StreamName = Literal["stdout", "stderr"]


def decode(data: bytes) -> str:
    """Output bytes as text: UTF-8, invalid bytes become U+FFFD (never an error)."""
    return data.decode("utf-8", errors="replace")


def cut_marker(cut: int, stream: StreamName, spill: Path | None,
               spill_error: str | None = None) -> str:
    """The line standing in for the bytes left out of a Result's text."""
    if spill_error:
        where = f"could not keep all of it ({spill_error}); raise max_output"
    elif spill:
        where = f"all of it is in {spill}"
    else:
        where = "raise max_output or set output_spill"
    return f"\n… [reops: cut {cut} bytes of {stream}; {where}] …\n"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "_"


def spill_path(directory: str, host: str, op: str, stream: StreamName) -> Path:
    """A new file `<directory>/<host>/<op>-<ns>.<stream>` (host dir 0700: output can be secret)."""
    d = Path(directory).expanduser() / _safe_name(host)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d / f"{_safe_name(op)}-{time.time_ns()}.{stream}"


def _utf8_head_end(data: bytes | bytearray | memoryview) -> int:
    """Where `data` ends on a whole UTF-8 character (drops a split one at the end)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b < 0x80:
            return n
        if b >= 0xC0:  # a lead byte: is its character complete?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n if back >= need else n - back
    return n


def _utf8_tail_start(data: bytes | bytearray | memoryview) -> int:
    """Where `data` starts on a whole UTF-8 character (skips up to 3 continuation bytes)."""
    i = 0
    while i < min(3, len(data)) and 0x80 <= data[i] < 0xC0:
        i += 1
    return i


class Capture:
    """One stream's bytes, bounded: head + tail in memory, all of it in a spill file if asked."""

    def __init__(self, limit: int, stream: StreamName,
                 spill_to: Callable[[], Path] | None = None) -> None:
        self.stream: StreamName = stream
        self.limit = max(0, limit)
        self.head_max = self.limit // 2
        self.tail_max = self.limit - self.head_max
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.total = 0
        self._spill_to = spill_to
        self.spill: Path | None = None
        self.spill_error: str | None = None
        self._file: BinaryIO | None = None

    def feed(self, data: bytes) -> None:
        """Take the next chunk of the stream."""
        if not data:
            return
        if self.total + len(data) > self.limit and self._spill_to and self.spill is None:
            self._start_spill()  # nothing was dropped yet: head + tail are all so far
        self.total += len(data)
        if self._file is not None:
            try:
                self._file.write(data)
            except OSError as e:  # e.g. a full disk: keep going without the spill
                self._spill_failed(e)
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail.append(data)
            self.tail_len += len(data)
            while self.tail and self.tail_len - len(self.tail[0]) >= self.tail_max:
                self.tail_len -= len(self.tail.popleft())

    def _start_spill(self) -> None:
        assert self._spill_to is not None
        try:
            self.spill = self._spill_to()
            fd = os.open(self.spill, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o600)
            self._file = os.fdopen(fd, "wb")
            self._file.write(self.head)
            for chunk in self.tail:
                self._file.write(chunk)
        except OSError as e:
            self.spill = self.spill or Path(getattr(e, "filename", None) or "?")
            self._spill_failed(e)

    def _spill_failed(self, e: OSError) -> None:
        self.spill_error = f"spill to {self.spill}: {e.strerror or e}"
        self.close()

    def close(self) -> None:
        """Finish the spill file, if any (idempotent)."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as e:
                self._spill_failed(e)

    def _kept(self) -> tuple[memoryview, memoryview]:
        """The head and tail shown when over the limit, cut on whole UTF-8 characters."""
        head = memoryview(self.head)[:_utf8_head_end(self.head)]
        tail = b"".join(self.tail)
        tail_view = memoryview(tail)[max(0, len(tail) - self.tail_max):]
        return head, tail_view[_utf8_tail_start(tail_view):]

    @property
    def cut(self) -> int:
        """Bytes left out of `text()` (0 when everything fits)."""
        if self.total <= self.limit:
            return 0
        head, tail = self._kept()
        return self.total - len(head) - len(tail)

    def text(self) -> str:
        """The stream as text; when over the limit: head, a marker with the cut count, tail.
        (Decodes from the buffers in place: a few MB per host at the end, no more.)"""
        if self.total <= self.limit:
            while self.tail:
                self.head += self.tail.popleft()
            self.tail_len = 0
            return str(self.head, "utf-8", "replace")
        head, tail = self._kept()
        cut = self.total - len(head) - len(tail)
        marker = cut_marker(cut, self.stream, self.spill, self.spill_error)
        return "".join((str(head, "utf-8", "replace"), marker, str(tail, "utf-8", "replace")))


class LineSplitter:
    """Turn a stream's chunks into Lines as they arrive; a line never grows past `max_line`."""

    def __init__(self, host: str, kind: Literal["out", "err"], sink: Callable[[Line], None],
                 max_line: int) -> None:
        self.host = host
        self.kind: Literal["out", "err"] = kind
        self.sink = sink
        self.max_line = max(1, max_line)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def _emit(self, text: str) -> None:
        while len(text) > self.max_line:
            self.sink(Line(self.host, self.kind, text[:self.max_line]))
            text = text[self.max_line:]
        self.sink(Line(self.host, self.kind, text))

    def feed(self, data: bytes) -> None:
        """Emit every line completed by `data`, and pieces of an over-long one."""
        *whole, rest = (self._partial + self._decoder.decode(data)).split("\n")
        for line in whole:
            self._emit(line)
        while len(rest) >= self.max_line:
            self.sink(Line(self.host, self.kind, rest[:self.max_line]))
            rest = rest[self.max_line:]
        self._partial = rest

    def close(self) -> None:
        """End of stream: emit the last line even without a newline."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self._emit(rest)
