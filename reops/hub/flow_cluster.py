"""The flow runner's duties when several controllers share one PostgreSQL store.

Why apart: a runner alone on SQLite never needs them. With peers, the runner serves under
the cluster (leases, membership, takeover: reops.hub.cluster), and `flows stop|reload|ls`
of a flow another controller runs become asks through the store, answered by its runner;
these are here, the runner (reops.hub.flows) calls them when it has a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from reops.hub.cluster import ASK_POLL_S, Cluster, load_cluster_settings
from reops.store.engines import StoreSettings

if TYPE_CHECKING:
    from reops.hub.flows import FlowRunner

log = logging.getLogger("reops.hub.flows")


async def serve_cluster(runner: FlowRunner, shared: StoreSettings) -> None:
    """serve() on PostgreSQL: the cluster takes the wanted flows (one runner each)."""
    from reops.store.base import StoreError
    from reops.store.pg_flows import PgFlowStore

    while True:  # it answered at start (run_hub); a blip since must not stop the hub
        try:
            store = await asyncio.to_thread(PgFlowStore, shared.url,
                                            runner.settings.audit_keep,
                                            shared.connect_timeout)
            break
        except StoreError as e:
            log.warning("flows: %s; trying again in 5 s", e)
            await asyncio.sleep(5)
    runner.store = store
    runner.cluster = cluster = Cluster(runner, runner.hub, store, load_cluster_settings(),
                                       runner._load)
    writer = asyncio.create_task(runner._writer())
    beats = asyncio.create_task(cluster.serve())
    try:
        runner._ready.set()
        await beats
    except asyncio.CancelledError:
        await runner._drain()
        raise
    finally:
        beats.cancel()
        with contextlib.suppress(BaseException):
            await beats
        runner._closing = True
        runner._wake.set()
        await asyncio.shield(writer)
        await runner._flush()
        await cluster.leave()  # after the last rows: a peer takes the flows over now
        store.close()


async def mark_owners(cluster: Cluster, infos: list[dict[str, Any]]) -> None:
    """`flows ls` on several controllers: who runs each flow, as its lease says (not its
    record)."""
    owners = await cluster.owners()
    for info in infos:
        le = owners.get(info["name"])
        live = le is not None and le.wanted and le.remaining_s > 0 and le.owner
        info["controller"] = le.owner if live and le is not None else ""
        info["cluster"] = True
        if not live and info["state"] == "running":
            info["state"] = "starting"  # its controller is gone: a peer takes it


async def stop_elsewhere(runner: FlowRunner, name: str) -> dict[str, Any]:
    """`flows stop` of a flow this hub does not run: the store's desired state says
    stop; its runner (if any) stops it at its next renewal, which this waits for."""
    assert runner.cluster is not None
    store, cluster = runner.cluster.store, runner.cluster
    rec = await runner._stored(name)
    if rec is None:
        raise KeyError(f"no flow {name!r} (see `reops flows ls`)")
    with cluster.news(name) as news:  # before asking: its answer cannot slip by
        lease = await asyncio.to_thread(store.want, name, False)
        if lease is not None and lease.owner and lease.remaining_s > 0 and (
                lease.owner != cluster.name):
            cluster.ask(name, "stop")  # its runner acts on it at once
            deadline = time.monotonic() + cluster.settings.lease_s + cluster.settings.every
            while time.monotonic() < deadline:
                now = await asyncio.to_thread(store.get, name)
                if now is not None and now.state == "stopped":
                    return runner._info(now)
                await _woken(news, min(ASK_POLL_S, deadline - time.monotonic()))
            raise TimeoutError(f"flow {name!r}: {lease.owner} did not stop it within "
                               f"{cluster.settings.lease_s:g}s; it stops once its lease "
                               "ends")
    rec.state, rec.wanted = "stopped", False  # nobody runs it: say so here
    runner._audit(rec, "stopped", "reops flows stop")
    return runner._info(rec)


async def reload_elsewhere(runner: FlowRunner, name: str) -> dict[str, Any]:
    """`flows reload` of a flow another controller runs: ask it through the store, wait
    for its record to say (a reload here when nobody else holds its lease)."""
    cluster = runner.cluster
    assert cluster is not None
    store = cluster.store
    before = await runner._stored(name)
    with cluster.news(name) as news:  # before asking: its answer cannot slip by
        lease = await asyncio.to_thread(store.ask_reload, name)
        if before is None or lease is None or not lease.owner or lease.remaining_s <= 0 or (
                lease.owner == cluster.name):
            return await runner.reload(name)
        cluster.ask(name, "reload")  # its runner acts on it at once
        deadline = time.monotonic() + runner.settings.start_timeout_s + cluster.settings.every
        while time.monotonic() < deadline:
            now = await asyncio.to_thread(store.get, name)
            if now is not None and (now.reloads > before.reloads
                                    or now.error != before.error):
                return {"name": name, "reloaded": now.reloads > before.reloads,
                        "error": now.error, "version": now.version,
                        "previous": before.version, "controller": lease.owner,
                        "reloaded_what": now.reloaded}
            await _woken(news, min(ASK_POLL_S, deadline - time.monotonic()))
    raise TimeoutError(f"flow {name!r}: {lease.owner} did not answer the reload within "
                       f"{runner.settings.start_timeout_s:g}s")


async def _woken(news: asyncio.Event, timeout: float) -> None:
    """Wait for a peer's answer (`Cluster.news`), at most `timeout` (the fallback read)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(news.wait(), max(timeout, 0.0))
    news.clear()
