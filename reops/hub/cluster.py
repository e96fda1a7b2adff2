"""Several hubs on one PostgreSQL store: one runner per flow, membership, shared events.

Only when `[store] url` names PostgreSQL; on SQLite (the embedded default) a hub is alone
and nothing here runs.

- Exactly one runner per flow: each running flow holds a lease in the store
  (`flow_leases`: owner, fencing epoch, lease_until on the server's clock). Every
  `renew_s` the holder renews its leases; a lease it could not renew (it ran out, another
  controller took it, or the flow was stopped elsewhere) stops the flow here (fencing),
  and so does losing the store for longer than a lease. Every `renew_s` each controller
  also takes the wanted flows whose lease ran out: a dead controller's flows run on a live
  one within `lease_s + renew_s`, and `flows ls` and the audit say whom they were taken
  over from. `flows start/stop/reload` on any controller write the desired state
  (`wanted`, a reload counter) to the store and post an `ask` (an internal event, topic
  `cluster`, never on the bus); the runner acts when it reads it (the NOTIFY wake-up),
  writes its record, then posts an `answer` the asking hub waits for. A runner that
  misses the ask still acts at its next renewal, and the asker also reads the store
  every ASK_POLL_S (the fallback).
- Membership: each hub beats (`Membership.beat`) with its load; `reops hub status` lists
  the peers, alive or dead by the store's clock, and which flows each runs.
- Keys: a key accepted or rejected on one controller (`reops keys accept/reject/delete`)
  is written to the store (`agent_keys`) before its `keys` event is shared; every other
  controller applies it to its own key store when the event arrives, and all of them at
  start: an agent (or a bus subscriber) accepted on ctl1 connects to ctl3 as well.
- Events: what a hub publishes (jobs, flows, keys …) is posted to the store's `events`
  table (NOTIFY with an empty payload wakes the others; polling each second is the
  fallback); each hub relays the other controllers' rows onto its own bus once, by seq
  (its own are skipped: no echo), marked `controller: <origin>`. A dropped LISTEN
  connection is re-made and the rows read again from the last seq seen, so nothing is
  missed and nothing is relayed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from reops.control.settings import HubSettings
from reops.core.settings import load_table
from reops.store.base import Controller as Member
from reops.store.base import StoreError, Wakeup
from reops.store.engines import StoreSettings, embedded_dir, is_postgres, load_store_settings
from reops.store.flows import FlowLease

if TYPE_CHECKING:
    from reops.hub.flows import FlowRunner
    from reops.hub.remote_calls import RemoteCalls
    from reops.store.pg_flows import PgFlowStore
    from reops.store.postgres import PgStore

log = logging.getLogger("reops.hub.cluster")

#: seconds a gap in the events' seqs (a transaction not yet committed) is waited for
GAP_S = 5.0
#: seconds between two reads of the events table when no NOTIFY comes (the fallback)
POLL_S = 1.0
#: seconds between two reads of the store by a hub waiting for a peer to stop or reload
#: a flow, when no answer comes (the fallback: the answer wakes it at once)
ASK_POLL_S = 1.0
#: the topic of the controllers' own events (asks and answers), never put on the bus
INTERNAL = "cluster"


async def run_all(loops: list[Coroutine[Any, Any, None]], remove: Callable[[], None]) -> None:
    """Run `loops` as tasks until one fails or this is cancelled; then `remove` the event
    listener they were fed by, cancel the others and wait for them: none outlives it."""
    tasks = [asyncio.create_task(c) for c in loops]
    try:
        await asyncio.gather(*tasks)
    finally:
        remove()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ClusterSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`[cluster]` in config.toml, or REOPS_CLUSTER_<NAME>."""

    lease_s: float = 15.0  # a flow's lease: how long a dead controller's flows wait
    renew_s: float = 0.0  # how often leases are renewed and free flows taken; 0: lease_s/3

    @property
    def every(self) -> float:
        return self.renew_s if self.renew_s > 0 else self.lease_s / 3


def load_cluster_settings() -> ClusterSettings:
    return load_table(ClusterSettings, "cluster", "REOPS_CLUSTER_")


def check_store(settings: StoreSettings | None = None) -> None:
    """At hub start: the store the hub will use answers (PostgreSQL: connect and migrate
    the flows' schema), or one line (StoreError) says why not."""
    s = settings or load_store_settings()
    if not is_postgres(s.url):
        embedded_dir()
        return
    from reops.store.pg_flows import PgFlowStore

    PgFlowStore(s.url, connect_timeout=s.connect_timeout).close()


class Hub(Protocol):
    """What the cluster needs from the hub's Controller."""

    @property
    def settings(self) -> HubSettings: ...
    remote: RemoteCalls | None  # calls to agents held by peers (reops.hub.remote_calls)

    def publish(self, topic: str, data: dict[str, Any]) -> None: ...
    def listen(self, fn: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]: ...


class Cluster:
    """This controller's part: leases of the flows it runs, its beat, the events relay."""

    def __init__(self, runner: FlowRunner, hub: Hub, store: PgFlowStore,
                 settings: ClusterSettings, load: Callable[[], dict[str, float]]) -> None:
        self.runner, self.hub, self.store, self.settings = runner, hub, store, settings
        self.name = hub.settings.controller_name  # [hub] name: the job queue's name too
        self.load = load
        self.held: dict[str, int] = {}  # flow -> epoch of the lease we hold
        self.reloads: dict[str, int] = {}  # flow -> reload requests already answered
        self.last_ok = time.monotonic()  # last renewal the store answered
        self.sent = self.relayed = 0
        self._out: list[tuple[str, str]] = []
        self._keys_out: list[str] = []  # keys decided here, shared before their events
        self._wake = asyncio.Event()
        self._relaying = False
        self._low = 0  # every event seq <= _low is handled
        self._seen: set[int] = set()  # handled seqs above _low (a gap below them)
        self._gap_since: float | None = None
        self._wakeup: Wakeup | None = None
        self._members: PgStore | None = None
        self._kick = asyncio.Event()
        self._asked = asyncio.Event()  # a peer asked to stop or reload a flow held here
        self._answers: dict[str, set[asyncio.Event]] = {}  # flow -> hubs' waits for news
        self._taking = asyncio.Lock()  # one start or takeover at a time: never two runners
        self._jobs: set[asyncio.Task[None]] = set()
        self._listener = ThreadPoolExecutor(1, thread_name_prefix="reops-cluster-listen")

    # ── lifetime ──

    async def serve(self) -> None:
        """Beat, renew, take free flows, post and relay events until cancelled."""
        from reops.store.postgres import PgStore

        while True:  # a store that went away since the hub started: wait for it
            try:
                self._members = await asyncio.to_thread(PgStore, self.store.url,
                                                        self.store._timeout)
                self._low = await asyncio.to_thread(self.store.last_event)
                break
            except StoreError as e:
                log.warning("cluster: %s; trying again in %gs", e, self.settings.every)
                await asyncio.sleep(self.settings.every)
        with contextlib.suppress(StoreError):
            await asyncio.to_thread(self._apply_keys, None)
        loops = [self._ticks(), self._takes(), self._poster(), self._relay()]
        fleet = getattr(self.hub, "fleet", None)
        if fleet is not None:  # calls from peers to the agents held here, and back
            from reops.hub.remote_calls import RemoteCalls

            remote = RemoteCalls(fleet, self.store.url, self.name, self.settings.lease_s,
                                 self.store._timeout,
                                 lambda: self.store.listen_calls(f"reops-calls {self.name}"))
            self.hub.remote = remote
            loops.append(remote.serve(self.hub.listen))
        await run_all(loops, self.hub.listen(self._outgoing))

    async def leave(self) -> None:
        """The hub stops (its flows drained): free their leases for a peer, say goodbye."""
        with contextlib.suppress(StoreError):
            await self._post()
            for name, epoch in list(self.held.items()):
                await asyncio.to_thread(self.store.release, name, self.name, epoch)
            if self._members is not None:
                await asyncio.to_thread(self._members.leave, self.name)
        self.held.clear()
        self._listener.shutdown(wait=False)
        for closing in (self._members, self._wakeup):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()

    @property
    def taking(self) -> asyncio.Lock:
        """Held while a flow is taken and launched here (a start, or a takeover)."""
        return self._taking

    def kick(self) -> None:
        """Look at the leases now (a flow was stopped or asked to reload here)."""
        self._kick.set()

    # ── leases ──

    async def _ticks(self) -> None:
        """Beat and renew every `renew_s` (never held up by a flow being imported); in
        between, act at once on a peer's ask to stop or reload a flow held here."""
        while True:
            try:
                await self._tick()
            except StoreError as e:
                log.warning("cluster: %s", e)
                if time.monotonic() - self.last_ok > self.settings.lease_s:
                    await self._fence_all("lost the store for longer than its lease")
            except Exception:  # a bug here must not stop the hub: said, tried again
                log.exception("cluster: renewing leases failed")
            due = time.monotonic() + self.settings.every
            while (left := due - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._asked.wait(), left)
                if self._asked.is_set():
                    self._asked.clear()
                    try:
                        await self._answer_asks()
                    except StoreError as e:  # the next renewal sees it all the same
                        log.warning("cluster: %s", e)
                    except Exception:
                        log.exception("cluster: acting on a peer's ask failed")

    async def _takes(self) -> None:
        """Every `renew_s` (or when kicked): take the wanted flows nobody holds."""
        while True:
            try:
                async with self._taking:
                    await self._take_free()
            except StoreError as e:
                log.warning("cluster: %s", e)
            except Exception:
                log.exception("cluster: taking over flows failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.settings.every)
            self._kick.clear()

    async def _tick(self) -> None:
        assert self._members is not None
        if self.held and time.monotonic() - self.last_ok > self.settings.lease_s:
            # stalled (stopped, swapped out) past a lease: a peer may run our flows by now
            await self._fence_all("its lease ran out while this controller stalled")
        await asyncio.to_thread(self._beat)
        epochs = dict(self.held)
        began = time.monotonic()
        kept = await asyncio.to_thread(self.store.renew_flows, self.name, epochs,
                                       self.settings.lease_s)
        self.last_ok = began
        lost = [n for n, e in epochs.items() if n not in kept and self.held.get(n) == e]
        if lost:
            leases = {le.name: le for le in await asyncio.to_thread(self.store.leases)}
            for name in lost:
                if self.held.get(name) == epochs[name]:
                    await self._lost(name, leases.get(name))
        for name, le in kept.items():
            if le.reload > self.reloads.get(name, le.reload):
                task = asyncio.create_task(self._reload(name))  # an import: not here
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
            self.reloads[name] = le.reload

    async def _answer_asks(self) -> None:
        """A peer asked (stop, reload): read the leases (a read, not a renewal) and act
        on those of the flows held here, as a renewal would."""
        leases = {le.name: le for le in await asyncio.to_thread(self.store.leases)}
        for name, epoch in list(self.held.items()):
            le = leases.get(name)
            if self.held.get(name) != epoch:
                continue
            if le is None or not le.wanted or le.owner != self.name or le.epoch != epoch:
                await self._lost(name, le)
            elif le.reload > self.reloads.get(name, le.reload):
                self.reloads[name] = le.reload
                task = asyncio.create_task(self._reload(name))  # an import: not here
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)

    async def _reload(self, name: str) -> None:
        try:
            await self.runner.reload(name)
        except Exception as e:
            log.warning("cluster: reload of flow %s asked through the store failed: %s",
                        name, e)
        await self._answer(name, "reloaded")

    async def _take_free(self) -> None:
        for le in await asyncio.to_thread(self.store.leases):
            # wanted, free (never held, ran out, released), or ours from before a restart
            if le.wanted and le.name not in self.held and le.name not in self.runner.flows and (
                    le.remaining_s <= 0 or le.owner == self.name):
                await self._take(le)

    def _beat(self) -> None:
        """Beat with this hub's load, kept beside what else beats under its name (the job
        queue's {"jobs": n}): one row per controller."""
        assert self._members is not None
        load = next((dict(m.load) for m in self._members.controllers()
                     if m.name == self.name and m.pid == os.getpid()), {})
        load.update(self.load())
        self._members.beat(Member(name=self.name, host=socket.gethostname(), pid=os.getpid(),
                                  load=load))

    async def _take(self, le: FlowLease) -> None:
        took = await asyncio.to_thread(self.store.take, le.name, self.name,
                                       self.settings.lease_s)
        if took is None:
            return
        lease, before = took
        rec = await asyncio.to_thread(self.store.get, le.name)
        if rec is None:  # a lease without its flow: nothing to run
            await asyncio.to_thread(self.store.want, le.name, False)
            return
        self.held[le.name] = lease.epoch
        self.reloads[le.name] = lease.reload
        rec.restarts += 1
        rec.controller, rec.taken_from = self.name, before
        if before:
            log.info("cluster: took flow %s over from %s", le.name, before)
            await self.runner._launch(rec, "taken-over", note=f"taken over from {before}")
        else:
            await self.runner._launch(rec, "restarted")

    async def _lost(self, name: str, le: FlowLease | None) -> None:
        self.held.pop(name, None)
        if le is None or not le.wanted:
            await self.runner.stop_here(name, "stopped", "reops flows stop (on a controller)",
                                        fenced=False)
            await self._answer(name, "stopped")
        else:
            why = (f"its lease was taken by {le.owner}" if le.owner != self.name
                   else "its lease ran out")
            await self.runner.stop_here(name, "fenced", f"{why}: stopped on {self.name}",
                                        fenced=True)

    async def _fence_all(self, why: str) -> None:
        for name in list(self.held):
            self.held.pop(name, None)
            await self.runner.stop_here(name, "fenced", f"{why}: stopped on {self.name}",
                                        fenced=True)

    async def start(self, name: str) -> tuple[FlowLease, str]:
        """`flows start` here: want the flow and take its lease, or say who runs it."""
        took = await asyncio.to_thread(self.store.take, name, self.name, self.settings.lease_s,
                                       True)
        if took is None:
            owner = next((le.owner for le in await asyncio.to_thread(self.store.leases)
                          if le.name == name), "another controller")
            raise ValueError(f"flow {name!r} is already running on {owner}; stop it first, "
                             "or start this one under another name (--as)")
        self.held[name] = took[0].epoch
        self.reloads[name] = took[0].reload
        return took

    async def dropped(self, name: str, wanted: bool) -> None:
        """A flow ends here (stopped, or never started): free its lease, set its state."""
        epoch = self.held.pop(name, None)
        if not wanted:
            await asyncio.to_thread(self.store.want, name, False)
        if epoch is not None:
            await asyncio.to_thread(self.store.release, name, self.name, epoch)

    async def owners(self) -> dict[str, FlowLease]:
        return {le.name: le for le in await asyncio.to_thread(self.store.leases)}

    # ── asks and answers between controllers ──

    def ask(self, name: str, what: str) -> None:
        """Tell the peers that flow `name`'s desired state changed (`stop`, `reload`): its
        runner acts now rather than at its next renewal."""
        self._share(INTERNAL, {"ask": what, "flow": name})

    async def _answer(self, name: str, what: str) -> None:
        """Once the flow's record says so in the store, tell the peers (a hub waiting in
        `news` reads it then)."""
        await self.runner.written()
        self._share(INTERNAL, {"answer": what, "flow": name})

    @contextlib.contextmanager
    def news(self, name: str) -> Iterator[asyncio.Event]:
        """An Event set whenever a peer answers about flow `name` (taken before asking:
        no answer slips between the ask and the wait)."""
        event = asyncio.Event()
        self._answers.setdefault(name, set()).add(event)
        try:
            yield event
        finally:
            waits = self._answers.get(name)
            if waits is not None:
                waits.discard(event)
                if not waits:
                    del self._answers[name]

    def _internal(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("flow"), str):
            return
        name = data["flow"]
        if "ask" in data and name in self.held:
            self._asked.set()
        elif "answer" in data:
            for event in self._answers.get(name, ()):
                event.set()

    def _share(self, topic: str, data: dict[str, Any]) -> None:
        self._out.append((topic, json.dumps(data, default=str)))
        self._wake.set()

    # ── events ──

    def _outgoing(self, topic: str, data: dict[str, Any]) -> None:
        """Every event this hub publishes (not the ones it relays) goes to the store."""
        if self._relaying:
            return
        if topic == "keys" and isinstance(data.get("agent"), str):
            self._keys_out.append(data["agent"])
        self._out.append((topic, json.dumps(data, default=str)))
        self._wake.set()

    async def _poster(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._post()

    async def _post(self) -> None:
        out, self._out = self._out, []
        names, self._keys_out = self._keys_out, []
        if not out:
            return
        try:
            if names:  # the keys' rows first: a peer reads them when the event comes
                await asyncio.to_thread(self._share_keys, names)
            await asyncio.shield(asyncio.to_thread(self.store.post_events, self.name, out))
            self.sent += len(out)
        except Exception as e:  # StoreError, or a bug: the hub goes on either way
            log.warning("cluster: %d event(s) not shared with the other controllers: %s",
                        len(out), e)

    def _share_keys(self, names: list[str]) -> None:
        keys = getattr(self.hub, "keys", None)
        if keys is None:
            return
        for name in dict.fromkeys(names):
            entry = keys.get(name)
            if entry is None:
                self.store.drop_key(name)
            elif entry.state in ("accepted", "rejected"):
                self.store.put_key(name, entry.key, entry.state)

    def _apply_keys(self, deleted: str | None) -> list[tuple[str, str]]:
        """Make this hub's key store agree with the shared keys; (name, what) changed."""
        keys = getattr(self.hub, "keys", None)
        if keys is None:
            return []
        changed = []
        shared = {n: (k, st) for n, k, st in self.store.shared_keys()}
        for name, (key, state) in shared.items():
            mine = keys.get(name)
            if state == "accepted" and (mine is None or mine.state != "accepted"
                                        or mine.key != key):
                keys.pre_accept(name, key)
                changed.append((name, "accepted"))
            elif state == "rejected" and mine is not None and mine.state != "rejected":
                with contextlib.suppress(KeyError):
                    keys.reject(name)
                    changed.append((name, "rejected"))
        if deleted and deleted not in shared and keys.get(deleted) is not None:
            with contextlib.suppress(KeyError):
                keys.delete(deleted)
                changed.append((deleted, "deleted"))
        return changed

    async def _keys_changed(self, data: dict[str, Any]) -> None:
        """A peer accepted, rejected or deleted a key: apply it here, tell the agent."""
        deleted = data.get("agent") if data.get("event") == "deleted" else None
        changed = await asyncio.to_thread(self._apply_keys, deleted)
        fleet = getattr(self.hub, "fleet", None)
        for name, what in changed:
            log.info("cluster: key %s %s on %s: %s here too", name, what,
                     data.get("controller", "a peer"), what)
            if fleet is not None:
                if what == "accepted":
                    fleet.nudge(name)
                else:
                    fleet.drop(name, f"key {what} on {data.get('controller', 'a peer')}")

    async def _relay(self) -> None:
        """Wait for NOTIFY (or POLL_S), then relay the peers' new events."""
        while True:
            try:
                if self._wakeup is None:
                    self._wakeup = await asyncio.to_thread(
                        self.store.listen_events, f"reops-events {self.name}")
                # on a thread of its own: it blocks up to POLL_S, and must neither wait
                # behind nor hold up the shared pool the renewals use
                await asyncio.get_running_loop().run_in_executor(
                    self._listener, self._wakeup.wait, POLL_S)
                await self._read()
            except StoreError as e:
                log.warning("cluster: events: %s", e)
                await asyncio.sleep(POLL_S)  # the store is down: try again (the fallback)
            except Exception:
                log.exception("cluster: relaying events failed")
                await asyncio.sleep(POLL_S)

    @property
    def listen_reconnects(self) -> int:
        return int(getattr(self._wakeup, "reconnects", 0))

    async def _read(self) -> None:
        while True:
            rows = await asyncio.to_thread(self.store.events_after, self._low, "", 1000)
            for seq, origin, topic, data in rows:
                if seq in self._seen or seq <= self._low:
                    continue
                self._seen.add(seq)
                if origin != self.name and topic == INTERNAL:
                    with contextlib.suppress(ValueError):
                        self._internal(json.loads(data))
                elif origin != self.name:
                    value = self._publish(origin, topic, data)
                    if topic == "keys" and isinstance(value, dict):
                        await self._keys_changed(value)
            self._advance()
            if len(rows) < 1000:
                return

    def _advance(self) -> None:
        while self._low + 1 in self._seen:
            self._low += 1
            self._seen.discard(self._low)
        if not self._seen:
            self._gap_since = None
            return
        now = time.monotonic()
        if self._gap_since is None:
            self._gap_since = now
        elif now - self._gap_since > GAP_S:  # a rolled-back insert's seq: never coming
            self._low = min(self._seen) - 1
            self._gap_since = None
            self._advance()

    def _publish(self, origin: str, topic: str, data: str) -> Any:
        try:
            value = json.loads(data)
        except ValueError:
            return None
        if isinstance(value, dict):
            value.setdefault("controller", origin)
        self._relaying = True
        try:
            self.hub.publish(topic, value)
            self.relayed += 1
        finally:
            self._relaying = False
        return value

    # ── status ──

    async def status(self) -> dict[str, Any]:
        """This controller, its peers (alive by the store's clock) and who runs what."""
        if self._members is None:
            return {"engine": "postgresql", "name": self.name, "controllers": [],
                    "error": f"{self.name}: waiting for the store {self.store.where}"}
        members = await asyncio.to_thread(self._members.controllers)
        leases = await asyncio.to_thread(self.store.leases)
        runs: dict[str, list[str]] = {}
        for le in leases:
            if le.wanted and le.remaining_s > 0 and le.owner:
                runs.setdefault(le.owner, []).append(le.name)
        dead_after = self.settings.lease_s
        return {
            "engine": "postgresql", "store": self.store.where, "name": self.name,
            "lease_s": self.settings.lease_s, "renew_s": self.settings.every,
            "controllers": [{"name": m.name, "host": m.host, "pid": m.pid, "since": m.since,
                             "age_s": m.age_s, "alive": m.age_s < dead_after,
                             "load": m.load, "me": m.name == self.name,
                             "flows": sorted(runs.get(m.name, []))} for m in members],
            "orphans": sorted(le.name for le in leases if le.wanted and le.remaining_s <= 0),
            "events": {"sent": self.sent, "relayed": self.relayed,
                       "listen_reconnects": self.listen_reconnects},
        }
