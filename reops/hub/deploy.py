"""`reops agents deploy`: install reops-agent on hosts over SSH, key pre-accepted, started.

Per host, in order (the first failing step is that host's Result):
upload the wheels → write the agent's key pair (made here; the secret travels on stdin,
never in a command line) and the hub's public key → venv + pip install → start it: a
systemd unit when installing with sudo on a systemd host, else a detached process → wait
(bounded) until that agent registers with the hub: "ok" means it is being served.
Each host's files live under ~/.reops-agent/<name> (or /opt/reops-agent with sudo).

reops-agent is always installed from the uploaded wheel, by path, with --no-index: a
package index is never asked for it (a same-named package there must never win). With
--wheels everything comes from those wheels; without, only its dependencies (pyzmq,
msgspec) come from the host's own index.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import reops_agent
from reops_agent.keys import write_keypair

from reops.control.client import HubClient, HubNotRunning
from reops.control.settings import HubSettings
from reops.control.wire import AnyPiece, Event
from reops.core.model import Host, Hosts, Outcome, Result
from reops.core.runtime import get_runtime
from reops.core.settings import Settings, home, load_settings
from reops.hub.keystore import KeyStore
from reops.ops.base import Op
from reops.transports.ssh.executor import SshExecutor

UNIT = """[Unit]
Description=reops agent
After=network-online.target

[Service]
ExecStart={command}
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


#: seconds `pip wheel` may take to build reops-agent ($REOPS_AGENT_BUILD_TIMEOUT overrides)
BUILD_TIMEOUT_S = 300.0
#: how many times this process ran `pip wheel` for reops-agent (the cache's hit rate, for tests)
builds = 0
_inflight: dict[str, concurrent.futures.Future[Path]] = {}
_inflight_lock = threading.Lock()


class AgentBuildError(RuntimeError):
    """The reops-agent wheel could not be built; one line saying why and what to do."""


def _agent_source() -> Path:
    src = Path(reops_agent.__file__).resolve().parent.parent
    if not (src / "pyproject.toml").exists():
        raise AgentBuildError(f"no reops-agent source tree at {src}: pass --wheels "
                              "(wheels=) with a reops_agent wheel")
    return src


def _source_hash(src: Path) -> str:
    """The agent source's content hash: what a cached wheel was built from."""
    digest = hashlib.sha256()
    files = [src / "pyproject.toml", *sorted((src / "reops_agent").rglob("*.py"))]
    files += [p for p in (src / "README.md",) if p.exists()]
    for f in files:
        digest.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def _default_build_timeout() -> float:
    """The `pip wheel` deadline: $REOPS_AGENT_BUILD_TIMEOUT, else BUILD_TIMEOUT_S."""
    raw = os.environ.get("REOPS_AGENT_BUILD_TIMEOUT", "")
    try:
        value = float(raw) if raw else BUILD_TIMEOUT_S
    except ValueError:
        raise AgentBuildError(f"REOPS_AGENT_BUILD_TIMEOUT={raw!r} is no number of seconds"
                              ) from None
    if value <= 0:
        raise AgentBuildError(f"REOPS_AGENT_BUILD_TIMEOUT={raw!r} must be > 0")
    return value


def _pip_wheel(src: Path, out: Path, timeout: float) -> None:
    """`pip wheel` in its own process group, killed whole when it overruns `timeout`."""
    global builds
    builds += 1
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # pip and the build backend it started
        proc.communicate()
        raise AgentBuildError(
            f"building the reops-agent wheel (pip wheel {src}) did not finish within "
            f"{timeout:g} s; pass --wheels (wheels=) with a reops_agent wheel, or raise "
            "REOPS_AGENT_BUILD_TIMEOUT") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise AgentBuildError(f"building the reops-agent wheel failed (pip wheel {src}, exit "
                              f"{proc.returncode}): {lines[-1] if lines else 'no output'}; "
                              "pass --wheels (wheels=) with a reops_agent wheel")


def _build_cached(src: Path, key: str, timeout: float) -> Path:
    """The cached wheel for `key`, built first if missing (one process at a time: flock)."""
    cache = home() / "agent-wheels"
    cache.mkdir(parents=True, exist_ok=True)
    done = cache / key
    with open(cache / f"{key}.lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:  # another process building the same source: wait for it, bounded
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AgentBuildError(
                        f"another process has been building the reops-agent wheel in {cache} "
                        f"for over {timeout:g} s; pass --wheels (wheels=) with a reops_agent "
                        "wheel") from None
                time.sleep(0.1)
        found = sorted(done.glob("reops_agent-*.whl")) if done.is_dir() else []
        if found:
            return found[0]
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=cache))
        try:
            _pip_wheel(src, tmp, timeout)
            built = sorted(tmp.glob("reops_agent-*.whl"))
            if not built:
                raise AgentBuildError(f"pip wheel {src} made no reops_agent wheel; pass "
                                      "--wheels (wheels=) with one")
            os.replace(tmp, done)  # whole or not at all: a half-built wheel is never found
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return done / built[0].name


def agent_wheel(timeout: float | None = None) -> Path:
    """The reops-agent wheel of the source tree this process imports: built once per source
    content (cached under <reops home>/agent-wheels), by one `pip wheel` at a time however
    many deploys ask at once (the others wait for it), within `timeout` s."""
    src = _agent_source()
    key = _source_hash(src)
    limit = _default_build_timeout() if timeout is None else timeout
    with _inflight_lock:
        pending = _inflight.get(key)
        mine = pending is None
        if pending is None:
            pending = _inflight[key] = concurrent.futures.Future()
    if not mine:
        return pending.result()  # the build in flight ends within its own timeout
    try:
        pending.set_result(_build_cached(src, key, limit))
    except BaseException as e:
        pending.set_exception(e)
    finally:
        with _inflight_lock:
            del _inflight[key]  # done: the next deploy reads the disk cache (or retries)
    return pending.result()


def systemd_escape(line: str) -> str:
    """`line` for a unit file: % (specifiers) and $ (variables) are expanded even in quotes."""
    return line.replace("%", "%%").replace("$", "$$")


def agent_requirements() -> list[str]:
    """reops-agent's own dependencies (pip requirement strings), from its metadata."""
    try:
        reqs = importlib.metadata.requires("reops-agent") or []
    except importlib.metadata.PackageNotFoundError:
        reqs = ["pyzmq>=25", "msgspec>=0.18"]
    return [r for r in reqs if "extra ==" not in r]


def _base(host: Host, sudo: bool) -> str:
    return "/opt/reops-agent" if sudo else f".reops-agent/{host.name}"


def _steps(host: Host, *, wheels: list[Path], endpoint: str, hub_key: str, public: str,
           secret: str, offline: bool, allow_code: bool, sudo: bool,
           timeout: float) -> list[Op]:
    base = _base(host, sudo)
    stage = f".reops-agent-deploy/{host.name}"
    q = shlex.quote
    venv, keys = f"{base}/venv", f"{base}/keys"
    pip = f"{q(venv)}/bin/pip install -q --upgrade"
    uploaded = " ".join(q(f"{stage}/{w.name}") for w in wheels)
    if offline:  # everything from the uploaded wheels, each named by path
        install = f"{pip} --no-index --find-links {q(stage)} {uploaded}"
    else:  # dependencies by name from the host's index; the agent only from its wheel
        deps = " ".join(q(r) for r in agent_requirements())
        install = f"{pip} {deps} && {pip} --no-index --no-deps {uploaded}"
    agent = " ".join(q(x) for x in [f"{venv}/bin/reops-agent", "--hub", endpoint, "--hub-key",
                                    f"{keys}/hub.key", "--name", host.name, "--keys-dir", keys,
                                    *(["--allow-code"] if allow_code else [])])
    ops = [Op(name="deploy:mkdir", command=f"mkdir -p {q(stage)} && chmod 700 {q(stage)}",
              timeout=timeout)]
    ops += [Op(name="deploy:upload", kind="upload", local=str(w), remote=f"{stage}/{w.name}",
               timeout=timeout) for w in wheels]
    ops.append(Op(name="deploy:key", sudo=sudo, stdin=secret, timeout=timeout, command=(
        f"umask 077 && mkdir -p {q(keys)} && cat > {q(keys)}/agent.key_secret && "
        f"printf '%s\\n' {q(public)} > {q(keys)}/agent.key && "
        f"printf '%s\\n' {q(hub_key)} > {q(keys)}/hub.key")))
    ops.append(Op(name="deploy:install", sudo=sudo, timeout=timeout,
                  command=f"python3 -m venv {q(venv)} && {install}"))
    if sudo:
        unit = UNIT.format(command=systemd_escape(agent))
        ops.append(Op(name="deploy:start", sudo=True, stdin=unit, timeout=timeout, command=(
            "if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then "
            "cat > /etc/systemd/system/reops-agent.service && systemctl daemon-reload && "
            "systemctl enable -q reops-agent && systemctl restart reops-agent; else "
            f"cat >/dev/null; {_detached(base, agent)}; fi")))
    else:
        ops.append(Op(name="deploy:start", timeout=timeout, command=_detached(base, agent)))
    return ops


def _detached(base: str, agent: str) -> str:
    """Replace a running agent (by its pid file) with a new detached one."""
    q = shlex.quote
    pid = f"{base}/agent.pid"
    return (f"if [ -f {q(pid)} ]; then kill $(cat {q(pid)}) 2>/dev/null; fi; "
            f"setsid nohup {agent} > {q(base)}/agent.log 2>&1 < /dev/null & "
            f"echo $! > {q(pid)}")


class Registrations:
    """Agents registering with the running hub, seen from before any agent is started."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.seen: set[str] = set()
        self.changed = asyncio.Event()
        self.running = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe (if a hub runs): registrations from now on are counted."""
        client = HubClient(self.control)
        events = client.pieces("subscribe", topics=["agents"])
        try:
            await asyncio.wait_for(anext(events), 5.0)
        except (HubNotRunning, TimeoutError, OSError):
            await events.aclose()
            await client.close()
            return
        self.running = True
        self._task = asyncio.create_task(self._follow(client, events))

    async def _follow(self, client: Any, events: AsyncIterator[AnyPiece]) -> None:
        try:
            async for event in events:
                match event:
                    case Event(data={"event": "registered" | "back" | "again"} as data):
                        self.seen.add(str(data.get("agent")))
                        self.changed.set()
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def wait(self, name: str, timeout: float) -> bool:
        """Whether agent `name` registered within `timeout` s."""
        try:
            async with asyncio.timeout(timeout):
                while name not in self.seen:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def _deploy_host(host: Host, ops: list[Op], settings: Settings,
                       bound: asyncio.Semaphore, registrations: Registrations,
                       register_timeout: float) -> Result:
    ssh = get_runtime().resource("ssh", SshExecutor)
    started, t0 = time.time(), time.monotonic()
    async with bound:
        result: Result | None = None
        for op in ops:
            result = await ssh.run(host, op, settings)
            if not result.ok:
                return result
    assert result is not None
    log = f"{_base(host, ops[-1].sudo)}/agent.log"
    if not registrations.running:
        err = (f"{host.name}: agent installed and started, but no reops hub is running at "
               f"{registrations.control} to register with; start it with `reops hub`")
    elif not await registrations.wait(host.name, register_timeout):
        err = (f"{host.name}: agent installed and started, but it did not register with the "
               f"hub within {register_timeout:g} s; see {log} on the host (hub endpoint "
               "reachable from there? its firewall?)")
    else:
        return Result(host=host.name, op="deploy", status="ok", code=0, out=result.out,
                      started_at=started, duration_s=time.monotonic() - t0, transport="ssh",
                      changed=True)
    return Result(host=host.name, op="deploy", status="failed", code=1, out=result.out,
                  err=err, started_at=started, duration_s=time.monotonic() - t0,
                  transport="ssh", changed=True)


def deploy(hosts: Hosts, *, endpoint: str, settings: HubSettings, wheels: Path | None = None,
           allow_code: bool = False, sudo: bool = False, timeout: float = 600.0,
           ssh_settings: Settings | None = None, register_timeout: float = 60.0,
           build_timeout: float | None = None) -> Outcome:
    """Deploy agents to `hosts` (connecting to `endpoint`); one Result per host, "ok" once
    that host's agent has registered with the hub (within `register_timeout` s). Without a
    reops_agent wheel in `wheels`, the cached build of its source is used (`agent_wheel`:
    `build_timeout` s at most, default $REOPS_AGENT_BUILD_TIMEOUT or BUILD_TIMEOUT_S)."""
    store = KeyStore(settings.keys_path)
    hub_key = store.hub_public_key()
    ssh = ssh_settings or load_settings()
    with tempfile.TemporaryDirectory(prefix="reops-deploy-") as tmp:
        files = sorted(wheels.glob("*.whl")) if wheels else []
        if not any(w.name.startswith("reops_agent-") for w in files):
            try:
                files.append(agent_wheel(build_timeout))
            except AgentBuildError as e:  # every host fails saying so: nothing to install
                return Outcome.of([Result(host=h.name, op="deploy", status="failed", code=1,
                                          err=f"{h.name}: {e}", started_at=time.time())
                                   for h in hosts], hosts.names)
        plans = {}
        for host in hosts:
            public, secret = write_keypair(Path(tmp) / "keys" / host.name, "agent")
            plans[host.name] = _steps(host, wheels=files, endpoint=endpoint, hub_key=hub_key,
                                      public=public.decode(), secret=secret.decode(),
                                      offline=wheels is not None, allow_code=allow_code,
                                      sudo=sudo, timeout=timeout)
            store.pre_accept(host.name, public.decode())

        async def all_hosts() -> list[Result]:
            bound = asyncio.Semaphore(ssh.forks)
            registrations = Registrations(settings.control_path)
            await registrations.start()
            try:
                return list(await asyncio.gather(*(
                    _deploy_host(h, plans[h.name], ssh, bound, registrations,
                                 register_timeout) for h in hosts)))
            finally:
                await registrations.close()

        results = get_runtime().call(all_hosts())
    return Outcome.of(results, hosts.names)
