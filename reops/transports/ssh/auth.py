"""Why a login or a host key was refused, in one line that says what to do.

Called only on failure, so it may read certificates and the agent socket: an expired or
not-yet-valid user certificate, a CA the server does not trust, a missing ssh-agent socket,
a host certificate from an unknown CA, a revoked or changed host key.
"""

from __future__ import annotations

import os
import shlex
import stat
import time
from typing import TYPE_CHECKING, Any

from reops.transports.ssh.knownhosts import entry

if TYPE_CHECKING:
    from reops.transports.ssh.target import Target


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _cert_problem(cert: Any, now: float) -> str | None:
    """An OpenSSH certificate's validity problem, if any."""
    before, after = getattr(cert, "_valid_before", None), getattr(cert, "_valid_after", None)
    if isinstance(before, int) and before < now:
        return f"expired at {_when(before)}"
    if isinstance(after, int) and after > now:
        return f"is not valid before {_when(after)}"
    return None


def agent_state() -> str:
    """What ssh-agent reops would ask: a clear note when $SSH_AUTH_SOCK is unusable."""
    sock = os.environ.get("SSH_AUTH_SOCK")
    if not sock:
        return "no ssh-agent ($SSH_AUTH_SOCK is not set)"
    try:
        mode = os.stat(sock).st_mode
    except OSError:
        return f"ssh-agent socket $SSH_AUTH_SOCK={sock} does not exist (is ssh-agent running?)"
    if not stat.S_ISSOCK(mode):
        return f"$SSH_AUTH_SOCK={sock} is not a socket"
    return f"your ssh-agent ({sock})"


def explain_auth_failure(t: Target, keypairs: list[Any] | None, where: str) -> str:
    """`authentication failed for user@host:port with …`, naming what was offered."""
    head = f"authentication failed for {t.user}@{where}"
    now = time.time()
    certs = [c for c in (getattr(kp, "_cert", None) for kp in keypairs or ()) if c]
    for cert in certs:
        problem = _cert_problem(cert, now)
        if problem:
            return (f"{head}: the user certificate for {', '.join(t.keys)} {problem}; sign "
                    f"the key again (ssh-keygen -s CA_KEY -I ID -n {t.user} KEY.pub)")
    if certs:
        return (f"{head} with certificate-signed key {', '.join(t.keys)}: does the server "
                f"trust its CA (TrustedUserCAKeys) and list {t.user!r} as a principal?")
    if t.keys:
        return f"{head} with key {', '.join(t.keys)}"
    if t.agent and t.agent.lower() == "none":
        return f"{head} with default keys ~/.ssh/id_* (IdentityAgent none)"
    return f"{head} with {agent_state()} and default keys ~/.ssh/id_*"


def explain_host_key(t: Target, reason: str, listed: bool, revoked: bool) -> str:
    """Why the host key of `t` was not accepted, and how to fix it."""
    name = entry(t.address, t.port)
    files = " ".join(os.path.expanduser(p) for p in t.known_hosts)
    low = reason.lower()
    if "revoked" in low and (revoked or "ca key" in low):
        return (f"host key of {name}{t.chain()} is marked @revoked in {files}; "
                "the host must get a new host key")
    if "ca key is not trusted" in low:
        return (f"host certificate of {name}{t.chain()} is signed by a CA that no "
                f"@cert-authority line for it in {files} trusts")
    if "certificate" in low or "principal" in low:
        return f"host certificate of {name}{t.chain()} was refused: {reason}"
    if not listed:
        return (f"host key of {name}{t.chain()} is not in {files}; add it "
                "(ssh-keyscan) or use --host-key-checking accept-new")
    path = os.path.expanduser(t.known_hosts[0])
    return (f"host key of {name}{t.chain()} does not match {files} ({reason}); if the host "
            "was reinstalled, remove the old entry: "
            f"ssh-keygen -f {shlex.quote(path)} -R {shlex.quote(name)}")
