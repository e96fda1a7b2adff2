"""`reops-agent`: the agent's command line (argparse: the agent depends on nothing else)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from reops_agent import __version__
from reops_agent.agent import Agent, AgentConfig, short_hostname
from reops_agent.functions import ALLOW_GROUPS, allowed_builtins
from reops_agent.keys import load_keypair, parse_public_key
from reops_agent.log import DEBUG, log
from reops_agent.protocol import fingerprint, valid_name


def default_keys_dir() -> str:
    """$REOPS_AGENT_HOME, else /var/lib/reops-agent for root, else ~/.reops-agent."""
    env = os.environ.get("REOPS_AGENT_HOME")
    if env:
        return os.path.expanduser(env)
    return "/var/lib/reops-agent" if os.geteuid() == 0 else os.path.expanduser("~/.reops-agent")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reops-agent",
        description="Connect to a reops hub (CurveZMQ) and run functions for it.",
        epilog="Shipped Python code is refused unless --allow-code is given: with it, the hub "
        "can run any Python as this agent's user.",
    )
    p.add_argument("--hub", help="hub endpoint, e.g. tcp://10.0.0.1:7720")
    p.add_argument("--hub-key", help="the hub's z85 public key (or a file holding it)")
    p.add_argument("--name", default=short_hostname(),
                   help="agent name (default: short hostname)")
    p.add_argument("--keys-dir", default=None,
                   help="where the agent's key pair lives (default: $REOPS_AGENT_HOME, "
                   "/var/lib/reops-agent as root, else ~/.reops-agent)")
    p.add_argument("--allow-code", action="store_true",
                   help="run Python functions shipped by the hub (off by default)")
    p.add_argument("--allow", default=None, metavar="FN[,FN…]",
                   help="serve only these built-ins (default: all): "
                   f"{', '.join(ALLOW_GROUPS)}; e.g. --allow facts,metrics for a read-only "
                   "monitoring agent (no shell, no file writes)")
    p.add_argument("--concurrency", type=int, default=16, help="calls running at once")
    p.add_argument("--heartbeat", type=float, default=5.0,
                   help="seconds between heartbeats until the hub sets its own")
    p.add_argument("--backlog", type=int, default=1000,
                   help="schedule results kept while the hub is away (oldest dropped)")
    p.add_argument("--reconnect-max", type=float, default=5.0,
                   help="cap of the randomized wait between reconnection attempts (exponential "
                   "backoff with full jitter from 0.1 s), seconds")
    p.add_argument("--print-key", action="store_true",
                   help="print this agent's public key and fingerprint, then exit")
    p.add_argument("--print-fingerprint", action="store_true",
                   help="print this agent's key fingerprint (as `reops keys` shows it, to "
                   "compare before accepting), then exit")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"reops-agent {__version__}")
    return p


def serve(cfg: AgentConfig) -> None:
    """Run the agent until SIGTERM or SIGINT (the handler wakes the agent's poll loop)."""
    agent = Agent(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    agent.run()


#: options whose value may begin with "-" (a z85 key can): argparse would take such a value
#: for an option and fail, so `--hub-key -abc…` is read as `--hub-key=-abc…`
DASH_VALUES = ("--hub-key",)


def _join_dash_values(argv: list[str]) -> list[str]:
    joined: list[str] = []
    args = iter(argv)
    for arg in args:
        value = next(args, None) if arg in DASH_VALUES else None
        joined.append(arg if value is None else f"{arg}={value}")
    return joined


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    if args.verbose:
        log.level = DEBUG
    keys_dir = args.keys_dir or default_keys_dir()
    try:
        public, secret = load_keypair(keys_dir, "agent")
    except OSError as e:
        print(f"reops-agent: cannot read or create keys in {keys_dir}: {e}")
        return 2
    if args.print_key:
        print(f"{public.decode()} {fingerprint(public.decode())}")
        return 0
    if args.print_fingerprint:
        print(fingerprint(public.decode()))
        return 0
    if not args.hub or not args.hub_key:
        print("reops-agent: --hub and --hub-key are required (see --help)")
        return 2
    if not valid_name(args.name):
        print(f"reops-agent: invalid --name {args.name!r}: letters, digits, . _ - only")
        return 2
    try:
        hub_key = parse_public_key(args.hub_key)
    except (OSError, ValueError) as e:
        print(f"reops-agent: --hub-key: {e}")
        return 2
    allow = None
    if args.allow is not None:
        allow = tuple(a.strip() for a in args.allow.split(",") if a.strip())
        try:
            allowed_builtins(allow)
        except ValueError as e:
            print(f"reops-agent: --allow: {e}")
            return 2
    cfg = AgentConfig(hub=args.hub, hub_key=hub_key, public_key=public, secret_key=secret,
                      name=args.name, allow_code=args.allow_code, allow=allow,
                      concurrency=max(1, args.concurrency), heartbeat_s=args.heartbeat,
                      backlog=max(1, args.backlog), reconnect_max_s=args.reconnect_max)
    serve(cfg)
    return 0
