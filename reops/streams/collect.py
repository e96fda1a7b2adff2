"""Live metrics: `collect(hosts, ["cpu", "memory"], every=10)` samples every host forever.

Each host has its own chain of `loop.call_at` timers on the runtime loop (fixed rate, no
drift, no threads, no sleep-polling); each sample is a Result (`data` a Metrics) that flows
the moment that host answers, so a slow host never holds back the others. A host whose
previous sample is still running skips a tick rather than piling up work. Disposing the
subscription stops the timers and cancels samples in flight.

It is an Observable, not a Stream: it never completes, and a Stream would replay every
sample to late subscribers. Window it with `windows(obs, 60)` (buffer_with_time on the
runtime loop) and tabulate with `to_metrics_table(results)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import Disposable
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler

from reops.core.model import Host, Hosts, Result, failure_result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.ops import metrics as _metrics
from reops.streams.source import Via, as_hosts, chooser, defaults
from reops.transports.base import Executor

if TYPE_CHECKING:
    import polars as pl

#: seconds between samples when not given
EVERY_S = 10.0
#: the on-host pause between the two counter readings (cpu %, net rates), at most
RATE_INTERVAL_S = 1.0


def collect(hosts: Hosts | Host | Iterable[Host], kinds: Sequence[str] = _metrics.KINDS,
            every: float = EVERY_S, *, interval: float | None = None, sudo: bool = False,
            via: Via | None = None, settings: Settings | None = None) -> Observable[Result]:
    """Sample `kinds` on every host every `every` seconds, each sample as it arrives.

        sub = collect(hosts, ["cpu", "memory"], every=5).subscribe(print)
        ...
        sub.dispose()  # stops sampling
    """
    if every <= 0:
        raise ValueError("every must be > 0 seconds")
    rate = min(RATE_INTERVAL_S, every / 2) if interval is None else interval
    if not 0 <= rate < every:
        raise ValueError("interval must be >= 0 and shorter than every")
    op = _metrics.metrics(*kinds, interval=rate, sudo=sudo)
    hs = as_hosts(hosts)
    d = defaults()
    use_settings = settings or d.settings
    pick: Callable[[Host], Executor] = chooser(via or d.via, False)

    def subscribe(observer: abc.ObserverBase[Result],
                  scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        rt = get_runtime()
        timers: dict[str, asyncio.TimerHandle] = {}
        running: dict[str, asyncio.Task[None]] = {}
        stopped = False

        async def sample(host: Host) -> None:
            started = time.time()
            try:
                result = await pick(host).run(host, op, use_settings)
            except asyncio.CancelledError:
                return
            except Exception as e:  # an executor bug must not end the stream
                result = failure_result(host.name, op.name, f"internal error: {e!r}",
                                        status="error", started_at=started)
            finally:
                running.pop(host.name, None)
            if not stopped:
                observer.on_next(result)

        def tick(host: Host, first: float, n: int) -> None:
            if stopped:
                return
            if host.name not in running:
                running[host.name] = rt.spawn(sample(host))
            timers[host.name] = rt.loop.call_at(first + (n + 1) * every, tick, host, first,
                                                n + 1)

        def start() -> None:
            if stopped:
                return
            first = rt.loop.time()
            for host in hs:
                tick(host, first, 0)

        def stop() -> None:
            for handle in timers.values():
                handle.cancel()
            for task in list(running.values()):
                task.cancel()

        def dispose() -> None:
            nonlocal stopped
            stopped = True
            rt.call_soon(stop)

        rt.call_soon(start)
        return Disposable(dispose)

    return reactivex.create(subscribe)


def windows(samples: Observable[Result], seconds: float) -> Observable[list[Result]]:
    """Group a sample stream into lists, one per `seconds` (timed on the runtime loop)."""
    scheduler = AsyncIOThreadSafeScheduler(get_runtime().loop)
    return samples.pipe(ops.buffer_with_time(seconds, scheduler=scheduler))


def to_metrics_table(results: Iterable[Result]) -> pl.DataFrame:
    """One row per host-sample (`Metrics.row()` columns); failed samples are left out."""
    import polars as pl

    rows: list[dict[str, Any]] = [
        {"host": r.host, **r.data.row()} for r in results
        if r.ok and isinstance(r.data, _metrics.Metrics)
    ]
    if not rows:
        return pl.DataFrame(schema={"host": pl.String, "at": pl.Datetime("us", "UTC")})
    df = pl.from_dicts(rows, infer_schema_length=None)
    return df.with_columns(
        (pl.col("at") * 1_000_000).cast(pl.Int64).cast(pl.Datetime("us", "UTC")).alias("at"))
