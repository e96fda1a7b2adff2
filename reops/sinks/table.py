"""Results as a polars table, and parquet files that grow run after run."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from reops.core.model import Outcome, Result

if TYPE_CHECKING:
    import polars as pl

COLUMNS = ("run_at", "host", "op", "status", "code", "out", "err", "started_at",
           "duration_s", "transport", "changed", "data")


_encoder = msgspec.json.Encoder()


def to_table(results: Outcome | Iterable[Result], *, run_at: datetime | None = None
             ) -> pl.DataFrame:
    """One row per host-step; `data` is kept as JSON text so any shape fits one column."""
    import polars as pl

    rows = results.results if isinstance(results, Outcome) else list(results)
    encode = _encoder.encode
    cols: dict[str, pl.Series] = {
        "host": pl.Series([r.host for r in rows], dtype=pl.String),
        "op": pl.Series([r.op for r in rows], dtype=pl.String),
        "status": pl.Series([r.status for r in rows], dtype=pl.String),
        "code": pl.Series([r.code for r in rows], dtype=pl.Int64),
        "out": pl.Series([r.out for r in rows], dtype=pl.String),
        "err": pl.Series([r.err for r in rows], dtype=pl.String),
        "started_at": pl.Series([r.started_at for r in rows], dtype=pl.Float64),
        "duration_s": pl.Series([r.duration_s for r in rows], dtype=pl.Float64),
        "transport": pl.Series([r.transport for r in rows], dtype=pl.String),
        "changed": pl.Series([r.changed for r in rows], dtype=pl.Boolean),
        "data": pl.Series([None if r.data is None else encode(r.data).decode() for r in rows],
                          dtype=pl.String),
    }
    stamp = run_at or datetime.now(UTC)
    return pl.DataFrame(cols).select(
        pl.lit(stamp, dtype=pl.Datetime("us", "UTC")).alias("run_at"),
        *(pl.col(c) for c in COLUMNS[1:7]),
        (pl.col("started_at") * 1_000_000).cast(pl.Int64).cast(pl.Datetime("us", "UTC")),
        *(pl.col(c) for c in COLUMNS[8:]),
    )


def save(table: pl.DataFrame | Outcome | Iterable[Result], path: str | Path) -> Path:
    """Append rows to a parquet file (created if missing); the write is atomic."""
    import polars as pl

    df = table if isinstance(table, pl.DataFrame) else to_table(table)
    p = Path(path).expanduser()
    if p.exists():
        try:
            old = pl.read_parquet(p)
        except Exception as e:
            raise ValueError(f"{p}: not a parquet file reops can append to ({e})") from None
        df = pl.concat([old, df], how="diagonal_relaxed")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    df.write_parquet(tmp)
    tmp.replace(p)
    return p
