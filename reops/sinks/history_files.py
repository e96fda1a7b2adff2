"""The run history on disk: day directories, spools, parquet files and their compaction.

Layout and rules are `reops.sinks.history`'s (what is recorded, when, and how it is read):
this module owns the files themselves. Every write is atomic (temporary name, fsync,
rename); readers skip what a merged file holds; one flock per day serializes compactions.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

if TYPE_CHECKING:
    import polars as pl

#: the columns, in order; `day` (a Date) comes from the directory name, not the files
COLUMNS = ("run_id", "source", "command", "pipeline", "flow", "user", "host", "op", "step",
           "status", "code", "started_at", "duration_s", "transport", "changed", "out",
           "out_truncated", "err", "err_truncated", "data")
DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")
_PAR1 = b"PAR1"
#: a run's rows not yet in parquet: msgpack {"v": 1, "columns": {column: [values]}}
SPOOL = ".spool"
SPOOL_VERSION = 1


def schema() -> dict[str, Any]:
    """The history's polars schema (without the hive column `day`)."""
    import polars as pl

    return {
        "run_id": pl.String, "source": pl.String, "command": pl.String,
        "pipeline": pl.String, "flow": pl.String, "user": pl.String, "host": pl.String,
        "op": pl.String, "step": pl.Int32, "status": pl.String, "code": pl.Int32,
        "started_at": pl.Datetime("us", "UTC"), "duration_s": pl.Float64,
        "transport": pl.String, "changed": pl.Boolean, "out": pl.String,
        "out_truncated": pl.Boolean, "err": pl.String, "err_truncated": pl.Boolean,
        "data": pl.String,
    }


_days: dict[int, str] = {}


def day_of(ts: float) -> str:
    n = int(ts // 86400)
    d = _days.get(n)
    if d is None:
        d = _days[n] = (date(1970, 1, 1) + timedelta(days=n)).isoformat()
    return d


def import_polars() -> None:
    """Import polars in this (writer) thread, then undo what its import does to Ctrl-C.

    polars puts its own SIGINT handler in front of Python's, flagged SA_RESTART, so the
    kernel restarts the main thread's lock wait instead of letting KeyboardInterrupt out:
    a `run()` waiting meanwhile could not be interrupted until it ended. The main thread's
    waits clear the flag when they start (reops.core.runtime); this import happens in the
    background, maybe during such a wait, so it clears it too (siginterrupt is
    process-wide and allowed from any thread)."""
    import signal

    import polars  # noqa: F401

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            signal.siginterrupt(sig, True)


def frame(cols: dict[str, list[Any]]) -> pl.DataFrame:
    """Columns of `_columns` (or of a spool: a missing column is all nulls) as a
    DataFrame of the history's schema."""
    if "polars" not in sys.modules:
        import_polars()
    import polars as pl

    types = schema()
    n = len(cols.get("run_id", ()))
    full = {c: cols.get(c, [None] * n) for c in COLUMNS}
    return pl.DataFrame(full, schema={**types, "started_at": pl.Int64}).with_columns(
        pl.col("started_at").cast(types["started_at"]))


def write_spool(cols: dict[str, list[Any]], path: Path) -> None:
    """Write a run's columns as a msgpack spool, atomically (as `write_file`)."""
    raw = msgspec.msgpack.encode({"v": SPOOL_VERSION, "columns": cols})
    _atomic(path, lambda f: f.write(raw))


def _read_spool(path: Path) -> dict[str, list[Any]]:
    """A spool's columns (ValueError: not a whole spool of a version this reads)."""
    try:
        doc = msgspec.msgpack.decode(path.read_bytes())
    except msgspec.DecodeError as e:
        raise ValueError(f"not a whole spool ({e})") from None
    if not isinstance(doc, dict) or doc.get("v") != SPOOL_VERSION \
            or not isinstance(doc.get("columns"), dict):
        raise ValueError(f"not a spool of version {SPOOL_VERSION}")
    cols: dict[str, list[Any]] = doc["columns"]
    return cols


def fold(day: Path) -> int:
    """Turn `day`'s spools into parquet files of the same name; returns how many. A spool
    whose parquet file exists already (another reader folded it) is just removed; one that
    cannot be read or written is reported in one line and left for a later query."""
    try:
        names = [n for n in os.listdir(day) if n.endswith(SPOOL) and not n.startswith(".")]
    except OSError:
        return 0
    done = 0
    for name in sorted(names):
        spool = day / name
        target = day / (name[:-len(SPOOL)] + ".parquet")
        try:
            if not target.exists():
                write_file(frame(_read_spool(spool)), target)
                done += 1
            spool.unlink(missing_ok=True)
        except FileNotFoundError:  # another reader folded and removed it meanwhile
            continue
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            sys.stderr.write(f"reops: warning: run history: {spool} not folded into parquet "
                             f"({why}); its rows are left out of this answer: fix "
                             f"permissions of {day}, or move the file away\n")
    return done


def write_file(df: pl.DataFrame, path: Path) -> None:
    """Write `df` to `path` as parquet, atomically (see `_atomic`)."""
    _atomic(path, lambda f: df.write_parquet(f, compression="zstd", statistics=True))


def _atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` atomically: a temporary name in the same directory, fsync, rename,
    fsync the directory (a crash leaves the old state or the new, never half)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prune(root: Path, keep_s: float, today: date) -> None:
    """Remove day directories older than `keep_s` (by name: no file is opened)."""
    if keep_s <= 0:
        return
    oldest = today - timedelta(seconds=keep_s)
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for e in entries:
        m = DAY_DIR.match(e.name)
        if m is None:
            continue
        try:
            day = date.fromisoformat(m.group(1))
        except ValueError:
            continue
        if day < oldest:
            import shutil  # (here: it loads bz2/lzma, ~5 ms of every short command)

            shutil.rmtree(e.path, ignore_errors=True)


# ── compaction: a closed day's many small files become one ────────────────────────────

#: covered files stay this long after their day was compacted (a reader that listed them
#: just before can still read them), then they are removed
COMPACT_GRACE_S = 600.0


#: a merged file of the tiered pass is `compact-<ns>-<pid>-l<level>.parquet`; the full pass's
#: (a closed day in one file) has no level and is never merged by the tiered pass
_LEVEL = re.compile(r"-l(\d+)\.parquet$")
_FULL = 1 << 30
#: merged files of one level become one of the next once this many are there
COMPACT_FANIN = 8
#: `.<compacted>.covers` lists read so far (they never change once renamed in): path ->
#: (names held, when the list was made)
_listings: dict[str, tuple[list[str], float]] = {}


def _level(name: str) -> int:
    """0 for a run's own file, its tier for a merged one."""
    if not name.startswith("compact-"):
        return 0
    m = _LEVEL.search(name)
    return int(m.group(1)) if m else _FULL


def _covers(day: Path, names: Iterable[str]) -> dict[str, tuple[str, float]]:
    """Files of `day` that a compacted file holds: name -> (that file, when it was made),
    read from each compacted file's `.<name>.covers` list."""
    covered: dict[str, tuple[str, float]] = {}
    for name in names:
        if name.startswith("compact-"):
            listing = str(day / f".{name}.covers")
            got = _listings.get(listing)
            if got is None:
                try:
                    made = os.stat(listing).st_mtime
                    with open(listing) as f:
                        got = (f.read().split(), made)
                except OSError:
                    continue
                if len(_listings) >= 4096:
                    _listings.clear()
                _listings[listing] = got
            for n in got[0]:
                covered[n] = (name, got[1])
    return covered


def _parquet_names(day: Path) -> list[str]:
    return sorted(n for n in os.listdir(day) if n.endswith(".parquet") and not n.startswith("."))


#: `_check`'s answer for a file gone since the directory was listed (merged and removed)
_GONE = "gone"
#: files found whole: path -> (inode, size, mtime_ns); a file never changes once renamed in
_whole: dict[str, tuple[int, int, int]] = {}


def _check(path: Path) -> str | None:
    """`_damaged(path)`, remembered for whole files: a second query does not parse the
    footers again. `_GONE` for a file that no longer exists."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _GONE
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    if _whole.get(str(path)) == key:
        return None
    why = _damaged(path)
    if why is None:
        if len(_whole) >= 100_000:
            _whole.clear()
        _whole[str(path)] = key
    return why


@contextlib.contextmanager
def _day_lock(day: Path) -> Iterator[bool]:
    """The day's compaction lock, without waiting: False while another process holds it
    (it is compacting this day right now; the next write tries again)."""
    import fcntl

    try:
        lock = os.open(day / ".compact.lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        os.close(lock)


def _live(day: Path) -> list[str]:
    """The day's files a reader reads now (held by no merged file); under the day's lock,
    so removing what merged files have held past COMPACT_GRACE_S is safe here."""
    names = _parquet_names(day)
    covered = _covers(day, names)
    _remove_covered(day, covered)
    return [n for n in names if n not in covered]


def _merge(day: Path, todo: list[str], level: int | None) -> str | None:
    """Merge the files `todo` of `day` into one (of `level`; None: the full pass's) and
    return its name; damaged files are left where they are (readers report them). The list
    of what it holds is renamed in before the file: a reader that sees the file sees it."""
    todo = [n for n in todo if _check(day / n) is None]
    if len(todo) < 2:
        return None
    if "polars" not in sys.modules:
        import_polars()
    import polars as pl

    merged = pl.scan_parquet([day / n for n in todo], schema=schema(), hive_partitioning=False,
                             missing_columns="insert", extra_columns="ignore").collect()
    suffix = "" if level is None else f"-l{level}"
    name = f"compact-{time.time_ns():x}-{os.getpid()}{suffix}.parquet"
    listing = day / f".{name}.covers"
    tmp = listing.with_name(listing.name + ".tmp")
    tmp.write_text("\n".join(todo) + "\n")
    tmp.replace(listing)
    write_file(merged, day / name)
    return name


def compact(root: Path, *, before: date | None = None) -> int:
    """Merge each day's files into one, for days before `before` (default: today, UTC):
    a query then opens 30 files for 30 days, not thousands. Safe with readers and other
    writers: the merged file and the list of what it holds appear atomically, readers skip
    what it holds, and the merged files are removed COMPACT_GRACE_S later. Returns the
    number of days compacted."""
    before = before or datetime.now(UTC).date()
    done = 0
    try:
        days = sorted(e.path for e in os.scandir(root) if e.is_dir() and DAY_DIR.match(e.name))
    except OSError:
        return 0
    for path in days:
        day = Path(path)
        if day.name[4:] >= before.isoformat():
            continue
        with _day_lock(day) as locked:
            if not locked:
                continue
            fold(day)
            if len(todo := _live(day)) >= 2 and _merge(day, todo, None):
                done += 1
    return done


def compact_open(root: Path, small_files: int, *, day: date | None = None) -> int:
    """The tiered pass over one day (default: today, UTC), safe while writers keep adding
    files to it: more than `small_files` ([history] compact_files) per-run files become one
    merged file, and COMPACT_FANIN merged files of a level one of the next. The writer runs
    it after each write, so a busy day stays at about small_files + 7 files per level and a
    query over "1d" opens tens of files, not thousands. Returns the number of merges."""
    return compact_tiers(root / f"day={(day or datetime.now(UTC).date()).isoformat()}",
                         small_files)


def compact_tiers(day: Path, small: int) -> int:
    """`compact_open` for the directory `day`; nothing opened while it holds at most
    `small` per-run files or spools (one listing, no read: what a write costs usually)."""
    try:
        names = os.listdir(day)
    except OSError:
        return 0
    if sum(1 for n in names if not n.startswith((".", "compact-"))
           and n.endswith((".parquet", SPOOL))) <= small:
        return 0
    done = 0
    with _day_lock(day) as locked:
        if not locked:
            return 0
        fold(day)
        tiers: dict[int, list[str]] = {}
        for n in _live(day):
            tiers.setdefault(_level(n), []).append(n)
        level = 0
        while level <= max((k for k in tiers if k < _FULL), default=0):
            group = tiers.get(level, [])
            if len(group) > (small if level == 0 else COMPACT_FANIN - 1):
                made = _merge(day, group, level + 1)
                if made is not None:
                    tiers.setdefault(level + 1, []).append(made)
                    done += 1
            level += 1
    return done


def _remove_covered(day: Path, covered: dict[str, tuple[str, float]]) -> None:
    """Remove files a compacted file has held for longer than COMPACT_GRACE_S; a compacted
    file merged again takes what it held (and its list) with it."""
    now = time.time()
    for n, (_, made) in covered.items():
        if now - made < COMPACT_GRACE_S:
            continue
        with contextlib.suppress(OSError):
            if n.startswith("compact-"):
                listing = day / f".{n}.covers"
                with contextlib.suppress(OSError):
                    for inner in listing.read_text().split():
                        (day / inner).unlink(missing_ok=True)
                listing.unlink(missing_ok=True)
                _listings.pop(str(listing), None)
            else:  # a spool left by a reader that died folding it must not come back
                (day / (n.removesuffix(".parquet") + SPOOL)).unlink(missing_ok=True)
            (day / n).unlink(missing_ok=True)


def _damaged(path: Path) -> str | None:
    """Why `path` is not a whole parquet file (None: it is). Cheap: the magic bytes at
    both ends and the footer's length (two small reads), then the footer itself."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 12:
                return f"{size} bytes: too short for parquet (a partial write?)"
            if f.read(4) != _PAR1:
                return "not a parquet file (bad header)"
            f.seek(size - 8)
            tail = f.read(8)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if tail[4:] != _PAR1:
        return "truncated (no parquet footer: a partial write?)"
    if int.from_bytes(tail[:4], "little") + 12 > size:
        return "truncated (footer longer than the file)"
    import polars as pl

    try:
        pl.read_parquet_schema(path)
    except Exception as e:
        return f"unreadable footer ({str(e).splitlines()[0][:120] if str(e) else e})"
    return None


def files(root: Path, since: date | None = None, small_files: int | None = None
          ) -> list[Path]:
    """The history's files of the day directories from `since` on (all: None), oldest day
    first; damaged ones are reported (one line each) and left out. With `small_files`, a
    day holding more per-run files than that is compacted first (`compact_open`)."""
    try:
        days = [e for e in os.scandir(root) if e.is_dir() and DAY_DIR.match(e.name)]
    except FileNotFoundError:
        return []
    except OSError as e:
        sys.stderr.write(f"reops: warning: cannot read the run history at {root}: {e}\n")
        return []
    found: list[Path] = []
    for d in sorted(days, key=lambda e: e.name):
        if since is not None and d.name[4:] < since.isoformat():
            continue
        fold(Path(d.path))  # spools of short commands become parquet first
        if small_files:  # a day of many small files (spools folded, say) becomes few
            with contextlib.suppress(OSError):  # (a read-only history: read them all)
                compact_tiers(Path(d.path), small_files)
        try:
            names = _parquet_names(Path(d.path))
        except OSError:
            continue
        covered = _covers(Path(d.path), names)
        for name in names:
            if name in covered:
                continue
            p = Path(d.path) / name
            why = _check(p)
            if why is None:
                found.append(p)
            elif why is not _GONE:
                sys.stderr.write(f"reops: warning: skipped {p}: {why}; move it away or "
                                 f"delete it (rm '{p}')\n")
    return found
