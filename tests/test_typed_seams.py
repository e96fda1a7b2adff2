"""Typed seams: transports dispatch on an Op's kind (never its name), shipped code is a
typed field, `available()` is awaitable on every executor, `from reops import run` is
typed, and the hub's control socket speaks typed messages and refuses malformed ones."""

from __future__ import annotations

import inspect
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from reops import Host, Hosts, run
from reops.control.client import HubClient, HubError
from reops.control.wire import (
    AnyReply,
    Done,
    Error,
    Invoke,
    ResultItem,
    decode_reply,
    encoder,
)
from reops.core.settings import Settings
from reops.lab.agents import start_hub
from reops.lab.fleet import LabInfo
from reops.ops import files
from reops.ops.base import CodeRef, Op
from reops.streams.source import source
from reops.transports.agent import AgentExecutor, AutoExecutor, _params, ship
from reops.transports.base import DryRun
from reops.transports.ssh.executor import SshExecutor


def _add(a: int, b: int) -> int:
    return a + b


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the lab's unprivileged login user may write to."""
    d = Path(tempfile.mkdtemp(prefix="reops-seams-", dir="/tmp"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_sync_op_is_recognised_by_its_kind_whatever_its_name(
        lab: LabInfo, scratch: Path) -> None:
    """A renamed sync op still syncs over SSH: the executor looks at `kind`, not `name`."""
    site = scratch / "site"
    (site / "sub").mkdir(parents=True)
    (site / "sub" / "page").write_text("hi\n")
    site.chmod(0o755)
    dest = scratch / "www"
    op = files.sync(str(site), str(dest)).with_(name="mirror")
    assert op.kind == "sync"
    web1 = Hosts(h for h in lab.as_hosts() if h.name == "web1")
    out = run(source(web1, op, via="ssh", settings=Settings(connect_timeout=10.0)))
    [r] = out.results
    assert (r.status, r.op, r.transport) == ("ok", "mirror", "ssh"), r.err
    assert (dest / "sub" / "page").read_text() == "hi\n"
    assert {c.path for c in r.data} >= {"sub/page"}


def test_shipped_code_is_a_typed_field_not_a_kwarg() -> None:
    """A shipped function is a CodeRef on a kind "code" Op; the agent transport sends it
    as the call's code and passes the function's own kwargs through untouched."""
    code = ship(_add)
    assert isinstance(code, CodeRef) and code.function == "_add"
    assert "def _add(a, b)" in code.source
    op = Op(name="call:_add", kind="code", function="_add", args=(1,), kwargs={"b": 2},
            code=code)
    params = _params(Host(name="a1", address="127.0.0.1"), op, Settings(), stream=False)
    assert (params["fn"], params["args"], params["kwargs"]) == ("_add", [1], {"b": 2})
    assert params["code"] == {"source": code.source, "function": "_add", "module": "shipped"}


def test_available_is_awaitable_on_every_executor() -> None:
    """Asking whether a host is reachable may need the hub: it must never block the loop."""
    for executor in (DryRun, SshExecutor, AgentExecutor, AutoExecutor):
        assert inspect.iscoroutinefunction(executor.available), executor.__name__


def test_the_type_checking_block_lists_every_lazy_export() -> None:
    """Every lazy export is also imported under TYPE_CHECKING, from the same module."""
    import ast

    import reops

    tree = ast.parse(Path(reops.__file__).read_text())
    [block] = [n for n in tree.body if isinstance(n, ast.If)
               and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"]
    typed = {(a.asname or a.name): node.module for node in block.body
             if isinstance(node, ast.ImportFrom) for a in node.names}
    assert typed == reops._EXPORTS


def test_mypy_sees_the_real_signatures_of_the_exports(tmp_path: Path) -> None:
    """`from reops import run` is typed: a misuse is reported (it was Any before)."""
    from mypy import api

    misuse = tmp_path / "misuse.py"
    misuse.write_text("import reops\nfrom reops import Hosts, run\n\n"
                      "reops.run(1, 2, 3)\nrun(Hosts(), 4)\n"
                      "x: int = reops.Settings()\n")
    out, err, status = api.run([
        "--no-incremental", "--cache-dir", str(tmp_path / "cache"), "--config-file", "",
        "--follow-imports", "silent", "--ignore-missing-imports", str(misuse)])
    assert status == 1, out + err
    lines = {int(line.split(":")[1]) for line in out.splitlines()
             if line.startswith(str(misuse)) and ": error:" in line}
    assert lines == {4, 5, 6}, out


# ── the hub's control protocol: typed messages, malformed ones refused ───────────────

#: the longest a reply may take (a bound on a wait, never a pass/fail margin)
REPLY_DEADLINE_MS = 15_000


def _ask(sock: zmq.Socket[bytes], frame: bytes) -> AnyReply:
    """Send one raw frame on the control socket and decode the hub's (typed) reply."""
    sock.send(frame)
    assert sock.poll(REPLY_DEADLINE_MS), "the hub did not answer"
    return decode_reply(sock.recv())


def test_the_hub_refuses_malformed_control_messages_and_stays_up(tmp_path: Path) -> None:
    """Garbage, an unknown tag, a wrong field type and the old untagged dict each get an
    Error reply (to the id they claim, if any); the hub then still answers a ping."""
    with start_hub(tmp_path / "home") as hub:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"ipc://{hub.control_path}")
            for frame, rid, says in (
                (b"\xc1 not msgpack", 0, "malformed control message"),
                (encoder.encode({"t": "launch", "id": 7}), 7, "$.t"),
                (encoder.encode({"t": "call", "id": 8, "hosts": "a1"}), 8, "$.hosts"),
                (encoder.encode({"id": 9, "method": "ping", "params": {}}), 9, "t"),
                (encoder.encode({"t": "invoke", "id": 10, "method": "call",
                                 "params": {"hosts": 3}}), 10, "bad call request"),
            ):
                reply = _ask(sock, frame)
                assert isinstance(reply, Error) and reply.id == rid, reply
                assert says in reply.message, reply.message
            pong = _ask(sock, encoder.encode(Invoke(id=11, method="ping")))
            assert isinstance(pong, Done) and pong.id == 11 and pong.value["pid"] > 0
            assert hub.proc is not None and hub.proc.poll() is None
        finally:
            sock.close(0)
            ctx.term()


async def test_call_items_are_typed_structs(tmp_path: Path) -> None:
    """A call's result arrives as a ResultItem; a bad call is refused before it is sent."""
    with start_hub(tmp_path / "home") as hub:
        client = HubClient(hub.control_path)
        try:
            got = [p async for p in client.pieces("call", hosts=["ghost"], fn="ping")]
            with pytest.raises(HubError, match="bad call request"):
                await client.request("call", hosts="ghost", fn="ping")
            assert (await client.request("ping"))["pid"] > 0
        finally:
            await client.close()
    [item] = got
    assert isinstance(item, ResultItem)
    assert (item.host, item.status, item.code) == ("ghost", "unreachable", -1)
