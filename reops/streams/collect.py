"""Live metrics: `collect(hosts, ["cpu", "memory"], every=10)` samples every host forever.

Each host has its own chain of `loop.call_at` timers on the runtime loop (fixed rate, no
drift, no threads, no sleep-polling); each sample is a Result (`data` a Metrics) that flows
the moment that host answers, so a slow host never holds back the others. A host whose
previous sample is still running skips a tick rather than piling up work. Disposing the
subscription stops the timers and cancels samples in flight.

It is an endless Stream (`replay=False`): it never completes and keeps no sample for late
subscribers, so it runs for days in flat memory; pipe it like any Stream
(`collect(...) | where(...) | then(...)`). Several subscribers share one sampling. Window it
with `windows(stream, 60)` (buffer_with_time on the runtime loop) and tabulate with
`to_metrics_table(results)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from reactivex import Observable
from reactivex import operators as ops
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler

from reops.core.model import Event, Host, Hosts, Result, failure_result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.ops import metrics as _metrics
from reops.streams.source import Via, as_hosts, resolve
from reops.streams.stream import Stream, from_async
from reops.transports.base import Executor

if TYPE_CHECKING:
    import polars as pl

#: seconds between samples when not given
EVERY_S = 10.0
#: the on-host pause between the two counter readings (cpu %, net rates), at most
RATE_INTERVAL_S = 1.0


def collect(hosts: Hosts | Host | Iterable[Host], kinds: Sequence[str] = _metrics.KINDS,
            every: float = EVERY_S, *, interval: float | None = None, sudo: bool = False,
            via: Via | None = None, settings: Settings | None = None) -> Stream:
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
    hs = as_hosts(hosts)
    r = resolve(via=via, settings=settings, dry_run=False)
    op = r.op(_metrics.metrics(*kinds, interval=rate, sudo=sudo))
    pick: Callable[[Host], Executor] = r.executors()

    async def pump(emit: Callable[[Event], None]) -> None:
        rt = get_runtime()
        timers: dict[str, asyncio.TimerHandle] = {}
        running: dict[str, asyncio.Task[None]] = {}

        async def sample(host: Host) -> None:
            started = time.time()
            try:
                result = await pick(host).run(host, op, r.settings)
            except asyncio.CancelledError:
                return
            except Exception as e:  # an executor bug must not end the stream
                result = failure_result(host.name, op.name, f"internal error: {e!r}",
                                        status="error", started_at=started)
            finally:
                running.pop(host.name, None)
            emit(result)

        def tick(host: Host, first: float, n: int) -> None:
            if host.name not in running:
                running[host.name] = rt.spawn(sample(host))
            timers[host.name] = rt.loop.call_at(first + (n + 1) * every, tick, host, first,
                                                n + 1)

        first = rt.loop.time()
        for host in hs:
            tick(host, first, 0)
        try:
            await asyncio.Future()  # until disposed
        finally:
            for handle in timers.values():
                handle.cancel()
            for task in list(running.values()):
                task.cancel()

    def rebuild(subset: Hosts) -> Stream:
        return collect(subset, kinds, every, interval=interval, sudo=sudo, via=r.via,
                       settings=r.settings)

    return Stream(from_async(pump), hs, rebuild, replay=False)


def windows(samples: Stream | Observable[Event], seconds: float) -> Observable[list[Event]]:
    """Group a sample stream into lists, one per `seconds` (timed on the runtime loop)."""
    scheduler = AsyncIOThreadSafeScheduler(get_runtime().loop)
    obs = samples.observable if isinstance(samples, Stream) else samples
    return obs.pipe(ops.buffer_with_time(seconds, scheduler=scheduler))


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
