"""Typed seams: transports dispatch on an Op's kind (never its name), shipped code is a
typed field, and `available()` is awaitable on every executor."""

from __future__ import annotations

import inspect
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reops import Host, Hosts, run
from reops.core.settings import Settings
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
