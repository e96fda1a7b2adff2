"""A realistic synthetic run history, in the FIXED schema of `reops.sinks.history`.

Used by tests/test_report.py and bench/bench_report.py (and to make docs/img/report.png):
`generate(n)` gives n Results (one row per step per host) from runs over `days` days on a
fleet of web/db/cache hosts — a few flaky hosts fail often, a few slow hosts take longer,
every fifth run is a metrics sample whose `data` is the JSON of a `reops.ops.metrics.Metrics`.
Everything is vectorised in polars (a row's "random" numbers are hashes of its index and the
seed), so 10^6 Results take about a second and the same seed gives the same frame.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

#: the history dataset's columns and types (the hive column `day` comes from the folder)
SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(), "source": pl.String(), "command": pl.String(),
    "pipeline": pl.String(), "flow": pl.String(), "user": pl.String(), "host": pl.String(),
    "op": pl.String(), "step": pl.Int32(), "status": pl.String(), "code": pl.Int32(),
    "started_at": pl.Datetime("us", "UTC"), "duration_s": pl.Float64(),
    "transport": pl.String(), "changed": pl.Boolean(), "out": pl.String(),
    "out_truncated": pl.Boolean(), "err": pl.String(), "err_truncated": pl.Boolean(),
    "data": pl.String(),
}

HOSTS_PER_RUN = 8
STEPS = 2
ROWS_PER_RUN = HOSTS_PER_RUN * STEPS

#: op name, typical seconds, command, error text when it fails
_OPS = [
    ("exec", 0.25, "reops exec all -- uptime", "sh: 1: uptime: Permission denied"),
    ("pkg", 14.0, "reops pkg install nginx", "E: Unable to locate package nginx"),
    ("service", 1.5, "reops service restart nginx", "Job for nginx.service failed"),
    ("facts", 0.8, "reops facts", "facts: /etc/os-release: No such file or directory"),
    ("sync", 3.0, "reops files sync site/ /srv/www", "rsync: write failed: No space left"),
    ("upload", 0.6, "reops files upload app.tar.gz /opt", "scp: /opt/app.tar.gz: Disk quota"),
]
_METRICS_OP = ("metrics", 1.1, "reops metrics cpu memory load", "metrics: /proc not mounted")
_FAILURE_ERR = {
    "unreachable": "connect: Connection refused (is sshd running?)",
    "timeout": "timed out after 30 s",
    "lost": "connection lost mid-command; it may have run",
    "error": "internal error: executor crashed",
}
_M = 1_000_003


def hosts(count: int = 24) -> list[str]:
    """Host names like the lab's: web1.., db1.., cache1.. (half web, a quarter each)."""
    web, db = count // 2, count // 4
    return ([f"web{i}" for i in range(1, web + 1)] + [f"db{i}" for i in range(1, db + 1)]
            + [f"cache{i}" for i in range(1, count - web - db + 1)])


def _uniform(idx: pl.Expr, seed: int, k: int) -> pl.Expr:
    """A deterministic uniform number in (0, 1) per row."""
    return ((idx.hash(seed=seed * 7919 + k) % _M).cast(pl.Float64) + 1.0) / (_M + 1.0)


def _normal(idx: pl.Expr, seed: int, k: int) -> pl.Expr:
    """A standard normal per row (Box-Muller over two uniforms)."""
    return ((-2.0 * _uniform(idx, seed, k).log()).sqrt()
            * (2.0 * math.pi * _uniform(idx, seed, k + 1)).cos())


def generate(n: int = 10_000, *, days: int = 7, host_count: int = 24, seed: int = 1,
             end: datetime | None = None) -> pl.DataFrame:
    """`n` Results of runs spread over the `days` before `end` (default: this hour, UTC)."""
    end = end or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    names = hosts(host_count)
    n_runs = max(1, -(-n // ROWS_PER_RUN))
    host_table = pl.DataFrame({
        "host_idx": list(range(len(names))), "host": names,
        # every 7th host is flaky, every 5th slow, cache hosts a bit busier
        "fail_p": [0.25 if i % 7 == 3 else 0.02 for i in range(len(names))],
        "slow": [2.5 if i % 5 == 2 else 1.0 for i in range(len(names))],
        "cpu_base": [20.0 + 3.0 * (i % 9) + (15.0 if h.startswith("cache") else 0.0)
                     for i, h in enumerate(names)],
    }, schema_overrides={"host_idx": pl.Int64})
    op_table = pl.DataFrame({
        "op_idx": list(range(len(_OPS) + 1)),
        "op": [o[0] for o in _OPS] + [_METRICS_OP[0]],
        "base_s": [o[1] for o in _OPS] + [_METRICS_OP[1]],
        "op_command": [o[2] for o in _OPS] + [_METRICS_OP[2]],
        "op_err": [o[3] for o in _OPS] + [_METRICS_OP[3]],
    }, schema_overrides={"op_idx": pl.Int64})
    span_us = (end - start) // timedelta(microseconds=1)
    i = pl.col("i")
    run = i // ROWS_PER_RUN
    within = i % ROWS_PER_RUN
    metrics_run = run % 5 == 0
    frame = (
        pl.LazyFrame({"i": pl.int_range(0, n, dtype=pl.Int64, eager=True)})
        .with_columns(
            run=run, step=(within // HOSTS_PER_RUN).cast(pl.Int32),
            host_idx=(run * 5 + within % HOSTS_PER_RUN) % len(names),
            op_idx=pl.when(metrics_run).then(pl.lit(len(_OPS), pl.Int64)).otherwise(
                ((run * STEPS + within // HOSTS_PER_RUN).hash(seed) % len(_OPS))
                .cast(pl.Int64)),
            u_fail=_uniform(run * 131 + within, seed, 1),
            u_kind=_uniform(i, seed, 2), u_changed=_uniform(i, seed, 3),
            z=_normal(i, seed, 4), z_cpu=_normal(i, seed, 6),
        )
        .join(host_table.lazy(), on="host_idx", how="left", maintain_order="left")
        .join(op_table.lazy(), on="op_idx", how="left", maintain_order="left")
        .with_columns(
            run_start=pl.lit(start) + pl.duration(
                microseconds=(run * span_us // n_runs)
                + (_uniform(run, seed, 8) * (span_us // n_runs) * 0.5).cast(pl.Int64)),
            status=pl.when(pl.col("u_fail") >= pl.col("fail_p")).then(pl.lit("ok"))
            .when(pl.col("u_kind") < 0.55).then(pl.lit("failed"))
            .when(pl.col("u_kind") < 0.75).then(pl.lit("unreachable"))
            .when(pl.col("u_kind") < 0.87).then(pl.lit("timeout"))
            .when(pl.col("u_kind") < 0.94).then(pl.lit("lost"))
            .otherwise(pl.lit("error")),
            ran_s=pl.col("base_s") * pl.col("slow") * (0.6 * pl.col("z")).exp(),
        )
        .with_columns(
            started_at=(pl.col("run_start") + pl.duration(
                milliseconds=pl.col("step") * 20_000 + (within % HOSTS_PER_RUN) * 7))
            .dt.cast_time_unit("us").dt.replace_time_zone("UTC"),
            duration_s=pl.when(pl.col("status") == "unreachable").then(0.05 + pl.col("z").abs())
            .when(pl.col("status") == "timeout").then(pl.lit(30.0))
            .otherwise(pl.col("ran_s")).round(4),
            code=pl.when(pl.col("status") == "ok").then(0)
            .when(pl.col("status") == "failed").then(pl.when(pl.col("op") == "pkg")
                                                      .then(100).otherwise(1))
            .otherwise(-1).cast(pl.Int32),
        )
        .with_columns(
            hour_angle=(pl.col("started_at").dt.hour().cast(pl.Float64)
                        * (2.0 * math.pi / 24.0)),
        )
        .with_columns(
            cpu=(pl.col("cpu_base") + 25.0 * pl.col("hour_angle").sin().clip(0.0, 1.0)
                 + 6.0 * pl.col("z_cpu")).clip(0.0, 100.0).round(2),
            mem=(35.0 + pl.col("host_idx") * 1.7 + 4.0 * pl.col("z")).clip(1.0, 99.0).round(2),
            load=(pl.col("cpu_base") / 25.0 + 0.8 * pl.col("z_cpu").abs()).round(2),
        )
        .select(
            run_id=pl.format("run-{}", pl.col("run").cast(pl.String).str.zfill(7)),
            source=pl.when(metrics_run).then(pl.lit("flow")).otherwise(
                pl.lit(pl.Series(["cli", "cli", "repl", "python"])).gather(run % 4)),
            command=pl.col("op_command"),
            pipeline=pl.format("{} | pretty()", pl.col("op")),
            flow=pl.when(metrics_run).then(pl.lit("watch_load")).otherwise(None),
            user=pl.lit("ops"), host=pl.col("host"), op=pl.col("op"), step=pl.col("step"),
            status=pl.col("status"), code=pl.col("code"), started_at=pl.col("started_at"),
            duration_s=pl.col("duration_s"),
            transport=pl.when(pl.col("op") == "metrics").then(pl.lit("agent"))
            .otherwise(pl.lit("ssh")),
            changed=pl.when(pl.col("op").is_in(["pkg", "service", "sync", "upload"])
                            & (pl.col("status") == "ok"))
            .then(pl.col("u_changed") < 0.3).otherwise(None),
            out=pl.when(pl.col("status") == "ok")
            .then(pl.format("{}: done in {}s", pl.col("host"), pl.col("duration_s")))
            .otherwise(pl.lit("")),
            out_truncated=pl.lit(False),
            err=pl.when(pl.col("status") == "ok").then(pl.lit(""))
            .when(pl.col("status") == "failed").then(pl.col("op_err"))
            .otherwise(pl.col("status").replace_strict(_FAILURE_ERR, default="")),
            err_truncated=pl.lit(False),
            data=pl.when((pl.col("op") == "metrics") & (pl.col("status") == "ok")).then(
                pl.concat_str(
                    pl.lit('{"at": '), pl.col("started_at").dt.epoch("s"),
                    pl.lit(', "cpu": {"busy_pct": '), pl.col("cpu"),
                    pl.lit('}, "memory": {"used_pct": '), pl.col("mem"),
                    pl.lit('}, "load": {"load1": '), pl.col("load"),
                    pl.lit(', "load5": '), pl.col("load"), pl.lit(', "load15": '),
                    pl.col("load"), pl.lit("}}")))
            .otherwise(None),
        )
    )
    return frame.collect().cast(SCHEMA)  # type: ignore[arg-type]


def write_history(frame: pl.DataFrame, root: Path) -> Path:
    """Write `frame` as the history dataset: root/day=YYYY-MM-DD/part-0.parquet."""
    root.mkdir(parents=True, exist_ok=True)
    days = frame.with_columns(day=pl.col("started_at").dt.date())
    for (day,), part in days.partition_by("day", as_dict=True).items():
        folder = root / f"day={day}"
        folder.mkdir(exist_ok=True)
        part.drop("day").write_parquet(folder / "part-0.parquet")
    return root


def scan_history(root: Path) -> pl.LazyFrame:
    """The dataset under `root` as a LazyFrame (hive column `day` included)."""
    return pl.scan_parquet(root / "day=*" / "*.parquet", hive_partitioning=True)
