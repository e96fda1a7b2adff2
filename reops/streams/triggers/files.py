"""File triggers: `file_changed(paths)` fires for each path that is added, modified or
deleted, watched natively by `watchfiles` (inotify on Linux) with its built-in debounce.

    on(file_changed("conf/nginx.conf"), hosts=web) | then(upload, "conf/nginx.conf",
                                                          "/etc/nginx/nginx.conf")

The watch runs on the runtime loop (watchfiles' `awatch`); changes within `debounce` are
grouped and each changed path becomes one event (key: the path), in path order. Events
name no host: `on(..., hosts=)` says where the next step runs. Disposing stops the watch.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal, cast

from watchfiles import Change, DefaultFilter, awatch

from reops.core.durations import seconds
from reops.streams.triggers._trigger import Emit, Trigger, pumped
from reops.streams.triggers.event import FileChange, TriggerEvent

ChangeKind = Literal["added", "modified", "deleted"]
CHANGES: tuple[ChangeKind, ...] = ("added", "modified", "deleted")


def file_changed(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                 changes: Iterable[ChangeKind] = CHANGES, glob: str | None = None,
                 debounce: str | float = "1.6s", recursive: bool = True,
                 on_ready: Callable[[], None] | None = None) -> Trigger:
    """Changes under `paths` (files or directories, which must exist), one event per path.

    `changes`: which kinds fire (added, modified, deleted); `glob`: only names matching it
    (`"*.conf"`); editor swap files, `.git` and `__pycache__` are ignored (watchfiles'
    default filter). `on_ready` is called once the watch is in place.
    """
    roots = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    if not roots:
        raise ValueError("file_changed(): give at least one path to watch")
    for p in roots:
        if not p.exists():
            raise ValueError(f"file_changed(): no such file or directory: {p}")
    wanted = set(changes)
    if not wanted <= set(CHANGES):
        raise ValueError(f"file_changed(changes=…): {sorted(wanted - set(CHANGES))} are not "
                         f"changes; choose from {', '.join(CHANGES)}")
    debounce_ms = max(1, round(seconds(debounce, "file_changed(debounce)") * 1000))
    default = DefaultFilter()

    def keep(change: Change, path: str) -> bool:
        return (change.name in wanted and default(change, path)
                and (glob is None or fnmatch.fnmatch(os.path.basename(path), glob)))

    async def pump(emit: Emit) -> None:
        stop = threading.Event()  # read by the watch thread: it returns within 50 ms
        batches = awatch(*roots, watch_filter=keep, debounce=debounce_ms, stop_event=stop,
                         recursive=recursive)

        async def next_batch() -> set[tuple[Change, str]] | None:
            try:
                return await anext(batches)
            except StopAsyncIteration:
                return None

        pending = asyncio.ensure_future(next_batch())
        try:
            # one turn of the loop: awatch has created its watcher, which records changes
            # from then on, before it waits in its thread
            await asyncio.sleep(0)
            if on_ready is not None:
                on_ready()
            while (batch := await asyncio.shield(pending)) is not None:
                for change, path in sorted(batch, key=lambda c: (c[1], c[0])):
                    emit(_event(change, path))
                pending = asyncio.ensure_future(next_batch())
        finally:
            stop.set()
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved: a watch error after disposal is moot
            await batches.aclose()

    names = ", ".join(str(p) for p in roots)
    return Trigger(pumped(pump), f"file_changed({names!r})", hosted=False)


def _event(change: Change, path: str) -> TriggerEvent:
    kind = cast(ChangeKind, change.name)
    return TriggerEvent(source="file", kind=kind, key=path, time=time.time(),
                        payload=FileChange(change=kind, path=path))
