"""Local agents for the lab and tests: N `reops-agent` processes on loopback, keys accepted.

    lab = start_agents(["web1", "web2"], hub="tcp://127.0.0.1:7720", hub_key=key,
                       keys_dir=settings.keys_path, workdir=tmp / "agents")
    ...
    lab.stop()          # stops exactly these processes

Each agent gets its own key pair (made here, pre-accepted in the hub's key store) and its
own state directory; logs go to <workdir>/<name>/agent.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reops_agent.keys import load_keypair

from reops.control.client import HubClient, HubNotRunning, ping_sync
from reops.control.identity import connect_from
from reops.control.settings import HubSettings
from reops.control.wire import Event
from reops.hub.keystore import KeyStore

#: how long to wait for a hub or agents to come up: a bound on a condition, not a margin
#: (a loaded 2-core box can take many seconds to start a few Python processes)
START_TIMEOUT_S = 60.0

@dataclass
class LabAgents:
    """The agent processes one `start_agents` call started."""

    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.procs)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def log(self, name: str) -> str:
        """What agent `name` has logged so far."""
        path = self.workdir / name / "agent.log"
        return path.read_text() if path.exists() else ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one agent (SIGKILL by default) and reap it."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every agent started here (SIGTERM, then SIGKILL after `timeout`)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LabAgents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def agent_command(name: str, hub: str, hub_key: str, keys_dir: Path, *,
                  allow_code: bool = False, extra: Sequence[str] = ()) -> list[str]:
    """The command line of one lab agent (the installed package, this interpreter)."""
    cmd = [sys.executable, "-m", "reops_agent", "--hub", hub, "--hub-key", hub_key,
           "--name", name, "--keys-dir", str(keys_dir)]
    if allow_code:
        cmd.append("--allow-code")
    return [*cmd, *extra]


def start_agents(names: Iterable[str], hub: str, hub_key: str, keys_dir: Path, *,
                 workdir: Path, allow_code: bool = False, accept: bool = True,
                 extra: Sequence[str] = (), sources: Mapping[str, str] | None = None,
                 ) -> LabAgents:
    """Start one agent per name against `hub`; pre-accept their keys in `keys_dir`.

    `sources`: name → the local address that agent connects from (a lab host's own
    127.0.x.y, so the hub sees it at the address its inventory gives)."""
    store = KeyStore(keys_dir)
    lab = LabAgents(workdir)
    try:
        for name in names:
            home = workdir / name
            public, _ = load_keypair(home, "agent")
            if accept:
                store.pre_accept(name, public.decode())
            log = (home / "agent.log").open("ab")
            with contextlib.closing(log):
                lab.procs[name] = subprocess.Popen(
                    agent_command(name, connect_from(sources[name], hub)
                                  if sources and name in sources else hub, hub_key, home,
                                  allow_code=allow_code, extra=extra),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                )
    except BaseException:
        lab.stop()
        raise
    return lab


# ── a hub process ─────────────────────────────────────────────────────────────────────


@dataclass
class LabHub:
    """A `reops hub` process with its own REOPS_HOME (keys, control socket, log)."""

    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    bind: str = ""
    key: str = ""

    @property
    def settings(self) -> HubSettings:
        return HubSettings(control=str(self.control_path), keys_dir=str(self.keys_dir))

    @property
    def control_path(self) -> Path:
        return self.home / "run" / "hub.sock"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def log(self) -> str:
        path = self.home / "hub.log"
        return path.read_text() if path.exists() else ""

    def start(self, timeout: float = START_TIMEOUT_S) -> LabHub:
        """Start the hub (on the same endpoint as before, after a stop) and wait for it."""
        env = {**os.environ, **self.env, "REOPS_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        if self.bind:
            env["REOPS_HUB_BIND"] = self.bind
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "hub.log").open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "reops.hub"], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            info = ping_sync(self.control_path, timeout=timeout, wait=True)
        except HubNotRunning:
            self.stop()
            raise RuntimeError(f"the hub did not start; its log:\n{self.log[-2000:]}") from None
        self.bind, self.key = info["bind"], info["key"]
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        """Stop the hub process (SIGKILL: as if it crashed); safe to call twice."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> LabHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_hub(home: Path, *, bind: str = "tcp://127.0.0.1:*", heartbeat_s: float = 5.0,
              misses: int = 3, auto_accept: bool = False, call_grace_s: float = 5.0,
              call_timeout_s: float | None = None, timeout: float = START_TIMEOUT_S) -> LabHub:
    """Start a hub process on `bind` (a free port by default) with its home in `home`."""
    env = {"REOPS_HUB_HEARTBEAT_S": str(heartbeat_s), "REOPS_HUB_MISSES": str(misses),
           "REOPS_HUB_AUTO_ACCEPT": "true" if auto_accept else "false",
           "REOPS_HUB_CALL_GRACE_S": str(call_grace_s), "REOPS_HUB_CONTROL": "",
           "REOPS_HUB_KEYS_DIR": ""}
    if call_timeout_s is not None:
        env["REOPS_HUB_CALL_TIMEOUT_S"] = str(call_timeout_s)
    return LabHub(home=home, env=env, bind=bind).start(timeout)


async def await_agents(path: Path, names: Iterable[str], timeout: float = START_TIMEOUT_S
                       ) -> None:
    """Return once every named agent is connected to the hub at `path` (events, no polling)."""
    wanted = set(names)
    client = HubClient(path)
    try:
        async with asyncio.timeout(timeout):
            events = client.pieces("subscribe", topics=["agents"])
            await anext(events)  # subscribed: no registration can slip between list and events
            listed = await client.request("agents")
            wanted -= {a["name"] for a in listed if a["state"] == "connected"}
            while wanted:
                match await anext(events):
                    case Event(data={"event": "registered" | "back" | "again", "agent": agent}):
                        wanted.discard(agent)
            await events.aclose()
    except TimeoutError:
        raise RuntimeError(f"agents not connected after {timeout:g} s: "
                           f"{', '.join(sorted(wanted))}") from None
    finally:
        await client.close()


def wait_for_agents(path: Path, names: Iterable[str], timeout: float = START_TIMEOUT_S
                    ) -> None:
    """Blocking `await_agents` (from code without a running event loop)."""
    asyncio.run(await_agents(path, names, timeout))


# ── agents that outlive the command that started them (`reops lab up --agents`) ──────


def _start_time(pid: int) -> str:
    """The kernel's start time of `pid` (tells a reused pid from ours), or "" if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def save_agents(lab: LabAgents, path: Path) -> None:
    """Record the lab's agent processes so a later command can stop exactly them."""
    import json

    records = {name: {"pid": p.pid, "start": _start_time(p.pid)} for name, p in lab.procs.items()}
    path.write_text(json.dumps(records, indent=1))


def stop_saved_agents(path: Path, timeout: float = 5.0) -> int:
    """Stop the agents recorded in `path` (only if still the same processes); how many."""
    import json

    if not path.exists():
        return 0
    records = json.loads(path.read_text())
    stopped = []
    for rec in records.values():
        if rec["start"] and _start_time(rec["pid"]) == rec["start"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["pid"], signal.SIGTERM)
                stopped.append(rec)
    for rec in stopped:  # wait on each through a pidfd: no polling
        with contextlib.suppress(ProcessLookupError, OSError):
            fd = os.pidfd_open(rec["pid"])
            try:
                import select

                if not select.select([fd], [], [], timeout)[0]:
                    os.kill(rec["pid"], signal.SIGKILL)
            finally:
                os.close(fd)
    path.unlink()
    return len(stopped)
