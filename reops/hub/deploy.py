"""`reops agents deploy`: install reops-agent on hosts over SSH, key pre-accepted, started.

Per host, in order (the first failing step is that host's Result):
upload the wheels → write the agent's key pair (made here; the secret travels on stdin,
never in a command line) → venv + pip install (offline with --wheels) → start it: a
systemd unit when installing with sudo on a systemd host, else a detached process.
Each host's files live under ~/.reops-agent/<name> (or /opt/reops-agent with sudo).
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import reops_agent

from reops.config import Settings, load_settings
from reops.hub.keystore import KeyStore
from reops.hub.settings import HubSettings
from reops.model import Host, Hosts, Outcome, Result
from reops.ops.base import Op

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


def agent_wheel(out: Path) -> Path:
    """Build the reops-agent wheel from its source tree (the one this process imports)."""
    src = Path(reops_agent.__file__).resolve().parent.parent
    if not (src / "pyproject.toml").exists():
        raise ValueError(f"no reops-agent source tree at {src}: pass --wheels with its wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    return next(out.glob("reops_agent-*.whl"))


def _base(host: Host, sudo: bool) -> str:
    return "/opt/reops-agent" if sudo else f".reops-agent/{host.name}"


def _steps(host: Host, *, wheels: list[Path], endpoint: str, hub_key: str, public: str,
           secret: str, offline: bool, allow_code: bool, sudo: bool,
           timeout: float) -> list[Op]:
    base = _base(host, sudo)
    stage = f".reops-agent-deploy/{host.name}"
    q = shlex.quote
    venv, keys = f"{base}/venv", f"{base}/keys"
    find = f"--no-index --find-links {q(stage)}" if offline else f"--find-links {q(stage)}"
    agent = " ".join(q(x) for x in [f"{venv}/bin/reops-agent", "--hub", endpoint, "--hub-key",
                                    hub_key, "--name", host.name, "--keys-dir", keys,
                                    *(["--allow-code"] if allow_code else [])])
    ops = [Op(name="deploy:mkdir", command=f"mkdir -p {q(stage)} && chmod 700 {q(stage)}",
              timeout=timeout)]
    ops += [Op(name="deploy:upload", kind="upload", local=str(w), remote=f"{stage}/{w.name}",
               timeout=timeout) for w in wheels]
    ops.append(Op(name="deploy:key", sudo=sudo, stdin=secret, timeout=timeout, command=(
        f"umask 077 && mkdir -p {q(keys)} && cat > {q(keys)}/agent.key_secret && "
        f"printf '%s\\n' {q(public)} > {q(keys)}/agent.key")))
    ops.append(Op(name="deploy:install", sudo=sudo, timeout=timeout, command=(
        f"python3 -m venv {q(venv)} && {q(venv)}/bin/pip install -q --upgrade {find} "
        f"reops-agent")))
    if sudo:
        unit = UNIT.format(command=agent)
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


async def _deploy_host(host: Host, ops: list[Op], settings: Settings,
                       bound: asyncio.Semaphore) -> Result:
    from reops.runtime import get_runtime
    from reops.sources.ssh import SshExecutor

    ssh = get_runtime().resource("ssh", SshExecutor)
    started, t0 = time.time(), time.monotonic()
    async with bound:
        result: Result | None = None
        for op in ops:
            result = await ssh.run(host, op, settings)
            if not result.ok:
                return result
    assert result is not None
    return Result(host=host.name, op="deploy", status="ok", code=0, out=result.out,
                  started_at=started, duration_s=time.monotonic() - t0, transport="ssh",
                  changed=True)


def deploy(hosts: Hosts, *, endpoint: str, settings: HubSettings, wheels: Path | None = None,
           allow_code: bool = False, sudo: bool = False, timeout: float = 600.0,
           ssh_settings: Settings | None = None) -> Outcome:
    """Deploy agents to `hosts` (connecting to `endpoint`); one Result per host."""
    from reops_agent.keys import write_keypair

    from reops.runtime import get_runtime

    store = KeyStore(settings.keys_path)
    hub_key = store.hub_public_key()
    ssh = ssh_settings or load_settings()
    with tempfile.TemporaryDirectory(prefix="reops-deploy-") as tmp:
        files = sorted(wheels.glob("*.whl")) if wheels else []
        if not any(w.name.startswith("reops_agent-") for w in files):
            files.append(agent_wheel(Path(tmp)))
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
            return list(await asyncio.gather(*(
                _deploy_host(h, plans[h.name], ssh, bound) for h in hosts)))

        results = get_runtime().call(all_hosts())
    return Outcome.of(results, hosts.names)
