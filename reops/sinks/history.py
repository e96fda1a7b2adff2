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
import itertools
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from reops.core import hooks
from reops.core.durations import seconds
from reops.core.model import Outcome, Result, RunInfo
from reops.core.settings import ConfigError, config_path, home, load_table
from reops.sinks import history_files as hf
from reops.sinks.history_files import (
    SPOOL,
    compact_tiers,
    day_of,
    files,
    frame,
    prune,
    schema,
    write_file,
    write_spool,
)

if TYPE_CHECKING:
    import polars as pl

Source = Literal["cli", "flow", "repl", "python"]
SOURCES: tuple[str, ...] = ("cli", "flow", "repl", "python")

#: how long process exit waits for queued history to be written
EXIT_WAIT_S = 10.0
#: endless streams' rows waiting to be written, at most (beyond: left out, and counted)
MAX_PENDING_ENDLESS = 5_000


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


def _columns(run: _Run, steps: list[tuple[Result, int]]) -> dict[str, dict[str, list[Any]]]:
    """The rows of `steps` as plain columns (started_at: int microseconds), one set per UTC
    day (by each step's start): what a spool holds and a DataFrame is built from."""
    info, cfg = run.info, run.cfg
    by_day: dict[str, list[tuple[Result, int]]] = {}
    for s, i in steps:
        by_day.setdefault(day_of(s.started_at or info.started_at), []).append((s, i))
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


def compact(root: Path | None = None, *, before: date | None = None) -> int:
    """Merge each closed day's files into one (`history_files.compact`; root: [history])."""
    return hf.compact(root or settings().root, before=before)


def compact_open(root: Path | None = None, *, day: date | None = None,
                 small_files: int | None = None) -> int:
    """The tiered pass over one open day (`history_files.compact_open`; defaults: [history])."""
    cfg = settings() if root is None or small_files is None else None
    return hf.compact_open(root or cfg.root,  # type: ignore[union-attr]
                           small_files if small_files is not None
                           else cfg.compact_files,  # type: ignore[union-attr]
                           day=day)


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
                        write_file(frame(cols), root / f"day={day}" / f"{name}.parquet")
                        written.append(root / f"day={day}")  # (spools: queries compact)
                    else:
                        write_spool(cols, root / f"day={day}" / f"{name}{SPOOL}")
            today = datetime.now(UTC).date()
            if (root, today) not in self._pruned:  # once a day per process: cheap
                self._pruned.add((root, today))
                prune(root, run.cfg.keep_s, today)
                compact(root, before=today)
        except Exception as e:
            self._warn(root, f"{type(e).__name__}: {e}")
        finally:
            if not batch.immediate:
                with self._lock:
                    self._pending_endless -= len(batch.steps)
        for where in written:  # the day's files stay few, even today's
            try:
                compact_tiers(where, run.cfg.compact_files)
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
