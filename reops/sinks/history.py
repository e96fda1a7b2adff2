"""The run history: every run's Results, appended to a parquet dataset, and `history()`.

Layout (hive style, one directory per UTC day, so a query for the last day reads one or two
directories whatever the history holds):

    ~/.reops/history/day=2026-11-30/<run_id>-<n>.parquet

One row per step per host (the schema is `SCHEMA`; it only grows, by nullable columns, so
old files keep reading). It is an index, not an archive: `out`/`err` keep the first and
last [history] max_output bytes (4 KiB) with `out_truncated`/`err_truncated`; the full
output is what `--save`/`-o jsonl` keep.

Recording never blocks or breaks a run: the hook (see reops.core.hooks) only queues the
Results; a writer thread writes them to a temporary name in the day's directory, fsyncs and
renames it (readers never see half a file), and removes day directories older than
[history] keep. A write that fails prints one warning line; the run's exit code is the
run's. The queue is flushed at exit. Endless streams are recorded Result by Result, in
batches (flush_rows or flush_s).

Where polars is already loaded the writer writes parquet. Where it is not (`reops exec`
and other short commands, plain scripts) importing it would cost more than the whole run,
so the writer writes the same columns as a small msgpack spool `<run_id>-<n>.spool` next to
where the parquet file would go; the next query (`history()`, `reops history`, `reops
report`) or compaction folds each spool into `<run_id>-<n>.parquet` (atomically, then
removes the spool; two readers folding at once write the same file).

Compaction keeps the number of files a query opens small: after each write, a day (today
too, while runs keep landing in it) holding more than [history] compact_files per-run files
has them merged into one, and COMPACT_FANIN merged files of a level into one of the next
(tiered, so each row is rewritten a few times, not once per run); once a day each closed day
becomes one file. A merged file lists what it holds; readers skip that, and the merged-away
files are removed COMPACT_GRACE_S later. One flock per day directory serializes compactions.

Config `[history]` in ~/.reops/config.toml (or REOPS_HISTORY_<FIELD>): enabled, path,
keep, max_output, max_data, flush_rows, flush_s, compact_files; `REOPS_HISTORY=0` turns it
off too.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, Literal

import msgspec

from reops.core import hooks
from reops.core.durations import seconds
from reops.core.model import Outcome, Result, RunInfo
from reops.core.settings import ConfigError, config_path, home, load_table

if TYPE_CHECKING:
    import polars as pl

Source = Literal["cli", "flow", "repl", "python"]
SOURCES: tuple[str, ...] = ("cli", "flow", "repl", "python")

#: the columns, in order; `day` (a Date) comes from the directory name, not the files
COLUMNS = ("run_id", "source", "command", "pipeline", "flow", "user", "host", "op", "step",
           "status", "code", "started_at", "duration_s", "transport", "changed", "out",
           "out_truncated", "err", "err_truncated", "data")
DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")
#: how long process exit waits for queued history to be written
EXIT_WAIT_S = 10.0
#: endless streams' rows waiting to be written, at most (beyond: left out, and counted)
MAX_PENDING_ENDLESS = 5_000
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


# ── settings ───────────────────────────────────────────────────────────────────────────

Bytes = Annotated[int, msgspec.Meta(ge=0)]


class HistorySettings(msgspec.Struct, frozen=True, kw_only=True):
    """[history] in config.toml: where the history lives, how long, how much per row."""

    enabled: bool = True
    path: str | None = None  # default: <reops home>/history ($REOPS_HOME or ~/.reops)
    keep: str = "90d"  # day directories older than this are removed on write; "0": forever
    max_output: Bytes = 4096  # bytes of out and of err kept per row (first and last half)
    max_data: Bytes = 16384  # bytes of data's JSON kept per row (beyond: a marker object)
    flush_rows: Annotated[int, msgspec.Meta(ge=1)] = 1000  # endless streams: rows a batch
    flush_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0  # endless streams: seconds a batch
    compact_files: Annotated[int, msgspec.Meta(ge=1)] = 32  # a day's per-run files, at most

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser() if self.path else home() / "history"

    @property
    def keep_s(self) -> float:
        return seconds(self.keep, "[history] keep")


def settings() -> HistorySettings:
    """[history] from the config file and REOPS_HISTORY_* (ConfigError naming the source)."""
    if os.environ.get("REOPS_HISTORY", "").strip().lower() in ("0", "false", "no", "off"):
        return HistorySettings(enabled=False)  # off, whatever the config file says
    cfg = load_table(HistorySettings, "history", "REOPS_HISTORY_")
    try:
        cfg.keep_s  # noqa: B018 - a bad `keep` fails here, naming where it came from
    except ValueError as e:
        where = "REOPS_HISTORY_KEEP" if "REOPS_HISTORY_KEEP" in os.environ else config_path()
        raise ConfigError(f"{where}: {e}; fix or unset it") from None
    return cfg


# ── who records: the source ────────────────────────────────────────────────────────────

_source: tuple[str, str | None] | None = None


def set_source(source: Source, flow: str | None = None) -> None:
    """Label this process's later runs: "repl" (the REPL calls this), "flow" (with the
    flow's name), "cli" or "python". Unset: "cli" under the `reops` launcher, else "python"."""
    global _source
    if source not in SOURCES:
        raise ValueError(f"history source must be one of {', '.join(SOURCES)}, not {source!r}")
    _source = (source, flow)


def current_source() -> tuple[str, str | None]:
    """(source, flow) that a run finishing now is recorded with."""
    if _source is not None:
        return _source
    return ("cli" if _launched_as_cli() else "python"), None


def _launched_as_cli() -> bool:
    """Whether this process is the `reops` command (its script, or `python -m reops`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return Path(sys.argv[0]).name == "reops" or getattr(spec, "name", "") == "reops.__main__"


# ── rows ───────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Run:
    """What every row of one run shares."""

    info: RunInfo
    source: str
    flow: str | None
    cfg: HistorySettings


def _cap(text: str, limit: int) -> tuple[str, bool]:
    """`text` within `limit` UTF-8 bytes: its head and tail around a cut marker."""
    if len(text) * 4 <= limit:  # fast path: cannot be over, whatever the characters
        return text, False
    raw = text.encode()
    if len(raw) <= limit:
        return text, False
    half = limit // 2
    head = raw[:half].decode(errors="ignore")
    tail = raw[len(raw) - half:].decode(errors="ignore")
    return f"{head}\n… [{len(raw) - 2 * half} bytes cut: history is an index; --save or "\
        f"-o jsonl keep everything] …\n{tail}", True


_encode = msgspec.json.Encoder().encode


def _data(value: Any, limit: int) -> str | None:
    """Result.data as JSON text; past `limit` bytes a small valid JSON marker instead."""
    if value is None:
        return None
    try:
        raw = _encode(value)
    except (TypeError, msgspec.EncodeError) as e:
        return _encode({"_unencodable": str(e)[:200]}).decode()
    if len(raw) > limit:
        return _encode({"_truncated": len(raw)}).decode()
    return raw.decode()


def _dry(r: Result) -> bool:
    return isinstance(r.data, dict) and "dry_run" in r.data


def _steps(results: Outcome | Iterable[Result]) -> list[tuple[Result, int]]:
    """(step, index) for every step of every host, dry runs left out."""
    if isinstance(results, Outcome):
        pairs = [(s, i) for h in results.hosts for i, s in enumerate(results.steps(h))]
    else:
        pairs = [(s, i) for r in results for i, s in enumerate(r.steps)]
    return [(s, i) for s, i in pairs if not _dry(s)]


_days: dict[int, str] = {}


def _day(ts: float) -> str:
    n = int(ts // 86400)
    d = _days.get(n)
    if d is None:
        d = _days[n] = (date(1970, 1, 1) + timedelta(days=n)).isoformat()
    return d


def _import_polars() -> None:
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


def _columns(run: _Run, steps: list[tuple[Result, int]]) -> dict[str, dict[str, list[Any]]]:
    """The rows of `steps` as plain columns (started_at: int microseconds), one set per UTC
    day (by each step's start): what a spool holds and a DataFrame is built from."""
    info, cfg = run.info, run.cfg
    by_day: dict[str, list[tuple[Result, int]]] = {}
    for s, i in steps:
        by_day.setdefault(_day(s.started_at or info.started_at), []).append((s, i))
    pipeline = info.pipeline
    out: dict[str, dict[str, list[Any]]] = {}
    for day, rows in by_day.items():
        n = len(rows)
        outs = [_cap(s.out, cfg.max_output) for s, _ in rows]
        errs = [_cap(s.err, cfg.max_output) for s, _ in rows]
        out[day] = {
            "run_id": [info.run_id] * n, "source": [run.source] * n,
            "command": [info.command] * n,
            "pipeline": [pipeline or " | ".join(x.op for x in s.steps) for s, _ in rows],
            "flow": [run.flow] * n, "user": [info.user] * n,
            "host": [s.host for s, _ in rows], "op": [s.op for s, _ in rows],
            "step": [i for _, i in rows], "status": [s.status for s, _ in rows],
            "code": [max(-(2**31), min(2**31 - 1, s.code)) for s, _ in rows],
            "started_at": [int((s.started_at or info.started_at) * 1e6) for s, _ in rows],
            "duration_s": [float(s.duration_s) for s, _ in rows],
            "transport": [s.transport for s, _ in rows],
            "changed": [s.changed for s, _ in rows],
            "out": [t for t, _ in outs], "out_truncated": [c for _, c in outs],
            "err": [t for t, _ in errs], "err_truncated": [c for _, c in errs],
            "data": [_data(s.data, cfg.max_data) for s, _ in rows],
        }
    return out


def _frame(cols: dict[str, list[Any]]) -> pl.DataFrame:
    """Columns of `_columns` (or of a spool: a missing column is all nulls) as a
    DataFrame of the history's schema."""
    if "polars" not in sys.modules:
        _import_polars()
    import polars as pl

    types = schema()
    n = len(cols.get("run_id", ()))
    full = {c: cols.get(c, [None] * n) for c in COLUMNS}
    return pl.DataFrame(full, schema={**types, "started_at": pl.Int64}).with_columns(
        pl.col("started_at").cast(types["started_at"]))


def _write_spool(cols: dict[str, list[Any]], path: Path) -> None:
    """Write a run's columns as a msgpack spool, atomically (as `_write_file`)."""
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
                _write_file(_frame(_read_spool(spool)), target)
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


def _write_file(df: pl.DataFrame, path: Path) -> None:
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


def _prune(root: Path, keep_s: float, today: date) -> None:
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
        _import_polars()
    import polars as pl

    merged = pl.scan_parquet([day / n for n in todo], schema=schema(), hive_partitioning=False,
                             missing_columns="insert", extra_columns="ignore").collect()
    suffix = "" if level is None else f"-l{level}"
    name = f"compact-{time.time_ns():x}-{os.getpid()}{suffix}.parquet"
    listing = day / f".{name}.covers"
    tmp = listing.with_name(listing.name + ".tmp")
    tmp.write_text("\n".join(todo) + "\n")
    tmp.replace(listing)
    _write_file(merged, day / name)
    return name


def compact(root: Path | None = None, *, before: date | None = None) -> int:
    """Merge each day's files into one, for days before `before` (default: today, UTC):
    a query then opens 30 files for 30 days, not thousands. Safe with readers and other
    writers: the merged file and the list of what it holds appear atomically, readers skip
    what it holds, and the merged files are removed COMPACT_GRACE_S later. Returns the
    number of days compacted."""
    root = root or settings().root
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


def compact_open(root: Path | None = None, *, day: date | None = None,
                 small_files: int | None = None) -> int:
    """The tiered pass over one day (default: today, UTC), safe while writers keep adding
    files to it: more than `small_files` ([history] compact_files) per-run files become one
    merged file, and COMPACT_FANIN merged files of a level one of the next. The writer runs
    it after each write, so a busy day stays at about small_files + 7 files per level and a
    query over "1d" opens tens of files, not thousands. Returns the number of merges."""
    cfg = settings() if root is None or small_files is None else None
    root = root or cfg.root  # type: ignore[union-attr]
    small = small_files if small_files is not None else cfg.compact_files  # type: ignore[union-attr]
    return _compact_tiers(root / f"day={(day or datetime.now(UTC).date()).isoformat()}", small)


def _compact_tiers(day: Path, small: int) -> int:
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


# ── the writer thread ──────────────────────────────────────────────────────────────────


@dataclass
class _Batch:
    run: _Run
    steps: list[tuple[Result, int]]
    immediate: bool  # a whole run: write now; else a Result of an endless run: batch it
    since: float = field(default_factory=time.monotonic)


class _Writer:
    """One daemon thread that writes queued runs; flushed by `flush()` and at exit."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Batch | threading.Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0  # the process the thread runs in (a forked child starts its own)
        self._pending_endless = 0  # endless runs' rows queued or buffered, not written
        self._dropped = 0  # endless runs' rows left out because too many were waiting
        self._buffers: dict[str, _Batch] = {}  # endless runs: run_id -> rows so far
        self._numbers = itertools.count()  # <run_id>-<n>: n never repeats in a process
        self._pruned: set[tuple[Path, date]] = set()
        self._warned: set[str] = set()

    def put(self, batch: _Batch) -> None:
        """Queue `batch`. A whole run is always taken (its Outcome holds those Results
        anyway); Results of endless runs wait at most MAX_PENDING_ENDLESS at a time, the
        ones beyond are dropped and counted (history is an index, never a memory leak)."""
        n = len(batch.steps)
        if self._thread is not None and self._pid != os.getpid():
            return  # a forked child: polars (its thread pool) is not fork-safe; skip
        with self._lock:
            if not batch.immediate and self._pending_endless + n > MAX_PENDING_ENDLESS:
                self._dropped += n
                first = self._dropped == n
                n = 0
            else:
                first = False
                if not batch.immediate:
                    self._pending_endless += n
            if self._thread is None:
                atexit.register(self._at_exit)
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._main, name="reops-history",
                                                 daemon=True)
                self._thread.start()
        if n:
            self._queue.put(batch)
        elif first:
            self._warn(batch.run.cfg.root, "an endless stream's Results arrive faster than "
                       f"they are written ({MAX_PENDING_ENDLESS} waiting); some are left out")

    def _at_exit(self) -> None:
        self.flush(EXIT_WAIT_S)
        if self._dropped:
            sys.stderr.write(f"reops: note: {self._dropped} Results of endless streams were "
                             "not recorded in the run history (they came too fast)\n")

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued so far; True when done within `timeout`."""
        if self._thread is None or self._pid != os.getpid():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _main(self) -> None:
        while True:
            wait = min((b.run.cfg.flush_s for b in self._buffers.values()), default=None)
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, threading.Event):
                for run_id in list(self._buffers):
                    self._write(self._buffers.pop(run_id))
                item.set()
                continue
            if item is not None:
                self._take(item)
            now = time.monotonic()
            for run_id, b in list(self._buffers.items()):
                if now - b.since >= b.run.cfg.flush_s:
                    self._write(self._buffers.pop(run_id))

    def _take(self, item: _Batch) -> None:
        if item.immediate:
            self._write(item)
            return
        run_id = item.run.info.run_id
        buf = self._buffers.get(run_id)
        if buf is None:
            self._buffers[run_id] = buf = _Batch(item.run, [], immediate=False)
        buf.steps.extend(item.steps)
        if len(buf.steps) >= item.run.cfg.flush_rows:
            self._write(self._buffers.pop(run_id))

    def _write(self, batch: _Batch) -> None:
        run = batch.run
        root = run.cfg.root
        written: list[Path] = []
        try:
            if batch.steps:
                # parquet where polars is loaded already; else a spool: importing polars
                # would cost a short command more than its whole run (queries fold it)
                as_parquet = "polars" in sys.modules
                for day, cols in _columns(run, batch.steps).items():
                    name = f"{run.info.run_id}-{next(self._numbers)}"
                    if as_parquet:
                        _write_file(_frame(cols), root / f"day={day}" / f"{name}.parquet")
                        written.append(root / f"day={day}")  # (spools: queries compact)
                    else:
                        _write_spool(cols, root / f"day={day}" / f"{name}{SPOOL}")
            today = datetime.now(UTC).date()
            if (root, today) not in self._pruned:  # once a day per process: cheap
                self._pruned.add((root, today))
                _prune(root, run.cfg.keep_s, today)
                compact(root, before=today)
        except Exception as e:
            self._warn(root, f"{type(e).__name__}: {e}")
        finally:
            if not batch.immediate:
                with self._lock:
                    self._pending_endless -= len(batch.steps)
        for where in written:  # the day's files stay few, even today's
            try:
                _compact_tiers(where, run.cfg.compact_files)
            except Exception as e:
                self._warn(root, f"{type(e).__name__}: {e}", "compacted")

    def _warn(self, root: Path | None, why: str, what: str = "written") -> None:
        where = f" {'to' if what == 'written' else 'in'} {root}" if root is not None else ""
        text = (f"reops: warning: run history not {what}{where}: {why}; the run is "
                "unaffected (fix it, or turn history off: [history] enabled = false "
                "or REOPS_HISTORY=0)\n")
        if text not in self._warned:
            self._warned.add(text)
            sys.stderr.write(text)
            sys.stderr.flush()


_writer = _Writer()


def flush(timeout: float | None = EXIT_WAIT_S) -> bool:
    """Wait until every Result recorded so far is written (tests, before a query)."""
    return _writer.flush(timeout)


# ── recording ──────────────────────────────────────────────────────────────────────────


def _settings_or_warn() -> HistorySettings | None:
    try:
        return settings()
    except (ConfigError, ValueError) as e:
        _writer._warn(None, str(e))
        return None


def record(results: Outcome | Iterable[Result], run: RunInfo | None = None, *,
           source: Source = "flow", flow: str | None = None) -> None:
    """Append a run's Results (every step of every host) to the history, off this thread.

    What flows use (`record(outcome.results, run, flow="heal")`); runs of `run()`/`await`
    and of the CLI are recorded without it. Never raises for a failed write."""
    cfg = _settings_or_warn()
    if cfg is None or not cfg.enabled:
        return
    if run is None:
        run = results.run if isinstance(results, Outcome) and results.run else RunInfo()
    steps = _steps(results)
    if steps:
        _writer.put(_Batch(_Run(run, source, flow, cfg), steps, immediate=True))


def _on_outcome(outcome: Outcome) -> None:
    src, flow = current_source()
    record(outcome, outcome.run, source=src, flow=flow)  # type: ignore[arg-type]


#: endless runs: run_id -> its shared row context (settings read once per run), the most
#: recent ENDLESS_RUNS of them
_endless: dict[str, _Run | None] = {}
ENDLESS_RUNS = 64


def _on_result(result: Result, info: RunInfo) -> None:
    record_result(result, info)


def record_result(result: Result, info: RunInfo, *, source: Source | None = None,
                  flow: str | None = None) -> None:
    """Append one Result of a long run (`info` names it), batched: what the hub's flows call
    per Result; settings are read once per run, not per Result. Never raises."""
    ctx = _endless.get(info.run_id, False)
    if ctx is False:
        cfg = _settings_or_warn()
        src, flow = (source, flow) if source is not None else current_source()
        ctx = _endless[info.run_id] = _Run(info, src, flow, cfg) if cfg and cfg.enabled \
            else None
        while len(_endless) > ENDLESS_RUNS:  # dicts keep insertion order: oldest first
            _endless.pop(next(iter(_endless)))
    if ctx is None or not isinstance(ctx, _Run):
        return
    steps = _steps([result])
    if steps:
        _writer.put(_Batch(ctx, steps, immediate=False))


hooks.on_outcome(_on_outcome)
hooks.on_result(_on_result)


# ── reading ────────────────────────────────────────────────────────────────────────────


def cutoff(since: str | float | timedelta | datetime | None) -> datetime | None:
    """The oldest start time `since` keeps: "1d", 3600 (seconds), a timedelta or a
    datetime; None keeps everything. A bad value: one-line ValueError."""
    if since is None:
        return None
    now = datetime.now(UTC)
    if isinstance(since, datetime):
        return since if since.tzinfo else since.replace(tzinfo=UTC)
    if isinstance(since, timedelta):
        return now - since
    return now - timedelta(seconds=seconds(since, "since"))


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
                _compact_tiers(Path(d.path), small_files)
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


def _glob(column: str, pattern: str) -> pl.Expr:
    """`column` matches the shell glob `pattern` (`web*`, `pkg.*`; `a,b`: either)."""
    import polars as pl

    alts = []
    for part in pattern.split(","):
        rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in part)
        alts.append(rx)
    return pl.col(column).str.contains("^(?:" + "|".join(alts) + ")$")


def history(since: str | float | timedelta | datetime | None = "1d", *, failed: bool = False,
            host: str | None = None, op: str | None = None,
            path: str | Path | None = None) -> pl.LazyFrame:
    """Past runs' Results as a polars LazyFrame, one row per step per host.

    `since` ("1d", "12h"; None: everything) reads only the day directories it needs;
    `failed` keeps status != ok; `host`/`op` are globs (`web*`, `pkg.*`). A damaged file is
    reported on stderr and skipped. Runs this process recorded are written first, so the
    run that just finished is in the answer.

        history("7d", failed=True).group_by("host").len().collect()
    """
    import polars as pl

    start = cutoff(since)
    cfg = settings()
    root = Path(path).expanduser() if path is not None else cfg.root
    _writer.flush(EXIT_WAIT_S)
    found = files(root, start.date() if start else None, cfg.compact_files)
    full = {**schema(), "day": pl.Date}
    if found:
        lf = pl.scan_parquet(found, schema=schema(), hive_partitioning=True,
                             hive_schema={"day": pl.Date}, missing_columns="insert",
                             extra_columns="ignore")
    else:
        lf = pl.LazyFrame(schema=full)
    if start is not None:
        lf = lf.filter(pl.col("started_at") >= start)
    if failed:
        lf = lf.filter(pl.col("status") != "ok")
    if host:
        lf = lf.filter(_glob("host", host))
    if op:
        lf = lf.filter(_glob("op", op))
    return lf
