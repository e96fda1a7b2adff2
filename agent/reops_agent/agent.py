"""The agent's one connection to the hub: register, beat, run calls and schedules.

One thread owns the socket: a `zmq.Poller` loop over the DEALER socket, its monitor and a
wake-up pipe, with the heartbeat and reconnect deadlines as the poll's timeout. No asyncio
(it alone adds ~7 MB to an idle agent): calls and schedules run in threads of their own,
hand their frames to the loop through a bounded outbox and wake it (a flood of output slows
the command instead of growing memory); a Cancel flips the call's token, which kills its
command.

A DEALER socket with CurveZMQ pins the hub's public key. A lost or refused connection is
retried after a randomized exponential backoff (`backoff.py`: full jitter, up to
`reconnect_max_s`), not libzmq's near-fixed interval, so a restarted hub is not stampeded by
every agent at once; the agent re-registers (Hello) when the hub says it does not know it
(after a hub restart) or when the hub has been silent for `misses` heartbeats. Schedule
results made while the hub is away wait in a bounded backlog, the oldest dropped and
counted.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

import msgspec
import zmq

from reops_agent import __version__
from reops_agent.backoff import Backoff
from reops_agent.cancel import Cancelled, Token
from reops_agent.functions import Runner
from reops_agent.log import log
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


def short_hostname() -> str:
    """This host's name up to its first dot (the default agent name)."""
    return os.uname().nodename.split(".")[0]


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the agent reaches the hub and what it allows; every bound is configurable.

    (A msgspec Struct, not a dataclass: `dataclasses` imports `inspect`, ~1 MB.)"""

    hub: str
    hub_key: bytes
    public_key: bytes
    secret_key: bytes
    name: str = msgspec.field(default_factory=short_hostname)
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

_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
           | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)


class Agent:
    """One agent process's state: registration, running calls, schedules.

    Everything but `stop()` and the work's threads runs in the thread that calls `run()`."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.runner = Runner(allow_code=cfg.allow_code, concurrency=cfg.concurrency,
                             allow=cfg.allow)
        self.heartbeat_s = cfg.heartbeat_s
        self.misses = cfg.misses
        self.registered = False
        self.last_heard = time.monotonic()
        self.calls: dict[int, Token] = {}
        self.schedules: dict[int, Token] = {}
        self.backlog: deque[Tick] = deque()
        self.dropped = 0
        self._outbox: queue.Queue[bytes] = queue.Queue(cfg.outbox)
        self._posted: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._unsent: bytes | None = None  # the outbox's head, waiting for the socket
        self.backoff = Backoff(cfg.reconnect_s, max(cfg.reconnect_s, cfg.reconnect_max_s))
        self.attempts: deque[float] = deque(maxlen=ATTEMPTS_KEPT)  # reconnects (monotonic)
        self._retry_at: float | None = None
        self._beat_at = time.monotonic() + self.heartbeat_s
        self._stopping = False
        # (the pipe is closed once, never written after; reentrant: a signal handler's
        # stop() may run in the loop's thread while it holds the lock)
        self._wake_lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ctx = zmq.Context()
        self._sock = self._socket()
        self._monitor = self._sock.get_monitor_socket(_EVENTS)
        self._sock.connect(cfg.hub)
        self._said: str = ""

    def _socket(self) -> zmq.Socket[bytes]:
        cfg = self.cfg
        s: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
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
            hostname=os.uname().nodename,  # (not `socket`/`platform`: same values, less RSS)
            os=f"{os.uname().sysname} {os.uname().release}",
            python=sys.version.split()[0],
            version=__version__,
            pid=os.getpid(),
            allow_code=self.cfg.allow_code,
            functions=self.runner.names,
            started_at=time.time(),
        )

    def stop(self) -> None:
        """Ask `run()` to return (safe from any thread and from a signal handler)."""
        self._stopping = True
        self._wake()

    def run(self) -> None:
        """Serve the hub until `stop()`: the socket loop, in the calling thread."""
        log.info("agent %s connecting to %s", self.cfg.name, self.cfg.hub)
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stopping:
                self._flush()
                poller.register(self._sock, zmq.POLLIN | (zmq.POLLOUT if self._unsent else 0))
                ready = dict(poller.poll(self._timeout_ms()))
                if ready.get(self._wake_r):
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 4096):
                            pass
                while True:  # work handed over by the calls' and schedules' threads
                    try:
                        self._posted.get_nowait()()
                    except queue.Empty:
                        break
                if ready.get(self._monitor):
                    self._events()
                if ready.get(self._sock, 0) & zmq.POLLIN:
                    self._receive()
                self._timers()
        finally:
            for token in [*self.calls.values(), *self.schedules.values()]:
                token.cancel()
            self._monitor.close(0)
            self._sock.close(0)
            self._ctx.term()
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = -1

    def _timeout_ms(self) -> int:
        due = min(self._beat_at, self._retry_at or self._beat_at)
        return max(0, int((due - time.monotonic()) * 1000) + 1)

    def _timers(self) -> None:
        now = time.monotonic()
        if self._retry_at is not None and now >= self._retry_at:
            self._reconnect()
        if now >= self._beat_at:
            self._beat_at = now + self.heartbeat_s
            self._beat()

    # ── sending ───────────────────────────────────────────────────────────────────────

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(OSError):  # (full pipe: awake anyway)
            if self._wake_w >= 0:
                os.write(self._wake_w, b"!")

    def _post(self, work: Callable[[], None]) -> None:
        """Run `work` in the socket's thread (from a call's or a schedule's thread)."""
        self._posted.put(work)
        self._wake()

    def _send_now(self, msg: Msg) -> None:
        """Send a droppable message (Hello, Beat) now, or drop it if the hub is away."""
        with contextlib.suppress(zmq.Again):
            self._sock.send(encode(msg), flags=zmq.NOBLOCK)

    def _queue(self, msg: Msg) -> None:
        """Send in order with everything else queued (lines, results); from a work thread,
        blocking while the outbox is full."""
        self._outbox.put(encode(msg))
        self._wake()

    def _flush(self) -> None:
        """Hand queued frames to libzmq until it would block (then poll for POLLOUT)."""
        while True:
            if self._unsent is None:
                try:
                    self._unsent = self._outbox.get_nowait()
                except queue.Empty:
                    return
            try:
                self._sock.send(self._unsent, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._unsent = None

    def _events(self) -> None:
        """Register as soon as a connection to the hub is authenticated (first or again)."""
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = _event(frames)
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.backoff.reset()
                self._retry_at = None  # (a retry still due would drop this connection)
                self.registered = False
                self._send_now(self.hello())
                continue
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._say("the hub refused this agent's key (rejected there?); retrying")
            elif event not in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                self._say("cannot authenticate the hub: is --hub-key the hub's current key "
                          "(reops hub --print-key)? retrying")
            self._lost()

    def _lost(self) -> None:
        """The connection is gone or was never made: retry after a jittered backoff."""
        if self._retry_at is None:
            delay = self.backoff.next()
            log.debug("reconnecting to %s in %.2f s", self.cfg.hub, delay)
            self._retry_at = time.monotonic() + delay

    def _reconnect(self) -> None:
        self._retry_at = None
        self.attempts.append(time.monotonic())
        with contextlib.suppress(zmq.ZMQError):  # (libzmq forgot the endpoint, or not yet)
            self._sock.disconnect(self.cfg.hub)
        try:
            self._sock.connect(self.cfg.hub)
        except zmq.ZMQError as e:  # (cannot happen for an endpoint that connected once)
            self._say(f"cannot connect to {self.cfg.hub}: {e}; retrying")
            self._lost()

    # ── heartbeats ────────────────────────────────────────────────────────────────────

    def _beat(self) -> None:
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

    def _receive(self) -> None:
        while True:
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
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
                    token = self.calls[msg.id] = Token()
                    if not _start(self._call, msg, token):  # (the host is out of threads)
                        del self.calls[msg.id]
                        with contextlib.suppress(queue.Full):
                            self._outbox.put_nowait(encode(Done(
                                id=msg.id, status="error", code=1,
                                err="the agent cannot start a thread for this call (out of "
                                    "threads or memory on the host); try again")))
            case Cancel():
                running = self.calls.get(msg.id)
                if running is not None:
                    running.cancel()
            case Schedule():
                old = self.schedules.pop(msg.id, None)
                if old is not None:
                    old.cancel()
                token = self.schedules[msg.id] = Token()
                if not _start(self._schedule, msg, token):
                    del self.schedules[msg.id]
                    log.warning("cannot start schedule %d: no thread available", msg.id)
            case Unschedule():
                gone = self.schedules.pop(msg.id, None)
                if gone is not None:
                    gone.cancel()
            case Beat():
                pass

    def _adopt(self, heartbeat_s: float) -> None:
        """Beat at the hub's interval from now on."""
        if heartbeat_s > 0 and heartbeat_s != self.heartbeat_s:
            self.heartbeat_s = heartbeat_s
            self._beat_at = time.monotonic() + heartbeat_s

    def _say(self, text: str) -> None:
        """Log a state message once, not on every heartbeat."""
        if text != self._said:
            log.warning("%s", text)
            self._said = text

    # ── calls and schedules (each in a thread of its own) ────────────────────────────

    def _call(self, msg: Call, token: Token) -> None:
        def emit(stream: Stream, text: str) -> None:
            self._queue(Output(id=msg.id, stream=stream, text=text))

        try:
            done = self.runner.run(msg.id, msg.fn, msg.args, msg.kwargs,
                                   timeout=msg.timeout, code=msg.code,
                                   emit=emit if msg.stream else None, token=token)
            parts = messages(done)  # large output in parts: no frame beyond the hub's limit
        except CodeMissing as e:
            parts = [Missing(id=msg.id, hash=e.digest)]
        except Cancelled:
            parts = [Done(id=msg.id, status="error", code=-1, err="call cancelled")]
        except BaseException as e:  # (a bug here must still answer the hub)
            log.exception("call %d failed", msg.id)
            parts = [Done(id=msg.id, status="error", code=1, err=f"agent error: {e!r}")]
        self._post(lambda: self._forget(msg.id))
        if self._stopping:
            return
        for part in parts:
            self._queue(part)

    def _forget(self, call_id: int) -> None:
        self.calls.pop(call_id, None)

    def _schedule(self, msg: Schedule, token: Token) -> None:
        seq = 0
        next_at = time.monotonic()
        while not token.cancelled and not self._stopping:
            seq += 1
            try:
                done = self.runner.run(0, msg.fn, msg.args, msg.kwargs,
                                       timeout=msg.timeout, code=msg.code, token=token)
            except CodeMissing as e:
                done = Done(id=0, status="error", code=1, err=f"shipped code {e.digest[:12]} "
                            "missing: schedule it again")
            except Cancelled:
                return
            tick = fit_tick(Tick(schedule=msg.id, seq=seq, result=done))
            self._post(lambda tick=tick: self._tick(tick, token))  # type: ignore[misc]
            next_at += msg.every
            if token.sleep(next_at - time.monotonic()):
                return

    def _tick(self, tick: Tick, token: Token) -> None:
        """A schedule's result, in the socket's thread: queued, or kept while away."""
        if token.cancelled:
            return
        if self.registered:
            with contextlib.suppress(queue.Full):  # (work threads fill it too)
                self._outbox.put_nowait(encode(tick))
                return
        self._keep(tick)

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
            try:
                self._outbox.put_nowait(encode(tick))
            except queue.Full:  # (work threads fill it too): keep it for the next Welcome
                self.backlog.appendleft(tick)
                return


def _event(frames: list[bytes]) -> int:
    """A monitor message's event id: its first frame's leading 16 bits (native order).

    (Not `zmq.utils.monitor.parse_monitor_message`: that module imports zmq.asyncio, and
    with it asyncio, the ~7 MB this agent is built to avoid.)"""
    return int.from_bytes(frames[0][:2], sys.byteorder) if frames and frames[0] else 0


def _start(work: Callable[[Call, Token], None] | Callable[[Schedule, Token], None],
           msg: Call | Schedule, token: Token) -> bool:
    """Run `work` in a thread of its own; False when the host cannot start one."""
    try:
        threading.Thread(target=work, args=(msg, token), daemon=True,
                         name=f"reops-agent-{type(msg).__name__.lower()}-{msg.id}").start()
    except RuntimeError:
        return False
    return True
