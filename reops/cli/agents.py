"""`reops hub`, `reops keys`, `reops agents`: the controller, agent keys and agents.

Exit codes: 0 ok, 1 some hosts failed (deploy), 2 usage or input error (including "no hub
running", said in one line with how to start one).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from reops.cli.hub_status import status as hub_status
from reops.cli.main import UserError

# Function-level imports below are on purpose: `reops --help` and `reops CMD --help` load
# none of a command's machinery (see LAZY in reops.cli.main).

HUB_HELP = """The controller daemon: agents connect to it (CurveZMQ), the CLI, REPL and flows
reach it over a local control socket.

\b
  reops hub                         # foreground; prints its public key
  reops hub --background            # detached; log next to the control socket
  reops hub --print-key             # the key agents pin: reops-agent --hub-key KEY
  reops hub --stop
  reops hub status                  # pid, endpoints, agents, flows, bus drops, SSH pool
"""


def _settings(**overrides: Any) -> Any:
    from reops.control.settings import load_hub_settings

    try:
        return load_hub_settings().with_(**overrides)
    except ValueError as e:
        raise UserError(str(e)) from None


@click.group("hub", help=HUB_HELP, invoke_without_command=True)
@click.option("--bind", default=None,
              help="Endpoint agents connect to [default: tcp://127.0.0.1:7720, loopback only; "
              "e.g. tcp://10.0.0.1:7720 for a fleet].")
@click.option("--control", type=click.Path(path_type=Path), default=None,
              help="Control socket path [default: ~/.reops/run/hub.sock].")
@click.option("--keys-dir", type=click.Path(path_type=Path), default=None,
              help="Key store: pending/ accepted/ rejected/ [default: ~/.reops/keys].")
@click.option("--heartbeat", "heartbeat_s", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Seconds between heartbeats, both ways [default: 5].")
@click.option("--misses", type=click.IntRange(1), default=None,
              help="Missed heartbeats before an agent is lost [default: 3].")
@click.option("--auto-accept", is_flag=True, default=None,
              help="Accept every new agent key (labs only).")
@click.option("--background", is_flag=True, help="Start detached and return.")
@click.option("--print-key", is_flag=True, help="Print the hub's public key and exit.")
@click.option("--stop", is_flag=True, help="Stop the running hub.")
@click.option("-v", "--verbose", is_flag=True)
def hub(bind: str | None, control: Path | None, keys_dir: Path | None,
        heartbeat_s: float | None, misses: int | None, auto_accept: bool | None,
        background: bool, print_key: bool, stop: bool, verbose: bool) -> None:
    if click.get_current_context().invoked_subcommand:  # e.g. `reops hub status`
        return
    from reops.hub.daemon import HubAlreadyRunning, run_hub, start_background, stop_running
    from reops.hub.keystore import KeyStore

    settings = _settings(bind=bind, control=str(control) if control else None,
                         keys_dir=str(keys_dir) if keys_dir else None,
                         heartbeat_s=heartbeat_s, misses=misses, auto_accept=auto_accept)
    if print_key:
        click.echo(KeyStore(settings.keys_path).hub_public_key())
        return
    if stop:
        pid = stop_running(settings)
        click.echo(f"hub stopped (pid {pid})" if pid else "no hub was running", err=True)
        return
    try:
        if background:
            info = start_background(settings)
            click.echo(f"hub running (pid {info['pid']}) on {info['bind']}; log {info['log']}",
                       err=True)
            click.echo(info["key"])
            return
        run_hub(settings, verbose=verbose)
    except (HubAlreadyRunning, RuntimeError, OSError) as e:
        raise UserError(str(e).splitlines()[0]) from None


hub.add_command(hub_status)


# ── keys ──────────────────────────────────────────────────────────────────────────────


def _store(keys_dir: Path | None) -> Any:
    from reops.hub.keystore import KeyStore

    return KeyStore(keys_dir or _settings().keys_path)


def _hub_request(method: str, params: dict[str, Any]) -> Any:
    """Ask the running hub (so it acts at once); None when no hub runs."""
    from reops.control.client import HubError, HubNotRunning, request_sync

    try:
        return request_sync(_settings().control_path, method, params)
    except HubNotRunning:
        return None
    except HubError as e:
        raise UserError(str(e)) from None


@click.group("keys", invoke_without_command=True)
@click.option("--keys-dir", type=click.Path(path_type=Path), default=None,
              help="Key store [default: ~/.reops/keys].")
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_context
def keys(ctx: click.Context, keys_dir: Path | None, as_json: bool) -> None:
    """Agent keys, like salt-key: pending agents get no service until accepted.

    \b
      reops keys                       # list, with fingerprints
      reops keys accept web1 web2      # or: reops keys accept --all-pending
      reops keys accept web1 --fingerprint 3f:a2:…   # as reops-agent --print-fingerprint
                                       # shows on web1; required when 2 keys claim web1
      reops keys reject web9
      reops keys delete web3           # forget; it shows up as pending again
    """
    ctx.obj = keys_dir
    if ctx.invoked_subcommand is None:
        _list_keys(keys_dir, as_json)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def keys_list(keys_dir: Path | None, as_json: bool) -> None:
    """Every key: accepted, pending, rejected."""
    _list_keys(keys_dir, as_json)


def _list_keys(keys_dir: Path | None, as_json: bool) -> None:
    entries = _store(keys_dir).entries()
    if as_json:
        click.echo(json.dumps([{"name": e.name, "state": e.state, "key": e.key,
                                "fingerprint": e.fingerprint, "claims": e.claims}
                               for e in entries]))
        return
    for state in ("accepted", "pending", "rejected"):
        mine = [e for e in entries if e.state == state]
        click.echo(f"{state.capitalize()} keys ({len(mine)}):")
        for e in mine:
            if e.contested:
                click.echo(f"  {e.name:<24} {len(e.claims)} keys claim {e.name}:")
                for i, fp in enumerate(e.claims):
                    click.echo(f"  {'':<24} {fp}" + ("  (first)" if i == 0 else ""))
            else:
                click.echo(f"  {e.name:<24} {e.fingerprint}")


def _change(keys_dir: Path | None, action: str, names: tuple[str, ...],
            sources: tuple[str, ...], fingerprint: str | None = None) -> None:
    from reops_agent.protocol import valid_name

    from reops.hub.keystore import ContestedName

    if not names:
        raise UserError(f"name the agents to {action} (see reops keys)")
    store = _store(keys_dir)
    for name in names:
        entry = store.get(name) if valid_name(name) else None
        if entry is None or entry.state not in sources:
            raise UserError(f"no {' or '.join(sources)} key named {name!r} (see reops keys)")
    params: dict[str, Any] = {"names": list(names)}
    if fingerprint is not None:
        params["fingerprint"] = fingerprint
    use_hub = keys_dir is None or keys_dir == _settings().keys_path
    done = _hub_request(f"keys.{action}", params) if use_hub else None
    if done is None:  # no hub running: change the files; the hub reads them at registration
        try:
            if action == "accept":
                done = [{"name": store.accept(n, fingerprint).name} for n in names]
            else:
                method = {"reject": store.reject, "delete": store.delete}[action]
                done = [{"name": method(n).name} for n in names]
        except (ContestedName, KeyError, ValueError) as e:
            raise UserError(str(e.args[0] if e.args else e)) from None
    past = {"accept": "accepted", "reject": "rejected", "delete": "deleted"}[action]
    for d in done:
        click.echo(f"{past} {d['name']}")


def _confirm_fingerprint(keys_dir: Path | None, name: str) -> str:
    """On a terminal: show the key `name` would be accepted with and ask; its fingerprint."""
    entry = _store(keys_dir).get(name)
    if entry is None:
        raise UserError(f"no pending or rejected key named {name!r} (see reops keys)")
    if entry.contested:
        raise UserError(f"{len(entry.claims)} keys claim {name}: compare their fingerprints "
                        f"(reops keys) with the agent's own (reops-agent --print-fingerprint) "
                        f"and accept one with: reops keys accept {name} --fingerprint FP")
    click.echo(f"{name}: key fingerprint {entry.fingerprint}")
    if not click.confirm("Does it match `reops-agent --print-fingerprint` on that host?",
                         default=False):
        raise UserError(f"{name} not accepted")
    return str(entry.fingerprint)


@keys.command("accept")
@click.argument("names", nargs=-1)
@click.option("--all-pending", is_flag=True,
              help="Accept every pending key (contested names are left for --fingerprint).")
@click.option("--fingerprint", "fp", default=None,
              help="Accept NAME only with the key of this fingerprint (what the agent's "
              "`reops-agent --print-fingerprint` shows).")
@click.pass_obj
def keys_accept(keys_dir: Path | None, names: tuple[str, ...], all_pending: bool,
                fp: str | None) -> None:
    """Accept pending (or rejected) keys: those agents are served from now on.

    A name claimed by several keys is accepted only with --fingerprint; on a terminal,
    one name without --fingerprint shows the key's fingerprint and asks first.
    """
    if fp is not None and (all_pending or len(names) != 1):
        raise UserError("--fingerprint goes with exactly one agent name")
    if all_pending:
        pending = _store(keys_dir).entries("pending")
        for e in pending:
            if e.contested:
                click.echo(f"skipped {e.name}: {len(e.claims)} keys claim it; accept one with "
                           f"reops keys accept {e.name} --fingerprint FP", err=True)
        names = tuple(e.name for e in pending if not e.contested)
        if not names:
            click.echo("no uncontested pending keys", err=True)
            return
    elif fp is None and len(names) == 1 and sys.stdin.isatty() and sys.stdout.isatty():
        fp = _confirm_fingerprint(keys_dir, names[0])
    _change(keys_dir, "accept", names, ("pending", "rejected"), fp)


@keys.command("reject")
@click.argument("names", nargs=-1)
@click.pass_obj
def keys_reject(keys_dir: Path | None, names: tuple[str, ...]) -> None:
    """Reject keys: their connections are refused, their agents dropped."""
    _change(keys_dir, "reject", names, ("pending", "accepted"))


@keys.command("delete")
@click.argument("names", nargs=-1)
@click.pass_obj
def keys_delete(keys_dir: Path | None, names: tuple[str, ...]) -> None:
    """Forget keys (a deleted agent that connects again shows up as pending)."""
    _change(keys_dir, "delete", names, ("pending", "accepted", "rejected"))


# ── agents ────────────────────────────────────────────────────────────────────────────


@click.group("agents", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_context
def agents(ctx: click.Context, as_json: bool) -> None:
    """Agents the hub knows: name, address, version, last beat, load.

    \b
      reops agents
      reops agents deploy -i inventory.toml 'group:web' --hub tcp://10.0.0.1:7720
    """
    if ctx.invoked_subcommand is None:
        _list_agents(as_json)


@agents.command("list")
@click.option("--json", "as_json", is_flag=True)
def agents_list(as_json: bool) -> None:
    """Agents the hub knows (connected and lost)."""
    _list_agents(as_json)


def _list_agents(as_json: bool) -> None:
    from reops.control.client import HubNotRunning
    from reops.transports.agent import agent_list

    try:
        rows = agent_list(_settings().control_path)
    except HubNotRunning as e:
        raise UserError(str(e)) from None
    if as_json:
        click.echo(json.dumps(rows))
        return
    now = time.time()
    click.echo(f"{'NAME':<20} {'STATE':<10} {'ADDRESS':<16} {'VERSION':<8} {'LAST BEAT':>9} "
               f"{'LOAD':>5} {'RUNNING':>7}")
    for a in sorted(rows, key=lambda a: a["name"]):
        click.echo(f"{a['name']:<20} {a['state']:<10} {a['address']:<16} {a['version']:<8} "
                   f"{now - a['last_beat']:>8.1f}s {a['load']:>5.2f} {a['running']:>7}")
    click.echo(f"{sum(a['state'] == 'connected' for a in rows)}/{len(rows)} connected", err=True)


@agents.command("deploy")
@click.option("-i", "--inventory", "inventory_path", type=click.Path(path_type=Path),
              default=None, help="Inventory TOML.")
@click.argument("selector")
@click.option("--hub", "hub_endpoint", default=None,
              help="Endpoint agents connect to [default: the running hub's, unless 0.0.0.0].")
@click.option("--wheels", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=None, help="Offline: a directory of wheels (reops-agent, pyzmq, msgspec).")
@click.option("--allow-code", is_flag=True, help="Let the hub ship Python code to the agents.")
@click.option("--sudo", is_flag=True, help="Install system-wide with sudo (systemd unit).")
@click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds each deploy step may take per host.")
@click.option("--wait", "register_timeout", type=click.FloatRange(min=0, min_open=True),
              default=60.0, show_default=True,
              help="Seconds to wait for each agent to register with the hub.")
def agents_deploy(inventory_path: Path | None, selector: str, hub_endpoint: str | None,
                  wheels: Path | None, allow_code: bool, sudo: bool, timeout: float,
                  register_timeout: float) -> None:
    """Install and start the agent on hosts over SSH, its key pre-accepted; ok once it has
    registered with the hub. reops-agent comes from its uploaded wheel (--no-index)."""
    from reops.cli.common import select_hosts
    from reops.hub.deploy import deploy

    settings = _settings()
    hosts = select_hosts(inventory_path, selector)
    endpoint = hub_endpoint or _default_endpoint(settings)
    if hub_endpoint is None and _loopback(endpoint):
        remote = [h.name for h in hosts if not _loopback(h.address)]
        if remote:
            raise UserError(f"the hub listens on {endpoint} (this machine only), which "
                            f"{remote[0]} cannot reach: start it with --bind on an address "
                            "the hosts reach and pass it here, e.g. --hub tcp://10.0.0.1:7720")
    outcome = deploy(hosts, endpoint=endpoint, settings=settings, wheels=wheels,
                     allow_code=allow_code, sudo=sudo, timeout=timeout,
                     register_timeout=register_timeout)
    for r in outcome.results:
        mark = "✔" if r.ok else "✘"
        click.echo(f"{mark} {r.host}" + ("" if r.ok else f": {r.err.strip().splitlines()[-1:]}"))
    sys.exit(outcome.exit_code)


def _loopback(address: str) -> bool:
    """Whether `address` (an IP, a host name or a tcp:// endpoint) is this machine only."""
    import ipaddress

    host = address.removeprefix("tcp://").rsplit(":", 1)[0] if "://" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default_endpoint(settings: Any) -> str:
    from reops.control.client import HubNotRunning, ping_sync

    try:
        bind = str(ping_sync(settings.control_path)["bind"])
    except HubNotRunning:
        bind = settings.bind
    if "0.0.0.0" in bind or "*" in bind:
        raise UserError(f"the hub listens on {bind}: say which address agents should use, "
                        "e.g. --hub tcp://10.0.0.1:7720")
    return bind


# ── the lab (`reops lab up --agents`) ─────────────────────────────────────────────────


def start_lab_agents(info: Any, allow_code: bool = True) -> None:
    """Start an agent per lab host, keys accepted, against the running hub (or a new one)."""
    from reops.control.client import HubNotRunning, ping_sync
    from reops.hub.daemon import start_background
    from reops.lab.agents import save_agents, start_agents, wait_for_agents

    settings = _settings()
    workdir = Path(info.root) / "agents"
    stop_lab_agents(info.root)
    try:
        hub_info = ping_sync(settings.control_path)
    except HubNotRunning:
        if "0.0.0.0" in settings.bind:
            settings = settings.with_(bind=settings.bind.replace("0.0.0.0", "127.0.0.1"))
        hub_info = start_background(settings)
        click.echo(f"hub started (pid {hub_info['pid']}) on {hub_info['bind']}", err=True)
        workdir.mkdir(parents=True, exist_ok=True)  # `lab down` stops the hub it started
        (workdir / "hub.json").write_text(json.dumps({"pid": hub_info["pid"]}))
    endpoint = str(hub_info["bind"]).replace("0.0.0.0", "127.0.0.1")
    names = list(info.hosts)
    lab = start_agents(names, endpoint, hub_info["key"], settings.keys_path, workdir=workdir,
                       allow_code=allow_code, sources=info.hosts)  # each from its address
    save_agents(lab, workdir / "agents.json")
    wait_for_agents(settings.control_path, names, timeout=30 + len(names) * 0.1)
    click.echo(f"{len(names)} agents connected to the hub at {endpoint}", err=True)


def stop_lab_agents(root: Path | str) -> int:
    """Stop the agents `start_lab_agents` started for the lab in `root`; how many."""
    from reops.control.client import HubNotRunning, ping_sync
    from reops.hub.daemon import stop_running
    from reops.lab.agents import stop_saved_agents

    stopped = stop_saved_agents(Path(root) / "agents" / "agents.json")
    started = Path(root) / "agents" / "hub.json"
    if started.exists():
        settings = _settings()
        try:
            running = ping_sync(settings.control_path)
        except HubNotRunning:
            running = {}
        if running.get("pid") == json.loads(started.read_text()).get("pid"):
            stop_running(settings)
            click.echo(f"hub stopped (pid {running['pid']}): the lab had started it", err=True)
        started.unlink()
    return stopped
