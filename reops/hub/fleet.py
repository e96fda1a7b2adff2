"""The agents' side of the hub: a CurveZMQ ROUTER, registration, heartbeats, calls, ticks.

Nothing an agent sends can stop the hub: every frame is size-checked and decoded inside a
guard, bad frames are logged and counted, and only registered connections are served.
Sends never block the loop (NOBLOCK; a full or vanished peer fails that call at once).

With 10,000 agents the ROUTER carries tens of thousands of messages a second (beats,
registrations, a fan-out's answers), so it is driven as a plain socket from the loop's
reader callback: each wake-up drains what is queued (NOBLOCK reads, bounded per turn), and
sends are plain NOBLOCK sends, not a Future per message. ZMQ_FD is edge-triggered and a
send may consume the edge, so every send schedules one more drain on the next loop turn;
a drain ends only when ZMQ_EVENTS says nothing is readable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from reops_agent.protocol import (
    MAX_SEND,
    Beat,
    Call,
    Cancel,
    CodeRef,
    Done,
    Hello,
    Missing,
    Msg,
    Output,
    Pending,
    ProtocolError,
    Refused,
    Schedule,
    Tick,
    Unknown,
    Unschedule,
    Welcome,
    decode_agent,
    encode,
    fingerprint,
)
from zmq.utils.monitor import parse_monitor_message

from reops.control.settings import HubSettings
from reops.hub.bus import ROLE as BUS_ROLE
from reops.hub.calls import CallTable, InFlight, OnDone, OnLine, failure
from reops.hub.keystore import KeyStore
from reops.hub.limits import RationedLog, TokenBucket
from reops.hub.registry import AgentRecord, Registry

log = logging.getLogger("reops.hub")

Publish = Callable[[str, dict[str, Any]], None]
OnTick = Callable[[str, int, int, dict[str, Any]], None]  # host, seq, dropped, result

#: shipped module sources remembered for agents that ask again (Missing)
SOURCES_KEPT = 256
#: connections remembered as waiting for acceptance (to nudge them at once)
MAX_WAITING = 10_000
#: messages handled per loop turn before others get the loop
BATCH = 512
#: pending TCP connections the kernel queues for the ROUTER (capped by net.core.somaxconn).
#: libzmq's default of 100 drops the SYNs of a crowd reconnecting at once; each dropped one
#: waits out TCP's retransmit backoff (1, 3, 7, 15 s …): 5,000 connections took 32 s, 5 s
#: with this backlog
BACKLOG = 4096
_EVENTS, _POLLIN, _SRCFD = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.SRCFD)
_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: enum flags cost more than the send itself
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


@dataclass(slots=True)
class ActiveSchedule:
    """A schedule the hub keeps alive: re-sent to its agents when they register again."""

    message: Schedule
    targets: frozenset[str]
    on_tick: OnTick


class Fleet:
    """Connected agents and the calls and schedules running on them."""

    def __init__(self, ctx: zmq.asyncio.Context, settings: HubSettings, keys: KeyStore,
                 publish: Publish) -> None:
        self.settings = settings
        self.keys = keys
        self.publish = publish
        self.registry = Registry()
        self.calls = CallTable(settings.max_calls, on_expire=self._expired)
        self.schedules: dict[int, ActiveSchedule] = {}
        self.sources: OrderedDict[str, CodeRef] = OrderedDict()
        self.pending: dict[str, bytes] = {}  # name → connection of agents awaiting a key
        self.clones: OrderedDict[bytes, str] = OrderedDict()  # refused second connections
        self.bad_frames = 0
        self.impostors = 0  # messages dropped for a key that is not their connection's
        self.role_refused = 0  # hellos refused for mixing agent and bus keys
        per_minute = max(1, settings.pending_per_minute)
        self._new_pending = TokenBucket(per_minute / 60.0, per_minute)
        self._warn = RationedLog(log, "agent warnings (bad frames, unaccepted keys)")
        # a restarted hub sees every agent register at once: the first few are logged, the
        # rest counted (each is still published as an `agents` event)
        self._said = RationedLog(log, "agent registrations", lines=20, interval=10.0)
        public, secret = keys.hub_keypair()
        s = ctx.socket(zmq.ROUTER)
        s.curve_server = True
        s.curve_publickey, s.curve_secretkey = public, secret
        s.zap_domain = b"reops"
        # no ZAP handler answering (the instant zap.py renews its socket): refuse the
        # handshake (the agent reconnects) rather than let an unauthenticated peer in
        s.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished agent fails loudly
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.BACKLOG, BACKLOG)
        # small frames only (calls' results are split, files chunked): nobody can make the
        # hub allocate big frames; never below what an agent may send in one frame
        s.setsockopt(zmq.MAXMSGSIZE, max(settings.max_message, MAX_SEND + 64 * 1024))
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.setsockopt(zmq.RCVHWM, 100_000)
        beat_ms = max(1, int(settings.heartbeat_s * 1000))
        s.setsockopt(zmq.HEARTBEAT_IVL, beat_ms)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, beat_ms * settings.misses)
        # a dropped agent connection fails its calls at once ("lost"), not after heartbeats
        self._monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.conns: dict[bytes, int] = {}  # routing id → the connection's file descriptor
        # and back (a drop finds its ids without a scan): an id, or a set for the moments a
        # reused descriptor carries a new connection's id before the old one's drop
        self.fds: dict[int, bytes | set[bytes]] = {}
        s.bind(settings.bind)
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sock = s
        self._raw: zmq.Socket[bytes] = zmq.Socket.shadow(s.underlying)  # no Futures
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Handle | None = None  # a drain scheduled for the next turn

    # ── receiving ─────────────────────────────────────────────────────────────────────

    async def serve(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        fd: int = self._raw.getsockopt(zmq.FD)  # type: ignore[assignment]
        watcher = asyncio.create_task(self._watch())
        loop.add_reader(fd, self._drain)
        self._wake()  # whatever arrived before the reader was added
        try:
            await loop.create_future()  # until cancelled: the reader does the work
        finally:
            loop.remove_reader(fd)
            if self._kick is not None:
                self._kick.cancel()
            self._loop = None
            watcher.cancel()

    def _wake(self) -> None:
        """Drain on the next loop turn (once, however many sends asked for it)."""
        if self._kick is None and self._loop is not None:
            self._kick = self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Handle what is queued on the ROUTER, at most BATCH messages this turn."""
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        raw = self._raw
        for _ in range(BATCH):
            try:
                frames = [raw.recv(_NOBLOCK, copy=False)]
            except zmq.Again:
                # recv may skip libzmq's pending commands (it throttles them), leaving ZMQ_FD
                # readable for ever (a spinning loop, new connections' pipes never attached):
                # ZMQ_EVENTS processes them and says whether a message is there after all
                if not raw.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                    return
                continue
            while frames[-1].more:  # (the rest of a message is there once its first part is)
                frames.append(raw.recv(_NOBLOCK, copy=False))
            try:
                self.receive(frames)
            except Exception:  # a hub bug on one message must not stop the others
                log.exception("error handling an agent message")
        self._wake()  # more may be queued: go on after others had the loop

    def _note_connection(self, routing: bytes, payload: zmq.Frame) -> None:
        """Remember which connection (file descriptor) a routing id arrived on."""
        fd = payload.get(_SRCFD)
        if isinstance(fd, int) and fd >= 0:
            old = self.conns.get(routing)
            if old != fd:  # (the usual case, the same connection again, costs one lookup)
                if old is not None:
                    self._unmap(old, routing)
                self.conns[routing] = fd
                ids = self.fds.get(fd)  # one id per connection but for moments: no set
                if ids is None or ids == routing:
                    self.fds[fd] = routing
                elif isinstance(ids, set):
                    ids.add(routing)
                else:
                    self.fds[fd] = {ids, routing}

    def _unmap(self, fd: int, routing: bytes) -> None:
        ids = self.fds.get(fd)
        if ids == routing:
            del self.fds[fd]
        elif isinstance(ids, set):
            ids.discard(routing)
            if not ids:
                del self.fds[fd]

    async def _watch(self) -> None:
        """Connection drops from the ROUTER's monitor: fail the calls sent on them."""
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                try:
                    self._disconnected(int(event["value"]))
                except Exception:
                    log.exception("error handling a dropped agent connection")

    def _disconnected(self, fd: int) -> None:
        ids = self.fds.pop(fd, set())  # (with 10,000 agents a scan per drop was quadratic)
        gone = {ids} if isinstance(ids, bytes) else ids
        for r in gone:
            del self.conns[r]
        failed = self.calls.fail_routing(
            gone, "lost", "agent {agent}'s connection dropped during the call: the command "
            "may have run; check the host before running it again")
        for name in failed:
            log.warning("agent %s disconnected during calls: failed them as lost", name)
        for r in gone:
            rec = self.registry.by_routing.get(r)
            if rec is not None:
                self.registry.detach(rec)  # its routing id may be taken by another peer now
                self.publish("agents", {"event": "disconnected", "agent": rec.name})

    def receive(self, frames: list[zmq.Frame]) -> None:
        """Handle one multipart message from the ROUTER: [routing id, payload].

        The routing id only says which connection sent it; who sent it is the CURVE key
        the handshake authenticated (ZAP's User-Id, on every frame). A message whose key
        is not the key registered for its routing id is dropped: a peer can choose its
        routing id (ZMQ_ROUTING_ID) and reuse a gone agent's, but not its key.
        """
        if len(frames) != 2:
            self._bad(frames[0].bytes if frames else b"", f"{len(frames)} frames, expected 2")
            return
        routing, payload = frames[0].bytes, frames[1]
        self._note_connection(routing, payload)
        key = str(payload.get("User-Id") or "")
        if not key:  # (ZAP authenticates every connection; the ROUTER enforces it)
            self._bad(routing, "no authenticated key on the connection")
            return
        owner = self.registry.by_routing.get(routing)
        if owner is not None and owner.key != key:
            self._impostor(owner, key, str(payload.get("Peer-Address") or ""))
            return
        try:
            msg = decode_agent(payload.bytes)
        except ProtocolError as e:
            self._bad(routing, str(e))
            return
        if isinstance(msg, Hello):
            self._hello(routing, key, str(payload.get("Peer-Address") or ""), msg)
            return
        rec, came_back = self.registry.beat(routing, msg if isinstance(msg, Beat) else None)
        if rec is None:
            self._send(routing, Unknown())
            return
        if came_back:
            log.info("agent %s is back", rec.name)
            self.publish("agents", {"event": "back", "agent": rec.name})
        match msg:
            case Output():
                self.calls.line(rec.name, msg)
            case Done():
                self.calls.done(rec.name, msg)
            case Missing():
                self._resend(rec, msg)
            case Tick():
                self._tick(rec, msg)

    def _bad(self, routing: bytes, why: str) -> None:
        self.bad_frames += 1
        rec = self.registry.by_routing.get(routing)
        who = rec.name if rec else f"connection {routing.hex()[:10]}"
        self._warn(logging.WARNING, "dropped a bad message from %s: %s", who, why[:200])

    def _impostor(self, owner: AgentRecord, key: str, address: str) -> None:
        """A message on `owner`'s routing id signed by another key: drop it, say so.

        ROUTER holds one connection per routing id, so `owner`'s own connection is gone:
        detach it from that id (its calls stay in flight until it registers again on a new
        connection and answers, or the heartbeat window fails them).
        """
        self.impostors += 1
        self.registry.detach(owner)
        fp = fingerprint(key) if key else "none"
        if self._warn(logging.WARNING, "dropped a message on agent %s's connection id from "
                      "another key (fingerprint %s, from %s): a forged routing id",
                      owner.name, fp, address or "?"):
            self.publish("agents", {"event": "impostor", "agent": owner.name,
                                    "fingerprint": fp, "address": address})

    def _mixes_roles(self, name: str, key: str) -> str | None:
        """Why `key` may not register as agent `name`, or None.

        Bus keys (accepted under a `bus-` name) may only subscribe and publish; agent keys
        run commands. A `bus-` agent name would put the agent's key among the bus keys once
        accepted (or at once with auto-accept), and a bus key registering as an agent would
        gain the agent role: both are refused, and nothing is recorded as pending.
        """
        if name.startswith(BUS_ROLE):
            return (f"agent names may not start with {BUS_ROLE!r}: that prefix names the "
                    "bus's keys")
        if key in self.keys.accepted_keys(BUS_ROLE):
            return "this key is accepted for the bus; an agent needs a key of its own"
        return None

    def _hello(self, routing: bytes, key: str, address: str, hello: Hello) -> None:
        name = hello.name
        mixed = self._mixes_roles(name, key)
        if mixed is not None:
            self.role_refused += 1
            self._warn(logging.WARNING, "agent %s refused (fingerprint %s, from %s): %s",
                       name, fingerprint(key), address or "?", mixed)
            self._send(routing, Refused(reason=mixed))
            return
        accepted = self.keys.accepted_key(name)
        if accepted is None and self.settings.auto_accept and not self.keys.is_rejected(key):
            self.keys.pre_accept(name, key)
            accepted = key
        if accepted is not None and accepted != key:
            self._warn(logging.WARNING, "agent %s presented a key other than its accepted one "
                       "(%s, from %s); refused", name, fingerprint(key), address or "?")
            self._send(routing, Refused(reason=f"name {name} belongs to another key"))
            return
        if accepted is None:
            self._unaccepted(routing, key, address, hello)
            return
        old = self.registry.by_name.get(name)
        if (old is not None and old.key == key and old.routing != routing
                and self._alive(old.routing)):  # (a new key, e.g. a redeploy, replaces it)
            self._clone(routing, address, old)
            return
        self.pending.pop(name, None)
        if old is not None and old.hello.pid != hello.pid:
            self.calls.fail_agent(name, "lost", f"agent {name} restarted during the call "
                                  "(the command may have run)")
        rec, event = self.registry.register(routing, key, address, hello)
        self._send(routing, Welcome(heartbeat_s=self.settings.heartbeat_s,
                                    misses=self.settings.misses))
        if event != "again":
            self._said(logging.INFO, "agent %s %s from %s", name, event, address)
            self.publish("agents", {"event": event, "agent": name, "address": address})
        for sched in self.schedules.values():
            if name in sched.targets:
                self._send(routing, self._for(rec, sched.message))

    def _unaccepted(self, routing: bytes, key: str, address: str, hello: Hello) -> None:
        """A key not accepted for `hello.name`: record its claim (rationed), serve nothing."""
        name, fp = hello.name, fingerprint(key)
        if self.keys.is_rejected(key):
            self._wait(name, routing)
            self._send(routing, Refused(reason="key rejected"))
            return
        if self.keys.pending_name_of(key) is None and not self._new_pending.take():
            self._warn(logging.WARNING, "too many new agent keys: %s (fingerprint %s, from "
                       "%s) not recorded", name, fp, address or "?")
            self._send(routing, Refused(reason="the hub is recording too many new keys; "
                                        "retrying later"))
            return
        claim = self.keys.add_pending(name, key, self.settings.max_pending)
        if claim == "other-name":
            other = self.keys.pending_name_of(key)
            self._warn(logging.WARNING, "key %s (from %s) is pending as %s and also claims %s; "
                       "refused (one name per key)", fp, address or "?", other, name)
            self._send(routing, Refused(reason=f"this key is already pending as {other}; "
                                        "one name per key (reops keys delete it on the hub)"))
            return
        if claim == "full":
            self._warn(logging.WARNING, "pending keys full (%d): %s (fingerprint %s, from %s) "
                       "not recorded", self.settings.max_pending, name, fp, address or "?")
            self._send(routing, Refused(reason="the hub's pending-key list is full"))
            return
        if claim == "new":
            self._warn(logging.INFO, "agent %s is pending (fingerprint %s, from %s): reops keys "
                       "accept %s", name, fp, address or "?", name)
            self.publish("keys", {"event": "pending", "agent": name, "fingerprint": fp})
        elif claim == "contested":
            claims = len(self.keys.contenders(name)) + 1
            self._warn(logging.WARNING, "%d keys claim %s: new fingerprint %s from %s; compare "
                       "fingerprints, then reops keys accept %s --fingerprint FP",
                       claims, name, fp, address or "?", name)
            self.publish("keys", {"event": "contested", "agent": name, "fingerprint": fp})
        self._wait(name, routing)
        self._send(routing, Pending(fingerprint=fp, heartbeat_s=self.settings.heartbeat_s))

    def _alive(self, routing: bytes) -> bool:
        """Whether the connection `routing` is still there (probed with a heartbeat)."""
        return bool(routing) and self._send(routing, Beat()) is None

    def _clone(self, routing: bytes, address: str, old: AgentRecord) -> None:
        """A second live connection with `old`'s name and key (a copied key): refuse it."""
        reason = (f"agent {old.name} with this key is already connected from {old.address}: "
                  "is this a clone (copied key dir)? give each machine its own key "
                  "(delete agent.key* in its keys dir) and name")
        if routing not in self.clones:
            self._warn(logging.WARNING, "refused a second connection for agent %s from %s: its "
                       "key is already connected from %s (a cloned agent?)", old.name,
                       address or "?", old.address)
            self.publish("agents", {"event": "clone", "agent": old.name, "address": address})
        self.clones[routing] = old.name
        self.clones.move_to_end(routing)
        while len(self.clones) > MAX_WAITING:
            self.clones.popitem(last=False)
        self._send(routing, Refused(reason=reason))

    # ── sending ───────────────────────────────────────────────────────────────────────

    def _send(self, routing: bytes, msg: Msg | bytes) -> str | None:
        """Send without blocking; the reason when it could not be sent."""
        frame = msg if isinstance(msg, bytes) else encode(msg)
        try:
            self._raw.send(routing, _NOBLOCK_MORE)
            self._raw.send(frame, _NOBLOCK)
        except zmq.Again:
            return "its send queue is full"
        except zmq.ZMQError as e:
            return "not connected" if e.errno == zmq.EHOSTUNREACH else str(e)
        finally:
            self._wake()  # the send may have taken the read edge: look again
        return None

    def _for(self, rec: AgentRecord, msg: Call | Schedule) -> Call | Schedule:
        """`msg` with shipped source stripped when `rec` already has that module."""
        ref = msg.code
        if ref is None:
            return msg
        if rec.code is not None and ref.hash in rec.code:
            ref = CodeRef(hash=ref.hash, function=ref.function, module=ref.module)
        elif rec.code is None:
            rec.code = {ref.hash}
        else:
            rec.code.add(ref.hash)
        if isinstance(msg, Call):
            return Call(id=msg.id, fn=msg.fn, args=msg.args, kwargs=msg.kwargs,
                        timeout=msg.timeout, stream=msg.stream, code=ref)
        return Schedule(id=msg.id, fn=msg.fn, every=msg.every, args=msg.args,
                        kwargs=msg.kwargs, timeout=msg.timeout, code=ref)

    def _remember(self, code: CodeRef | None) -> None:
        if code is not None and code.source is not None:
            self.sources[code.hash] = code
            self.sources.move_to_end(code.hash)
            while len(self.sources) > SOURCES_KEPT:
                self.sources.popitem(last=False)

    def _resend(self, rec: AgentRecord, missing: Missing) -> None:
        entry = self.calls.get(missing.id)
        code = self.sources.get(missing.hash)
        if entry is None or entry.agent != rec.name:
            return
        if code is None:
            self.calls.fail(missing.id, "error", "shipped code no longer held by the hub")
            return
        entry.routing = rec.routing
        c = entry.call
        why = self._send(rec.routing, Call(id=c.id, fn=c.fn, args=c.args, kwargs=c.kwargs,
                                           timeout=c.timeout, stream=c.stream, code=code))
        if why:
            self.calls.fail(c.id, "unreachable", f"agent {rec.name}: {why}")

    # ── calls and schedules ──────────────────────────────────────────────────────────

    def call(self, name: str, fn: str, args: list[Any], kwargs: dict[str, Any], *,
             timeout: float | None, stream: bool, code: CodeRef | None, on_done: OnDone,
             on_line: OnLine | None) -> int | None:
        """Start `fn` on agent `name`; its result goes to `on_done` (now, if it cannot run).

        Every call has a deadline (its timeout, else the hub's call_timeout_s). A call that
        could not be sent is "unreachable"; once sent, losing its agent makes it "lost".
        """
        rec = self.registry.connected(name)
        if rec is None:
            lost = name in self.registry.by_name
            on_done(name, failure("unreachable", f"agent {name} is "
                                  + ("lost" if lost else "not connected")))
            return None
        if len(self.calls) >= self.calls.max_calls:
            on_done(name, failure("error", f"hub busy: {len(self.calls)} calls in flight"))
            return None
        self._remember(code)
        if timeout is None or timeout <= 0:
            timeout = self.settings.call_timeout_s
        msg = Call(id=self.calls.next_id(), fn=fn, args=args, kwargs=kwargs, timeout=timeout,
                   stream=stream, code=code)
        grace = self.settings.call_grace_s
        self.calls.add(InFlight(agent=name, call=msg, on_done=on_done, on_line=on_line,
                                routing=rec.routing), timeout + grace)
        why = self._send(rec.routing, self._for(rec, msg))
        if why:
            if rec.code is not None:
                rec.code.discard(code.hash if code else "")
            self.calls.fail(msg.id, "unreachable", f"agent {name}: {why}")
        return msg.id

    def cancel(self, call_id: int) -> None:
        entry = self.calls.get(call_id)
        rec = self.registry.connected(entry.agent) if entry else None
        if rec is not None:
            self._send(rec.routing, Cancel(id=call_id))

    def _expired(self, entry: InFlight) -> None:
        """The hub gave up on a call: tell its agent to stop it (frees its slot there)."""
        rec = self.registry.connected(entry.agent)
        if rec is not None:
            self._send(rec.routing, Cancel(id=entry.call.id))

    def schedule(self, targets: list[str], fn: str, args: list[Any], kwargs: dict[str, Any],
                 *, every: float, timeout: float | None, code: CodeRef | None,
                 on_tick: OnTick) -> int:
        """Run `fn` every `every` s on each target, now and whenever it registers again."""
        self._remember(code)
        msg = Schedule(id=self.calls.next_id(), fn=fn, every=every, args=args, kwargs=kwargs,
                       timeout=timeout, code=code)
        self.schedules[msg.id] = ActiveSchedule(msg, frozenset(targets), on_tick)
        for name in targets:
            rec = self.registry.connected(name)
            if rec is not None:
                self._send(rec.routing, self._for(rec, msg))
        return msg.id

    def unschedule(self, sched_id: int) -> None:
        sched = self.schedules.pop(sched_id, None)
        for name in sched.targets if sched else ():
            rec = self.registry.connected(name)
            if rec is not None:
                self._send(rec.routing, Unschedule(id=sched_id))

    def _tick(self, rec: AgentRecord, tick: Tick) -> None:
        sched = self.schedules.get(tick.schedule)
        if sched is None or rec.name not in sched.targets:
            self._send(rec.routing, Unschedule(id=tick.schedule))
            return
        r = tick.result
        sched.on_tick(rec.name, tick.seq, tick.dropped, {
            "status": r.status, "code": r.code, "out": r.out, "err": r.err,
            "started_at": r.started_at, "duration_s": r.duration_s, "data": r.data})

    def _wait(self, name: str, routing: bytes) -> None:
        """Remember a connection waiting for its key to be accepted (bounded)."""
        if name in self.pending or len(self.pending) < MAX_WAITING:
            self.pending[name] = routing

    def nudge(self, name: str) -> None:
        """Ask a waiting agent to register again now (its key was just accepted)."""
        routing = self.pending.pop(name, None)
        if routing is not None:
            self._send(routing, Unknown())

    def drop(self, name: str, why: str) -> None:
        """Stop serving `name` (its key was rejected or deleted)."""
        if self.registry.forget(name) is not None:
            self.calls.fail_agent(name, "lost", f"agent {name}: {why} during the call "
                                  "(the command may have run)")
            self.publish("agents", {"event": "dropped", "agent": name, "reason": why})

    # ── heartbeats ────────────────────────────────────────────────────────────────────

    async def heartbeat(self) -> None:
        """Beat every agent each interval; fail the calls of agents silent too long."""
        window = self.settings.lost_after_s
        beat = encode(Beat())
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            for rec in list(self.registry):
                if rec.state == "connected":
                    self._send(rec.routing, beat)
            for rec in self.registry.silent(window):
                err = (f"agent {rec.name} lost: no heartbeat for {window:g} s (the command "
                       "may have run; check the host before running it again)")
                n = self.calls.fail_agent(rec.name, "lost", err)
                log.warning("%s (%d calls failed)", err, n)
                self.publish("agents", {"event": "lost", "agent": rec.name, "calls_failed": n})

    def close(self) -> None:
        for rec in list(self.registry):
            self.calls.fail_agent(rec.name, "lost", "the hub shut down during the call "
                                  "(the command may have run)")
        self._monitor.close(0)
        self.sock.close(0)

