"""`wait_ssh(hosts)`: one Result per host once SSH answers and logs in.

A VM that just started sends no event when its sshd is up, so each host gets one
coroutine that tries a login running `true` (bounded by the connect timeout), then again
after 0.5 s, 1 s, 2 s … (capped), until it works or `timeout` has passed: then the Result
is `unreachable` with what the last attempt saw, so a flow says why a host never came up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from reops.core.model import UNREACHED, Host, Hosts, Line, Result
from reops.core.settings import Settings
from reops.ops import shell
from reops.streams.source import as_hosts, resolve, source
from reops.streams.stream import Stream, fanout
from reops.transports.base import Executor

#: how long a host may take to answer SSH before its Result is unreachable
WAIT_SSH_TIMEOUT_S = 300.0
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 10.0


async def _attempt(executor: Executor, host: Host, settings: Settings, left: float) -> Result:
    """One login: a connect or a command that hangs counts as not up yet."""
    bound = max(min(settings.connect_timeout, left), 0.1)
    quick = settings.with_(connect_timeout=bound)
    try:
        async with asyncio.timeout(bound * 2):
            return await executor.run(host, shell.exec_("true", timeout=bound), quick)
    except TimeoutError:
        return Result(host=host.name, op="wait_ssh", status="timeout", code=UNREACHED,
                      err=f"no answer within {bound * 2:g} s")


async def _wait_one(host: Host, executor: Executor, settings: Settings, *, timeout: float,
                    first_s: float, max_s: float) -> Result:
    started = time.time()
    t0 = time.monotonic()
    deadline = t0 + timeout
    pause, tries, last = first_s, 0, "no attempt yet"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        seen = await _attempt(executor, host, settings, left)
        tries += 1
        if seen.ok:
            waited = round(time.monotonic() - t0, 3)
            return Result(host=host.name, op="wait_ssh", status="ok", code=0,
                          out=f"ssh up after {waited:.1f} s ({tries} attempt(s))",
                          started_at=started, duration_s=waited, transport=seen.transport)
        text = (seen.err or seen.out).strip()
        last = text.splitlines()[-1] if text else seen.status
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, max_s)
    return Result(host=host.name, op="wait_ssh", status="unreachable", code=UNREACHED,
                  err=f"ssh did not answer within {timeout:g} s ({tries} attempt(s); "
                      f"last: {last})",
                  started_at=started, duration_s=round(time.monotonic() - t0, 3))


def wait_ssh(hosts: Hosts | Host | Iterable[Host], *, timeout: float = WAIT_SSH_TIMEOUT_S,
             first_s: float = FIRST_PAUSE_S, max_s: float = MAX_PAUSE_S,
             settings: Settings | None = None,
             dry_run: bool | None = None) -> Stream:
    """Wait per host until SSH logs in (ok) or `timeout` s pass (unreachable, last reason).

        on(vm_started("typed:redis")) | then(wait_ssh, timeout=120) | then(deploy_agent)
    """
    if timeout <= 0 or first_s <= 0 or max_s <= 0:
        raise ValueError("wait_ssh: timeout, first_s and max_s must be > 0 seconds")
    hs = as_hosts(hosts)
    r = resolve(via="ssh", settings=settings, dry_run=dry_run)
    if r.dry_run:  # nothing connects: say what would be tried
        return source(hs, shell.exec_("true").with_(name="wait_ssh"), via="ssh",
                      settings=r.settings, dry_run=True)
    pick: Callable[[Host], Executor] = r.executors()

    async def run_one(host: Host, on_line: Callable[[Line], None] | None) -> Result:
        return await _wait_one(host, pick(host), r.settings, timeout=timeout,
                               first_s=first_s, max_s=max_s)

    def rebuild(subset: Hosts) -> Stream:
        return wait_ssh(subset, timeout=timeout, first_s=first_s, max_s=max_s,
                        settings=r.settings, dry_run=False)

    return Stream(fanout(hs, run_one), hs, rebuild)
