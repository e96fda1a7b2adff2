"""Results as a polars table, and parquet files that grow run after run."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from reops.model import Outcome, Result

if TYPE_CHECKING:
    import polars as pl

COLUMNS = ("run_at", "host", "op", "status", "code", "out", "err", "started_at",
           "duration_s", "transport", "changed", "data")


def _encode_data(data: Any) -> str | None:
    return None if data is None else msgspec.json.encode(data).decode()


def to_table(results: Outcome | Iterable[Result], *, run_at: datetime | None = None
             ) -> pl.DataFrame:
    """One row per host-step; `data` is kept as JSON text so any shape fits one column."""
    import polars as pl

    rows = results.results if isinstance(results, Outcome) else results
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    stamp = run_at or datetime.now(UTC)
    for r in rows:
        cols["run_at"].append(stamp)
        cols["host"].append(r.host)
        cols["op"].append(r.op)
        cols["status"].append(r.status)
        cols["code"].append(r.code)
        cols["out"].append(r.out)
        cols["err"].append(r.err)
        cols["started_at"].append(datetime.fromtimestamp(r.started_at, UTC))
        cols["duration_s"].append(r.duration_s)
        cols["transport"].append(r.transport)
        cols["changed"].append(r.changed)
        cols["data"].append(_encode_data(r.data))
    schema: dict[str, Any] = {
        "run_at": pl.Datetime("us", "UTC"), "host": pl.String, "op": pl.String,
        "status": pl.String, "code": pl.Int64, "out": pl.String, "err": pl.String,
        "started_at": pl.Datetime("us", "UTC"), "duration_s": pl.Float64,
        "transport": pl.String, "changed": pl.Boolean, "data": pl.String,
    }
    return pl.DataFrame(cols, schema=schema)


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
