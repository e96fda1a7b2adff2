"""The bus end to end: a real `reops hub` process, real CurveZMQ, real publisher processes.

Subscribers here are plain pyzmq (no reops code on their side, as a subscriber in another
language would be) except where `reops tail` itself is under test. Waits are on events or
on conditions polled with a deadline; nothing asserts a duration.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from reops.control.client import request_sync
from reops.hub.keystore import KeyStore
from reops.lab.agents import LabHub

DEADLINE_S = 30.0
HWM = 200  # the hub's per-subscriber queue: small, so a slow subscriber overflows it

PUBLISHER = '''
"""Publish synthetic Results with publish(), on commands read from stdin."""
import json, sys, threading
import reactivex
from reops import publish
from reops.core.model import Host, Hosts, Result
from reops.core.runtime import get_runtime
from reops.sinks.bus import publisher
from reops.streams.stream import Stream

hosts = Hosts([Host(name="h1", address="127.0.0.1")])

def pipeline(results):
    """Run Results through `| publish()`; how many came out the other end."""
    done, seen = threading.Event(), []
    stream = Stream(reactivex.from_iterable(results), hosts) | publish()
    stream.subscribe(on_next=lambda e: seen.append(1), on_completed=done.set)
    done.wait()
    return len(seen)

for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "burst":
        n, size, op = int(args[0]), int(args[1]), args[2]
        passed = pipeline(Result(host="h1", op=op, status="ok", code=0, out="x" * size)
                          for _ in range(n))
    elif cmd == "results":
        op, statuses = args[0], args[1:]
        passed = pipeline(Result(host=f"h{i}", op=op, status=s, code=0 if s == "ok" else 1,
                                 out=f"out {i}", err="" if s == "ok" else f"err {i}",
                                 started_at=1.0, duration_s=0.5)
                          for i, s in enumerate(statuses))
    elif cmd == "tick":
        passed = pipeline([Result(host="h1", op=args[0], status="ok", code=0, out="tick")])
    else:
        break
    get_runtime().barrier()
    pub = publisher()
    print(json.dumps({"passed": passed, "sent": pub.sent, "dropped": pub.dropped,
                      "waiting": len(pub._waiting)}), flush=True)
'''


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHub]:
    home = tmp_path_factory.mktemp("bus") / "home"
    home.mkdir(mode=0o700)
    env = {"REOPS_HUB_CONTROL": "", "REOPS_HUB_KEYS_DIR": "",
           "REOPS_HUB_BUS_IN": "tcp://127.0.0.1:*", "REOPS_HUB_BUS_OUT": "tcp://127.0.0.1:*",
           "REOPS_HUB_BUS_HWM": str(HWM), "REOPS_CONFIG": str(home / "none.toml")}
    with LabHub(home=home, env=env, bind="tcp://127.0.0.1:*").start() as h:
        yield h


def stats(hub: LabHub) -> dict[str, Any]:
    info = request_sync(hub.control_path, "bus.stats")
    assert isinstance(info, dict) and "error" not in info, info
    return info


def until(cond: Callable[[], Any], what: str, deadline: float = DEADLINE_S) -> Any:
    """Poll `cond` until it is truthy (its value), failing with `what` at the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def client_env(hub: LabHub) -> dict[str, str]:
    return {**os.environ, "REOPS_HOME": str(hub.home), "REOPS_HUB_CONTROL": "",
            "REOPS_HUB_KEYS_DIR": "",
            "REOPS_CONFIG": str(hub.home / "none.toml"), "PYTHONUNBUFFERED": "1"}


class Publisher:
    """A Python process publishing through `| publish()` on command."""

    def __init__(self, hub: LabHub, tmp: Path) -> None:
        script = tmp / "publisher.py"
        script.write_text(PUBLISHER)
        self.proc = subprocess.Popen([sys.executable, str(script)], env=client_env(hub),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def do(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the publisher died on {command!r} (exit {self.proc.wait()})"
        return dict(json.loads(line))

    def close(self) -> int:
        assert self.proc.stdin
        self.proc.stdin.close()
        return self.proc.wait(DEADLINE_S)


@pytest.fixture
def publisher(hub: LabHub, tmp_path: Path) -> Iterator[Publisher]:
    p = Publisher(hub, tmp_path)
    try:
        yield p
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def subscriber(hub: LabHub, name: str | None, *topics: str, rcvhwm: int = 1000,
               pair: tuple[bytes, bytes] | None = None,
               ) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes], tuple[bytes, bytes]]:
    """A plain pyzmq CURVE SUB (key accepted under `name` unless None) and its monitor."""
    public, secret = pair or zmq.curve_keypair()
    if name is not None:
        KeyStore(hub.keys_dir).pre_accept(name, public.decode())
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.curve_serverkey = str(stats(hub)["key"]).encode()
    sock.curve_publickey, sock.curve_secretkey = public, secret
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t.encode())
    sock.connect(str(stats(hub)["out"]))
    return sock, monitor, (public, secret)


def handshake(monitor: zmq.Socket[bytes]) -> int:
    """The first handshake outcome the monitor reports (an event, waited for)."""
    assert monitor.poll(int(DEADLINE_S * 1000)), "no handshake outcome"
    return int(parse_monitor_message(monitor.recv_multipart())["event"])


def subscribed(hub: LabHub, topic: str) -> None:
    until(lambda: topic in stats(hub)["subscriptions"], f"the hub to see {topic!r}")


def receive(sock: zmq.Socket[bytes], n: int) -> list[tuple[str, dict[str, Any]]]:
    got = []
    for _ in range(n):
        assert sock.poll(int(DEADLINE_S * 1000)), f"got {len(got)} of {n} messages"
        topic, body = sock.recv_multipart()
        got.append((topic.decode(), msgspec.msgpack.decode(body)))
    return got


# ── the tests ──────────────────────────────────────────────────────────────────────────


def test_a_plain_pyzmq_subscriber_reads_results_in_the_documented_schema(
        hub: LabHub, publisher: Publisher) -> None:
    sock, monitor, _ = subscriber(hub, "bus-schema", "result.schema.")
    assert handshake(monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    subscribed(hub, "result.schema.")
    report = publisher.do("results schema ok failed ok")
    assert report["passed"] == 3  # publish() passes every item on unchanged
    got = sorted(receive(sock, 3))
    assert [t for t, _ in got] == ["result.schema.failed.h1", "result.schema.ok.h0",
                                   "result.schema.ok.h2"]
    body = got[0][1]
    assert body["type"] == "result" and body["v"] == 1 and body["seq"] == 1
    assert {k: body[k] for k in ("host", "op", "status", "code", "out", "err", "started_at",
                                 "duration_s", "transport")} == {
        "host": "h1", "op": "schema", "status": "failed", "code": 1, "out": "out 1",
        "err": "err 1", "started_at": 1.0, "duration_s": 0.5, "transport": "ssh"}
    assert body["src"] and body["at"] > 0 and body["dropped"] == 0
    assert publisher.close() == 0


def test_a_rogue_key_receives_nothing_until_accepted(hub: LabHub, publisher: Publisher,
                                                     tmp_path: Path) -> None:
    good, good_mon, _ = subscriber(hub, "bus-good", "result.rogue.")
    rogue, rogue_mon, rogue_pair = subscriber(hub, None, "result.rogue.")
    assert handshake(good_mon) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert handshake(rogue_mon) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    subscribed(hub, "result.rogue.")
    publisher.do("results rogue ok ok")
    assert len(receive(good, 2)) == 2
    assert rogue.poll(0) == 0  # refused at the handshake: nothing was ever routed to it
    # it waits as pending under a bus- name, like an agent key; once accepted, the same
    # key gets in (libzmq does not retry a refused key by itself: the client connects again)
    from reops.hub.bus import bus_name

    rogue_key = rogue_pair[0].decode()
    name = bus_name(rogue_key)
    pending = until(lambda: KeyStore(hub.keys_dir).get(name), f"{name} pending")
    assert pending.state == "pending" and pending.key == rogue_key
    accept = subprocess.run([sys.executable, "-m", "reops", "keys", "accept", name],
                            env=client_env(hub), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=DEADLINE_S)
    assert accept.returncode == 0, accept.stderr
    again, again_mon, _ = subscriber(hub, None, "result.rogue2.", pair=rogue_pair)
    assert handshake(again_mon) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    subscribed(hub, "result.rogue2.")
    publisher.do("results rogue2 ok")
    assert [t for t, _ in receive(again, 1)] == ["result.rogue2.ok.h0"]


def test_a_slow_subscriber_never_blocks_the_pipeline_and_its_loss_shows_as_gaps(
        hub: LabHub, publisher: Publisher) -> None:
    n, size = 10_000, 4096  # far more than the queues and socket buffers in between hold
    slow, monitor, _ = subscriber(hub, "bus-slow", "result.slow.", rcvhwm=10)
    assert handshake(monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    subscribed(hub, "result.slow.")
    until(lambda: publisher.do("tick warm")["waiting"] == 0, "the publisher connected")
    report = publisher.do(f"burst {n} {size} slow")  # returns: the pipeline completed
    assert report["passed"] == n
    # now read: what was queued, then, once the queues have room again, a tick
    seqs: list[int] = []
    end = time.monotonic() + DEADLINE_S
    while not seqs or seqs[-1] <= n:
        while slow.poll(0):
            _, body = slow.recv_multipart()
            seqs.append(int(msgspec.msgpack.decode(body)["seq"]))
        if seqs and seqs[-1] > n:
            break
        publisher.do("tick slow")
        slow.poll(200)
        assert time.monotonic() < end, "the tick never reached the drained subscriber"
    received = len(seqs) - 1  # the last one is the tick
    assert received < n
    # the documented rule finds every message lost: seq jumps add up to what is missing
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(seqs) if b > a + 1)
    missing = seqs[-1] - seqs[0] + 1 - len(seqs)
    assert gaps == missing > 0
    # and most were lost at the hub for this subscriber, not by the publisher (it counts
    # its own drops: a queue to the hub that was full)
    assert missing > publisher.do("tick warm")["dropped"]


def test_bus_stream_gives_typed_messages_matching_its_glob(
        hub: LabHub, publisher: Publisher, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in client_env(hub).items():
        if k.startswith("REOPS_"):
            monkeypatch.setenv(k, v)
    from reops import bus
    from reops.control.bus import Message, ResultBody

    got: queue.Queue[Message] = queue.Queue()
    live = bus("result.busfn.*.h1").subscribe(on_next=got.put)
    try:
        subscribed(hub, "result.busfn.")  # ZeroMQ filters by the literal prefix …
        publisher.do("results busfn ok failed ok")
        msg = got.get(timeout=DEADLINE_S)  # … the glob picks h1 out of h0, h1, h2
        assert msg.topic == "result.busfn.failed.h1" and msg.missed == 0
        assert isinstance(msg.body, ResultBody)
        result = msg.body.to_result()
        assert (result.host, result.status, result.code, result.err) == \
            ("h1", "failed", 1, "err 1")
        publisher.do("results busfn ok failed")  # h2 before and h0 here: not for us either
        again = got.get(timeout=DEADLINE_S)
        assert (again.topic, again.body.seq, again.missed) == ("result.busfn.failed.h1", 2, 0)
    finally:
        live.dispose()


def test_garbage_sent_to_the_xsub_is_counted_and_never_forwarded(hub: LabHub) -> None:
    sub, monitor, _ = subscriber(hub, "bus-watch", "")  # everything
    assert handshake(monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    subscribed(hub, "")
    public, secret = zmq.curve_keypair()
    KeyStore(hub.keys_dir).pre_accept("bus-fuzz", public.decode())
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.curve_serverkey = str(stats(hub)["key"]).encode()
    pub.curve_publickey, pub.curve_secretkey = public, secret
    pub.connect(str(stats(hub)["in"]))
    assert pub.poll(int(DEADLINE_S * 1000)) and pub.recv() == b"\x01"  # the hub takes all
    before = stats(hub)["bad"]
    garbage: list[list[bytes]] = [
        [b"just one frame"], [b"result.x.ok.h", b"a", b"three"], [b"not-a-topic", b"\x80"],
        [b"result.x.ok.h", b"\xc1 not msgpack"], [b"result.x.ok.h", b"\x93\x01\x02\x03"],
        [b"flow.f.w", msgspec.msgpack.encode({"no": "schema"})], [b"", b""],
    ]
    for frames in garbage:
        pub.send_multipart(frames)
    good = msgspec.msgpack.encode({"type": "flow", "v": 1, "src": "fuzz", "seq": 1,
                                   "dropped": 0, "at": 0.0, "flow": "f", "what": "ok"})
    pub.send_multipart([b"flow.f.ok", good])
    until(lambda: stats(hub)["bad"] - before == len(garbage), "the garbage to be counted")
    # the only message that reached the subscriber is the good one, sent last
    topic, body = receive(sub, 1)[0]
    assert (topic, body["what"]) == ("flow.f.ok", "ok")
    assert sub.poll(0) == 0
    ping = request_sync(hub.control_path, "ping")  # and the hub carries on
    assert hub.proc is not None and ping["pid"] == hub.proc.pid


class Tail:
    """`reops tail` as a process; its stdout lines arrive on a queue (reads with deadlines)."""

    def __init__(self, hub: LabHub, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "reops", "tail", *args],
                                     env=client_env(hub), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: queue.Queue[str | None] = queue.Queue()
        for stream, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: queue.Queue[str | None]) -> None:
        for line in stream:
            into.put(line.rstrip("\n"))
        into.put(None)

    def until(self, want: Callable[[list[str]], bool], stderr: bool = False) -> list[str]:
        """Lines (of stdout, or stderr) until `want(lines)` holds."""
        source = self.errors if stderr else self.lines
        got: list[str] = []
        end = time.monotonic() + DEADLINE_S
        while not want(got):
            try:
                line = source.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"tail printed only {got}") from None
            assert line is not None, f"tail ended: {self.proc.wait()} {got}"
            got.append(line)
        return got


def test_reops_tail_prints_what_a_publishing_exec_sends_and_ctrl_c_exits_130(
        hub: LabHub, lab_factory: Callable[..., Any], tmp_path: Path) -> None:
    lab = lab_factory(hosts=2)
    text = Tail(hub, "result.exec.*")
    as_json = Tail(hub, "result.exec.*", "-o", "json")
    try:
        until(lambda: stats(hub)["subscriptions"].get("result.exec.", 0) >= 2,
              "both tails subscribed")
        script = tmp_path / "exec_publish.py"
        script.write_text(
            "import sys\n"
            "from reops import inventory, exec_, publish, run\n"
            f"hosts = inventory({str(lab.info.inventory)!r}).select('all')\n"
            "out = run(exec_(hosts, 'echo hello from $(hostname -s); exit 0') | publish())\n"
            "sys.exit(out.exit_code)\n")
        done = subprocess.run([sys.executable, str(script)], env=client_env(hub),
                              capture_output=True, text=True, timeout=DEADLINE_S)
        assert done.returncode == 0, done.stderr
        names = list(lab.info.hosts)
        want = {f"result.exec.ok.{n}" for n in names}
        lines = text.until(lambda ls: want <= {ln.split()[0] for ln in ls if ln[:1] != " "})
        assert any("hello from" in ln for ln in lines)
        rows = [json.loads(ln) for ln in as_json.until(lambda ls: len(ls) >= len(names))]
        assert {r["topic"] for r in rows} == want
        assert all(r["type"] == "result" and r["code"] == 0 and r["v"] == 1 for r in rows)
    finally:
        for t in (text, as_json):
            t.proc.send_signal(signal.SIGINT)
    assert text.proc.wait(DEADLINE_S) == 130 and as_json.proc.wait(DEADLINE_S) == 130


def test_bad_tail_pattern_is_one_line_exit_2(hub: LabHub) -> None:
    proc = subprocess.run([sys.executable, "-m", "reops", "tail", "results.*"],
                          env=client_env(hub), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=DEADLINE_S)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("reops: error: bad topic pattern 'results.*'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_tail_with_its_own_key_waits_until_accepted_and_the_hub_announces_it(
        hub: LabHub, publisher: Publisher, tmp_path: Path) -> None:
    events, monitor, _ = subscriber(hub, "bus-events", "event.keys.")
    assert handshake(monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    subscribed(hub, "event.keys.")
    tail = Tail(hub, "result.tailkeys.*", "--keys", str(tmp_path / "tail-keys"))
    try:
        said = tail.until(lambda ls: any("refused" in ln for ln in ls), stderr=True)
        found = re.search(r"reops keys accept (bus-[0-9a-f]+)", said[-1])
        assert found, said
        name = found.group(1)
        accept = subprocess.run([sys.executable, "-m", "reops", "keys", "accept", name],
                                env=client_env(hub), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=DEADLINE_S)
        assert accept.returncode == 0, accept.stderr
        # the hub's own events are on the bus too
        topic, body = receive(events, 1)[0]
        assert (topic, body["source"], body["kind"], body["data"]["agent"]) == \
            ("event.keys.accepted", "keys", "accepted", name)
        subscribed(hub, "result.tailkeys.")  # tail tried again by itself, and got in
        publisher.do("results tailkeys ok")
        assert tail.until(lambda ls: len(ls) >= 2)[:2] == [
            "result.tailkeys.ok.h0  code=0", "    out 0"]
    finally:
        tail.proc.send_signal(signal.SIGINT)
    assert tail.proc.wait(DEADLINE_S) == 130


def test_publishing_with_no_hub_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    home = tmp_path / "nohub"
    home.mkdir(mode=0o700)
    nohub = LabHub(home=home, env={})  # never started: no control socket, no key pair
    p = Publisher(nohub, tmp_path)
    try:
        assert p.do("results nohub ok failed")["passed"] == 2  # the pipeline goes on
        published = 2

        def settled() -> dict[str, Any] | None:
            nonlocal published
            report = p.do("tick nohub")
            published += 1
            return report if report["waiting"] == 0 else None

        report = until(settled, "the publisher to give up on the missing hub")
        assert report["sent"] == 0 and report["dropped"] == published  # each one counted
        assert p.close() == 0
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
