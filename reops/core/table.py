"""Results as rows of a polars table: the one row-builder behind `Outcome.table()` and
`sinks.table.to_table` (core may not import sinks, so the rows live here; polars loads
only when a table is asked for, keeping `import reops` fast)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from reops.core.model import Outcome, Result

if TYPE_CHECKING:
    import polars as pl

#: the saved table's schema, flat and stable (docs/check.md, "The run table"): the run's
#: identity on every row, then one row per host-step with its `step` index
RUN_COLUMNS = ("run_id", "run_at", "run_ended_at", "command", "pipeline", "selector", "user",
               "check")
COLUMNS = (*RUN_COLUMNS, "host", "step", "op", "status", "code", "out", "err", "started_at",
           "duration_s", "transport", "changed", "data")


_encoder = msgspec.json.Encoder()


def _utc(seconds: pl.Expr) -> pl.Expr:
    import polars as pl

    return (seconds * 1_000_000).cast(pl.Int64).cast(pl.Datetime("us", "UTC"))


def to_table(results: Outcome | Iterable[Result], *, run_at: datetime | None = None
             ) -> pl.DataFrame:
    """One row per host-step (every step, with its `step` index), each with the run's
    identity; `data` is kept as JSON text so any shape fits one column.

    From an Outcome: its `run` (id, command, selector, user, start/end). From bare Results:
    the run columns are empty but for `run_at` (now, or `run_at`)."""
    import polars as pl

    if isinstance(results, Outcome):
        rows = [(r, i) for h in results.hosts for i, r in enumerate(results.steps(h))]
        info = results.run
    else:
        rows = [(s, i) for r in results for i, s in enumerate(r.steps)]
        info = None
    encode = _encoder.encode
    n = len(rows)
    start = datetime.fromtimestamp(info.started_at, UTC) if info else run_at or datetime.now(UTC)
    cols: dict[str, pl.Series] = {
        "run_id": pl.Series([info.run_id if info else None] * n, dtype=pl.String),
        "run_at": pl.Series([run_at or start] * n, dtype=pl.Datetime("us", "UTC")),
        "run_ended_at": pl.Series([info.ended_at if info and info.ended_at else None] * n,
                                  dtype=pl.Float64),
        "command": pl.Series([info.command if info else None] * n, dtype=pl.String),
        "pipeline": pl.Series([info.pipeline if info else None] * n, dtype=pl.String),
        "selector": pl.Series([info.selector if info else None] * n, dtype=pl.String),
        "user": pl.Series([info.user if info else None] * n, dtype=pl.String),
        "check": pl.Series([info.check if info else None] * n, dtype=pl.Boolean),
        "host": pl.Series([r.host for r, _ in rows], dtype=pl.String),
        "step": pl.Series([i for _, i in rows], dtype=pl.Int64),
        "op": pl.Series([r.op for r, _ in rows], dtype=pl.String),
        "status": pl.Series([r.status for r, _ in rows], dtype=pl.String),
        "code": pl.Series([r.code for r, _ in rows], dtype=pl.Int64),
        "out": pl.Series([r.out for r, _ in rows], dtype=pl.String),
        "err": pl.Series([r.err for r, _ in rows], dtype=pl.String),
        "started_at": pl.Series([r.started_at for r, _ in rows], dtype=pl.Float64),
        "duration_s": pl.Series([r.duration_s for r, _ in rows], dtype=pl.Float64),
        "transport": pl.Series([r.transport for r, _ in rows], dtype=pl.String),
        "changed": pl.Series([r.changed for r, _ in rows], dtype=pl.Boolean),
        "data": pl.Series([None if r.data is None else encode(r.data).decode()
                           for r, _ in rows], dtype=pl.String),
    }
    return pl.DataFrame(cols).with_columns(
        _utc(pl.col("run_ended_at")), _utc(pl.col("started_at"))).select(COLUMNS)
