"""Every example in README.md and docs/*.md runs as written, against a real lab.

The convention the docs are written to:

- ```sh blocks run with `bash -e`; ```python blocks run in order in one Python session per
  doc file (a later block sees an earlier block's `hosts` and `out`, as a reader would);
- all of a doc's blocks run in one temp dir, with `reops` on PATH, `$REOPS_INVENTORY` naming
  a running lab's inventory (hosts web1.., db1.., cache1..) and `lab/inventory.toml` there
  too (the lab's files, not its state: `reops lab down` there cannot stop it), `flows/`
  holding the repository's flows, and a private $HOME and $REOPS_HOME;
- a block right after `<!-- file: NAME -->` is written to NAME instead of run;
- a block right after `<!-- skip: reason -->` is not run (the reason is required);
- ```text, ```console, ```toml, ```json … blocks without a file marker are output, not run.

One pytest item per block, id `README.md:LINE`; a failure shows the block's output. Each
block has a time bound; on timeout its process group is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from reops.lab.fleet import Lab, LabInfo
from tests.conftest import up_on_free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_TIMEOUT = 60.0
MAX_SHOWN = 6000  # characters of a failed block's output shown (its end)
DOC_LAB_HOSTS = 12  # web1-6, db1-3, cache1-3
DOC_LAB_ADDRESS = "127.0.253.1"  # a block of its own (see conftest's address plan)
SHELLS = ("sh", "bash", "shell")
PYTHONS = ("python", "py", "python3")
_MARKER = re.compile(r"^<!--\s*(file|skip)\s*:(.*?)-->\s*$")
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # the line of the opening fence
    lang: str
    code: str
    file: str | None = None
    skip: str | None = None

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in SHELLS + PYTHONS


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file that are run, written or skipped."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            text = lines[i]
            body.append(text[len(indent):] if text.startswith(indent) else text.lstrip())
            i += 1
        i += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = _MARKER.match(lines[prev].strip()) if prev >= 0 else None
        code = "\n".join(body) + "\n"
        if marker and marker.group(1) == "file":
            out.append(Block(doc, start + 1, lang, code, file=marker.group(2).strip()))
        elif marker and marker.group(1) == "skip":
            out.append(Block(doc, start + 1, lang, code, skip=marker.group(2).strip()))
        elif lang in SHELLS + PYTHONS:
            out.append(Block(doc, start + 1, lang, code))
    return out


ALL = [b for doc in DOCS for b in blocks(doc)]


# ── the lab and one session per doc ─────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def doc_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    """A lab of its own, so what the docs do (files, services) cannot disturb other tests;
    each host with its own /tmp and home (as root), so a doc's files do not outlive the run
    and the next run starts from the same hosts."""
    fleet: Lab = up_on_free_port(tmp_path_factory.mktemp("doclab"), DOC_LAB_HOSTS,
                                 first_address=DOC_LAB_ADDRESS, private_fs=True)
    try:
        yield fleet.info
    finally:
        fleet.down()


_PY_WORKER = r"""
import json, os, sys, traceback
ns = {"__name__": "__main__", "__builtins__": __builtins__}
results = os.fdopen(int(sys.argv[1]), "w")
for request in sys.stdin:
    block = json.loads(request)
    ok = True
    try:
        exec(compile("\n" * block["line"] + block["code"], block["doc"], "exec"), ns)
    except SystemExit as e:
        ok = e.code in (None, 0)
        if not ok:
            print(f"SystemExit: {e.code}", file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        ok = False
    sys.stdout.flush()
    sys.stderr.flush()
    results.write(json.dumps({"ok": ok}) + "\n")
    results.flush()
"""


@dataclass
class DocSession:
    """A doc's temp dir, environment and Python session."""

    cwd: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[str] | None = None
    results: IO[str] | None = None
    dead: str | None = None  # why the Python session is gone
    offsets: dict[str, int] = field(default_factory=dict)

    def python(self, block: Block) -> tuple[bool, str]:
        if self.dead:
            return False, f"the doc's Python session is gone: {self.dead}"
        if self.proc is None:
            r, w = os.pipe()
            out = open(self.log, "ab")  # noqa: SIM115 (the worker owns it until close())
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _PY_WORKER, str(w)], stdin=subprocess.PIPE,
                stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env, text=True,
                pass_fds=(w,), start_new_session=True)
            out.close()
            os.close(w)
            self.results = os.fdopen(r, "r")
        assert self.proc.stdin is not None and self.results is not None
        start = self.log.stat().st_size
        self.proc.stdin.write(json.dumps({"code": block.code, "line": block.line,
                                          "doc": str(block.doc.name)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.results], [], [], BLOCK_TIMEOUT)
        reply = self.results.readline() if ready else ""
        output = self.log.read_bytes()[start:].decode("utf-8", "replace")
        if not reply:
            self.dead = f"{block.id} timed out or crashed"
            self.close()
            return False, f"{output}\n[no result within {BLOCK_TIMEOUT:g} s: killed]"
        return bool(json.loads(reply)["ok"]), output

    def shell(self, block: Block) -> tuple[bool, str]:
        script = self.cwd / f".block_{block.line}.sh"
        script.write_text(block.code)
        p = subprocess.Popen(["bash", "-e", str(script)], cwd=self.cwd, env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            output, _ = p.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            _killpg(p.pid)
            output, _ = p.communicate()
            return False, f"{output}\n[no exit within {BLOCK_TIMEOUT:g} s: killed]"
        finally:
            _killpg(p.pid)  # anything it left behind in the background
        return p.returncode == 0, output + f"\n[exit {p.returncode}]"

    def close(self) -> None:
        if self.proc is not None:
            _killpg(self.proc.pid)
            self.proc.wait()
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc = None
        if self.results is not None:
            self.results.close()
            self.results = None


def _reap(base: Path, *roots: Path) -> None:
    """Kill what the docs started and left running in their own sessions (a hub, a VM its
    embedded hypervisor booted, a lab's sshd): every process whose command line names a
    path under the docs' temp dir or a private hypervisor root of theirs (`_embed_roots`),
    which only this test's children can."""
    mine = [str(p) for p in (base, *roots)]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmdline for m in mine):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)


def _embed_roots(reops_home: Path) -> list[Path]:
    """The qemu:///embed roots a doc's config.toml names (docs/guests.md keeps its own under
    /tmp, short for QEMU's sockets): where a failed block's guests run and leave files."""
    import tomllib
    from urllib.parse import parse_qs, urlsplit

    try:
        config = tomllib.loads((reops_home / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []
    uris = [h.get("uri", "") for h in config.get("hypervisors", {}).values()
            if isinstance(h, dict)]
    return [Path(root) for uri in uris if str(uri).startswith("qemu:///embed")
            for root in parse_qs(urlsplit(str(uri)).query).get("root", [])]


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _sandbox(lab: LabInfo, cwd: Path) -> dict[str, str]:
    """The doc's directory: lab/ (copies of the lab's inventory, key and known_hosts, not its
    state: nothing a doc does there reaches the lab), flows/, .venv; and its environment."""
    (cwd / "lab").mkdir(parents=True)
    for f in lab.root.iterdir():
        if f.is_file() and f.name != "state.json":
            shutil.copy2(f, cwd / "lab" / f.name)
    (cwd / "flows").mkdir()
    for f in (ROOT / "flows").iterdir():
        if f.name != "__pycache__":
            (cwd / "flows" / f.name).symlink_to(f)
    (cwd / ".venv").symlink_to(ROOT / ".venv")
    home = cwd.parent / f"{cwd.name}.home"
    (home / ".reops").mkdir(parents=True, mode=0o700)
    # a hub a doc starts must not take another's port: its agents' port and its bus's two
    # (by default the agents' + 1 and + 2, which another process may hold) all free ones
    socks = [socket.socket() for _ in range(3)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    hub_port, bus_in, bus_out = (sock.getsockname()[1] for sock in socks)
    for sock in socks:
        sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REOPS_")}
    env.update(
        HOME=str(home), REOPS_HOME=str(home / ".reops"), REOPS_INVENTORY=str(lab.inventory),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1", COLUMNS="100", NO_COLOR="1",
        REOPS_HUB_BIND=f"tcp://127.0.0.1:{hub_port}",
        REOPS_HUB_BUS_IN=f"tcp://127.0.0.1:{bus_in}",
        REOPS_HUB_BUS_OUT=f"tcp://127.0.0.1:{bus_out}",
    )
    return env


@pytest.fixture(scope="module")
def sessions(doc_lab: LabInfo, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[Path, DocSession]]:
    made: dict[Path, DocSession] = {}
    base = tmp_path_factory.mktemp("docs")

    def get(doc: Path) -> DocSession:
        if doc not in made:
            cwd = base / doc.stem
            made[doc] = DocSession(cwd, _sandbox(doc_lab, cwd), base / f"{doc.stem}.log")
        return made[doc]

    class Sessions(dict[Path, DocSession]):
        def __missing__(self, doc: Path) -> DocSession:
            return get(doc)

    roots: list[Path] = []
    try:
        yield Sessions()
    finally:
        for s in made.values():
            roots += _embed_roots(Path(s.env["REOPS_HOME"]))
            s.close()
            for state in s.cwd.rglob("state.json"):  # a doc that started a lab of its own
                subprocess.run([sys.executable, "-m", "reops", "lab", "down", "--dir",
                                str(state.parent)], env=s.env, cwd=s.cwd, capture_output=True,
                               timeout=60)
            hub = Path(s.env["REOPS_HOME"])
            if (hub / "run").exists():  # a doc that started a hub: stop it
                subprocess.run([sys.executable, "-m", "reops", "hub", "--stop"], env=s.env,
                               cwd=s.cwd, capture_output=True, timeout=30)
        _reap(base, *roots)
        for root in roots:  # what a doc that failed midway left (its own cleanup did not run)
            shutil.rmtree(root, ignore_errors=True)


# ── the items ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_doc_block(block: Block, sessions: dict[Path, DocSession]) -> None:
    if block.skip is not None:
        if not block.skip:
            pytest.fail(f"{block.id}: <!-- skip: --> needs a reason (what cannot run here)")
        pytest.skip(f"{block.id}: {block.skip}")
    session = sessions[block.doc]
    if block.file is not None:
        if not block.file or Path(block.file).is_absolute() or ".." in Path(block.file).parts:
            pytest.fail(f"{block.id}: <!-- file: NAME --> needs a relative name, got "
                        f"{block.file!r}")
        target = session.cwd / block.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)
        return
    if block.lang in PYTHONS:
        ok, output = session.python(block)
    else:
        ok, output = session.shell(block)
    if not ok:
        if len(output) > MAX_SHOWN:
            output = f"[… {len(output) - MAX_SHOWN} characters cut …]\n" + output[-MAX_SHOWN:]
        pytest.fail(f"{block.id} failed:\n{block.code}\n--- output ---\n{output}",
                    pytrace=False)


def test_the_extractor_follows_the_convention(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("\n".join([
        "# t", "```sh", "echo run", "```", "<!-- file: a/b.toml -->", "```toml", "k = 1", "```",
        "<!-- skip: needs a cloud -->", "", "```python", "boom()", "```", "```text",
        "out", "```", "<!-- skip: -->", "```sh", "x", "```", "```python", "print(1)", "```",
    ]))
    got = [(b.line, b.lang, b.file, b.skip, b.code) for b in blocks(doc)]
    assert got == [
        (2, "sh", None, None, "echo run\n"),
        (6, "toml", "a/b.toml", None, "k = 1\n"),
        (11, "python", None, "needs a cloud", "boom()\n"),
        (18, "sh", None, "", "x\n"),
        (21, "python", None, None, "print(1)\n"),
    ]


def test_docs_exist_and_have_blocks() -> None:
    assert DOCS[0].name == "README.md" and len(DOCS) > 1
    assert sum(b.runs for b in ALL) > 10
    assert shutil.which("bash")
