"""Results as a polars table, and parquet files that grow run after run."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from reops.core.model import Outcome, Result
from reops.core.table import COLUMNS, RUN_COLUMNS, to_table

if TYPE_CHECKING:
    import polars as pl

__all__ = ["COLUMNS", "RUN_COLUMNS", "save", "to_table"]


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
