"""The agent's one connection to the hub: register, beat, run calls and schedules.

A DEALER socket with CurveZMQ pins the hub's public key. A lost or refused connection is
retried after a randomized exponential backoff (`backoff.py`: full jitter, up to
`reconnect_max_s`), not libzmq's near-fixed interval, so a restarted hub is not stampeded by
every agent at once; the agent re-registers (Hello) when the hub says it does not know it
(after a hub restart) or when the hub has been silent for `misses` heartbeats. Results
travel through one ordered outbox (bounded: a flood of output slows the command instead of
growing memory); schedule results made while the hub is away wait in a bounded backlog, the
oldest dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from reops_agent import __version__
from reops_agent.backoff import Backoff
from reops_agent.functions import Runner
from reops_agent.protocol import (
    MAX_MESSAGE,
    Beat,
    Call,
    Cancel,
    Done,
    Hello,
    HubMsg,
    Missing,
    Msg,
    Output,
    Pending,
    ProtocolError,
    Refused,
    Schedule,
    Stream,
    Tick,
    Unknown,
    Unschedule,
    Welcome,
    decode_hub,
    encode,
)
from reops_agent.results import fit_tick, messages
from reops_agent.shipped import CodeMissing

log = logging.getLogger("reops_agent")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """How the agent reaches the hub and what it allows; every bound is configurable."""

    hub: str
    hub_key: bytes
    public_key: bytes
    secret_key: bytes
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    allow_code: bool = False
    allow: tuple[str, ...] | None = None  # built-ins served (None: all); see --allow
    concurrency: int = 16  # calls running at once
    heartbeat_s: float = 5.0  # until the hub's Welcome says otherwise
    misses: int = 3  # silent heartbeats before the hub counts as away
    backlog: int = 1000  # schedule results kept while the hub is away
    outbox: int = 10000  # messages queued for sending (backpressure beyond)
    reconnect_s: float = 0.1  # the first retry's window; doubles per failed attempt
    reconnect_max_s: float = 5.0  # the window's cap (delays are drawn from [0, window])

#: reconnect attempts remembered (monotonic times): what `Agent.attempts` shows
ATTEMPTS_KEPT = 64


class Agent:
    """One agent process's state: registration, running calls, schedules."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.runner = Runner(allow_code=cfg.allow_code, concurrency=cfg.concurrency,
                             allow=cfg.allow)
        self.heartbeat_s = cfg.heartbeat_s
        self.misses = cfg.misses
        self.registered = False
        self.last_heard = time.monotonic()
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.schedules: dict[int, asyncio.Task[None]] = {}
        self.backlog: deque[Tick] = deque()
        self.dropped = 0
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(cfg.outbox)
        self.backoff = Backoff(cfg.reconnect_s, max(cfg.reconnect_s, cfg.reconnect_max_s))
        self.attempts: deque[float] = deque(maxlen=ATTEMPTS_KEPT)  # reconnects (monotonic)
        self._retry: asyncio.TimerHandle | None = None
        self._ctx = zmq.asyncio.Context()
        self._sock = self._socket()
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
        self._sock.connect(cfg.hub)
        self._said: str = ""
        self._retime = asyncio.Event()  # the heartbeat interval changed: restart the wait

    def _socket(self) -> zmq.asyncio.Socket:
        cfg = self.cfg
        s = self._ctx.socket(zmq.DEALER)
        s.curve_serverkey = cfg.hub_key
        s.curve_publickey = cfg.public_key
        s.curve_secretkey = cfg.secret_key
        s.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a completed (authenticated) connection
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        s.setsockopt(zmq.RECONNECT_IVL, -1)  # no libzmq retries: `_lost` schedules them
        beat_ms = max(1, int(cfg.heartbeat_s * 1000))
        s.setsockopt(zmq.HEARTBEAT_IVL, beat_ms)  # ZMTP pings: drop half-open TCP
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, beat_ms * cfg.misses)
        return s

    def hello(self) -> Hello:
        return Hello(
            name=self.cfg.name,
            hostname=socket.gethostname(),
            os=f"{platform.system()} {platform.release()}",
            python=sys.version.split()[0],
            version=__version__,
            pid=os.getpid(),
            allow_code=self.cfg.allow_code,
            functions=self.runner.names,
            started_at=time.time(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the hub until `stop` is set."""
        log.info("agent %s connecting to %s", self.cfg.name, self.cfg.hub)
        tasks = [asyncio.create_task(t) for t in (self._receive(), self._beat(), self._send(),
                                                  self._connected())]
        try:
            await stop.wait()
        finally:
            if self._retry is not None:
                self._retry.cancel()
            for t in [*tasks, *self.calls.values(), *self.schedules.values()]:
                t.cancel()
            await asyncio.gather(*tasks, *self.calls.values(), *self.schedules.values(),
                                 return_exceptions=True)
            self._monitor.close(0)
            self._sock.close(0)
            self._ctx.term()

    # ── sending ───────────────────────────────────────────────────────────────────────

    def _send_now(self, msg: Msg) -> None:
        """Send a droppable message (Hello, Beat) now, or drop it if the hub is away."""
        sent: Any = self._sock.send(encode(msg), flags=zmq.NOBLOCK)  # a Future
        sent.add_done_callback(_retrieve)

    async def _queue(self, msg: Msg) -> None:
        """Send in order with everything else queued (lines, results)."""
        await self._outbox.put(encode(msg))

    async def _send(self) -> None:
        while True:
            frame = await self._outbox.get()
            await self._sock.send(frame)

    async def _connected(self) -> None:
        """Register as soon as a connection to the hub is authenticated (first or again)."""
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.backoff.reset()
                if self._retry is not None:  # (a retry still due would drop this connection)
                    self._retry.cancel()
                    self._retry = None
                self.registered = False
                self._send_now(self.hello())
                continue
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._say("the hub refused this agent's key (rejected there?); retrying")
            elif event["event"] not in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                self._say("cannot authenticate the hub: is --hub-key the hub's current key "
                          "(reops hub --print-key)? retrying")
            self._lost()

    def _lost(self) -> None:
        """The connection is gone or was never made: retry after a jittered backoff."""
        if self._retry is None:
            delay = self.backoff.next()
            log.debug("reconnecting to %s in %.2f s", self.cfg.hub, delay)
            self._retry = asyncio.get_running_loop().call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        self.attempts.append(time.monotonic())
        with contextlib.suppress(zmq.ZMQError):  # (libzmq forgot the endpoint, or not yet)
            self._sock.disconnect(self.cfg.hub)
        try:
            self._sock.connect(self.cfg.hub)
        except zmq.ZMQError as e:  # (cannot happen for an endpoint that connected once)
            self._say(f"cannot connect to {self.cfg.hub}: {e}; retrying")
            self._lost()

    # ── heartbeats ────────────────────────────────────────────────────────────────────

    async def _beat(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._retime.wait(), self.heartbeat_s)
                self._retime.clear()
            except TimeoutError:
                pass
            silent = time.monotonic() - self.last_heard
            if self.registered and silent > self.heartbeat_s * self.misses:
                self.registered = False
                log.warning("hub silent for %.0f s; registering again when it answers", silent)
            if self.registered:
                self._send_now(Beat(running=self.runner.running, load=os.getloadavg()[0],
                                    dropped=self.dropped))
            else:
                self._send_now(self.hello())

    # ── receiving ─────────────────────────────────────────────────────────────────────

    async def _receive(self) -> None:
        while True:
            frame = await self._sock.recv()
            try:
                msg = decode_hub(frame)
            except ProtocolError as e:
                log.warning("ignoring a bad message from the hub: %s", e)
                continue
            self.last_heard = time.monotonic()
            self._handle(msg)

    def _handle(self, msg: HubMsg) -> None:
        match msg:
            case Welcome():
                self._adopt(msg.heartbeat_s)
                self.misses = msg.misses
                if not self.registered:
                    log.info("registered with the hub as %s", self.cfg.name)
                self.registered = True
                self._said = ""
                self._flush_backlog()
            case Pending():
                self._adopt(msg.heartbeat_s)
                self._say(f"key pending on the hub: accept it there with `reops keys accept "
                          f"{self.cfg.name}` (fingerprint {msg.fingerprint})")
            case Refused():
                self._say(f"the hub refuses this agent: {msg.reason}")
            case Unknown():
                self.registered = False
                self._send_now(self.hello())
            case Call():  # only a hub that registered us sends these: run them
                if msg.id not in self.calls:
                    self.calls[msg.id] = asyncio.create_task(self._call(msg))
            case Cancel():
                task = self.calls.get(msg.id)
                if task is not None:
                    task.cancel()
            case Schedule():
                old = self.schedules.pop(msg.id, None)
                if old is not None:
                    old.cancel()
                self.schedules[msg.id] = asyncio.create_task(self._schedule(msg))
            case Unschedule():
                task = self.schedules.pop(msg.id, None)
                if task is not None:
                    task.cancel()
            case Beat():
                pass

    def _adopt(self, heartbeat_s: float) -> None:
        """Beat at the hub's interval from now on."""
        if heartbeat_s > 0 and heartbeat_s != self.heartbeat_s:
            self.heartbeat_s = heartbeat_s
            self._retime.set()

    def _say(self, text: str) -> None:
        """Log a state message once, not on every heartbeat."""
        if text != self._said:
            log.warning("%s", text)
            self._said = text

    # ── calls and schedules ──────────────────────────────────────────────────────────

    async def _call(self, msg: Call) -> None:
        async def emit(stream: Stream, text: str) -> None:
            await self._queue(Output(id=msg.id, stream=stream, text=text))

        try:
            done = await self.runner.run(msg.id, msg.fn, msg.args, msg.kwargs,
                                         timeout=msg.timeout, code=msg.code,
                                         emit=emit if msg.stream else None)
        except CodeMissing as e:
            await self._queue(Missing(id=msg.id, hash=e.digest))
            return
        except asyncio.CancelledError:
            done = Done(id=msg.id, status="error", code=-1, err="call cancelled")
            with contextlib.suppress(asyncio.QueueFull):
                self._outbox.put_nowait(encode(done))
            raise
        finally:
            self.calls.pop(msg.id, None)
        for part in messages(done):  # large output in parts: no frame beyond the hub's limit
            await self._queue(part)

    async def _schedule(self, msg: Schedule) -> None:
        seq = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            seq += 1
            try:
                done = await self.runner.run(0, msg.fn, msg.args, msg.kwargs,
                                             timeout=msg.timeout, code=msg.code)
            except CodeMissing as e:
                done = Done(id=0, status="error", code=1, err=f"shipped code {e.digest[:12]} "
                            "missing: schedule it again")
            tick = fit_tick(Tick(schedule=msg.id, seq=seq, result=done))
            if self.registered and not self._outbox.full():
                await self._queue(tick)
            else:
                self._keep(tick)
            next_at += msg.every
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _keep(self, tick: Tick) -> None:
        if len(self.backlog) >= self.cfg.backlog:
            self.backlog.popleft()
            self.dropped += 1
        self.backlog.append(tick)

    def _flush_backlog(self) -> None:
        first = True
        while self.backlog and not self._outbox.full():
            tick = self.backlog.popleft()
            if first and self.dropped:
                tick = Tick(schedule=tick.schedule, seq=tick.seq, dropped=self.dropped,
                            result=tick.result)
                self.dropped = 0
            first = False
            self._outbox.put_nowait(encode(tick))



def _retrieve(fut: asyncio.Future[object]) -> None:
    """Consume a dropped send's exception (zmq.Again) so asyncio does not warn about it."""
    if not fut.cancelled():
        fut.exception()
