"""Live metrics: `collect(hosts, ["cpu", "memory"], every=10)` samples every host forever.

Each host has its own chain of timers (fixed rate, no drift, no threads, no sleep-polling):
`loop.call_at` on the runtime loop by default, or any reactivex `scheduler=` (a test's
`TestScheduler` drives it in virtual time). Each sample is a Result (`data` a Metrics) that
flows the moment that host answers, so a slow host never holds back the others. A host whose
previous sample is still running at a tick skips that tick rather than piling up work (the
next tick stays on the grid: with every=5, a 7 s sample started at 0 is followed by one at
10). Disposing the subscription stops the timers and cancels samples in flight.

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

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import Disposable
from reactivex.scheduler.eventloop import AsyncIOThreadSafeScheduler

from reops.core.model import Event, Host, Hosts, Result, failure_result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings
from reops.ops import metrics as _metrics
from reops.ops.base import Op
from reops.streams.source import Resolved, Via, as_hosts, resolve
from reops.streams.stream import Stream, from_async

if TYPE_CHECKING:
    import polars as pl

#: seconds between samples when not given
EVERY_S = 10.0
#: the on-host pause between the two counter readings (cpu %, net rates), at most
RATE_INTERVAL_S = 1.0

#: one sample of one host: emits that host's Result and completes; disposing cancels it
Sampler = Callable[[Host], Observable[Event]]
#: `at(when, action)`: run `action` at absolute time `when` (seconds); dispose to cancel
_At = Callable[[float, Callable[[], None]], abc.DisposableBase]


def collect(hosts: Hosts | Host | Iterable[Host], kinds: Sequence[str] = _metrics.KINDS,
            every: float = EVERY_S, *, interval: float | None = None, sudo: bool = False,
            via: Via | None = None, settings: Settings | None = None,
            scheduler: abc.SchedulerBase | None = None,
            sampler: Sampler | None = None) -> Stream:
    """Sample `kinds` on every host every `every` seconds, each sample as it arrives.

        sub = collect(hosts, ["cpu", "memory"], every=5).subscribe(print)
        ...
        sub.dispose()  # stops sampling

    The ticks are timed on `scheduler` (default: the runtime loop; with a scheduler they
    run on its thread). `sampler` replaces the metrics command over `via` (default) with
    any per-host Observable, e.g. a virtual host in a test.
    """
    if every <= 0:
        raise ValueError("every must be > 0 seconds")
    rate = min(RATE_INTERVAL_S, every / 2) if interval is None else interval
    if not 0 <= rate < every:
        raise ValueError("interval must be >= 0 and shorter than every")
    hs = as_hosts(hosts)
    # sampling only reads: under --check it samples too (a check would replace the data)
    r = resolve(via=via, settings=settings, dry_run=False, check=False)
    op = r.op(_metrics.metrics(*kinds, interval=rate, sudo=sudo))
    sample = sampler if sampler is not None else _remote_sampler(r, op)

    if scheduler is None:
        async def pump(emit: Callable[[Event], None]) -> None:
            loop = get_runtime().loop

            def at(when: float, action: Callable[[], None]) -> abc.DisposableBase:
                return Disposable(loop.call_at(when, action).cancel)

            stop = _sampling(hs, every, loop.time(), at, sample, emit, op.name)
            try:
                await asyncio.Future()  # until disposed
            finally:
                stop()

        source: Observable[Event] = from_async(pump)
    else:
        clock = scheduler

        def subscribe(observer: abc.ObserverBase[Event],
                      _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            def at(when: float, action: Callable[[], None]) -> abc.DisposableBase:
                def invoke(_s: abc.SchedulerBase, __: Any = None) -> None:
                    action()

                return clock.schedule_absolute(when, invoke)

            first = clock.to_seconds(clock.now)
            return Disposable(_sampling(hs, every, first, at, sample, observer.on_next,
                                        op.name))

        source = reactivex.create(subscribe)

    def rebuild(subset: Hosts) -> Stream:
        return collect(subset, kinds, every, interval=interval, sudo=sudo, via=r.via,
                       settings=r.settings, scheduler=scheduler, sampler=sampler)

    return Stream(source, hs, rebuild, replay=False)


def _remote_sampler(r: Resolved, op: Op) -> Sampler:
    """The real sample: `op` on the host through its executor, on the runtime loop."""
    pick = r.executors()

    def sample(host: Host) -> Observable[Event]:
        async def one(emit: Callable[[Event], None]) -> None:
            started = time.time()
            try:
                result = await pick(host).run(host, op, r.settings)
            except asyncio.CancelledError:  # disposed: nothing to emit, the host is free
                return
            except Exception as e:  # an executor bug must not end the stream
                result = failure_result(host.name, op.name, f"internal error: {e!r}",
                                        status="error", started_at=started)
            emit(result)

        return from_async(one)

    return sample


def _sampling(hosts: Hosts, every: float, first: float, at: _At, sample: Sampler,
              emit: Callable[[Event], None], op_name: str) -> Callable[[], None]:
    """Tick every host at `first`, `first + every`, ...; returns `stop`.

    At each tick a host starts a sample unless its previous one is still running (then the
    tick is skipped). The next tick is set on the fixed grid, so a late tick never drifts.
    """
    timers: dict[str, abc.DisposableBase] = {}
    running: dict[str, abc.DisposableBase] = {}
    stopped = [False]

    def start(host: Host) -> None:
        name = host.name
        ended = [False]

        def end() -> None:
            ended[0] = True
            running.pop(name, None)

        def on_error(e: Exception) -> None:  # a sampler bug must not end the stream
            end()
            emit(failure_result(name, op_name, f"internal error: {e!r}", status="error"))

        sub = sample(host).subscribe(emit, on_error, end)
        if not ended[0] and not stopped[0]:
            running[name] = sub

    def tick(host: Host, n: int) -> None:
        if stopped[0]:
            return
        if host.name not in running:
            start(host)
        timers[host.name] = at(first + (n + 1) * every, lambda: tick(host, n + 1))

    def stop() -> None:
        stopped[0] = True
        for handle in list(timers.values()):
            handle.dispose()
        for sub in list(running.values()):
            sub.dispose()
        timers.clear()
        running.clear()

    for host in hosts:
        tick(host, 0)
    return stop


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
