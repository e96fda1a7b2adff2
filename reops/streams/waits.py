"""Waiting for hosts to come back: `reboot(hosts, wait=True)` gives ONE Result per host.

A rebooting host sends no event when it is back, so each host gets one coroutine that runs
the reboot op, then probes `boot_id()` on the runtime loop's timers with backoff (first
after the reboot's delay, then 1 s, 2 s, 4 s … capped) until the boot_id differs from the
one the reboot op reported — reachable alone is not enough, the old system may still be
going down. A host that is not back within `timeout` is a `timeout` Result whose `err`
says what the last probe saw. `wait_back` is the same machinery for any op that reports a
BootId (tests use a fake one: no real reboot needed to exercise it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import msgspec

from reops.core.model import UNREACHED, Host, Hosts, Line, Result
from reops.core.settings import Settings
from reops.ops import power
from reops.ops.base import Op
from reops.streams.source import Via, as_hosts, resolve, source
from reops.streams.stream import Stream, fanout
from reops.transports.base import Executor

#: how long a host may take to come back before its Result is a timeout
REBOOT_TIMEOUT_S = 600.0
#: first pause between probes after the reboot's own delay; doubles up to POLL_MAX_S
POLL_FIRST_S = 1.0
POLL_MAX_S = 10.0


class Rebooted(msgspec.Struct, frozen=True, kw_only=True):
    """A host's boot before and after, and how long it took to be back (`Result.data`)."""

    before: power.BootId
    after: power.BootId
    waited_s: float


def _forget_connection(executor: Executor, host: Host, settings: Settings) -> None:
    """Drop the pooled SSH connection to a rebooting host, so probes open a fresh one
    instead of waiting for keepalives to notice a half-open one."""
    forget = getattr(executor, "forget", None)  # transports without a pool have nothing to drop
    if callable(forget):
        forget(host, settings)


async def _probe(executor: Executor, host: Host, probe: Op, settings: Settings,
                 left: float) -> Result:
    """One bounded boot_id probe: a connect or a command that hangs counts as not back."""
    bound = max(min(settings.connect_timeout, left), 0.1)
    quick = settings.with_(connect_timeout=bound)
    try:
        async with asyncio.timeout(bound * 2):
            return await executor.run(host, probe.with_(timeout=bound), quick)
    except TimeoutError:
        return Result(host=host.name, op=probe.name, status="timeout", code=UNREACHED,
                      err=f"no answer within {bound * 2:g} s")


async def _wait_one(host: Host, op: Op, probe: Op, executor: Executor, settings: Settings,
                    *, wait: bool, timeout: float, first_s: float, poll_s: float,
                    poll_max_s: float) -> Result:
    started = time.time()
    t0 = time.monotonic()
    first = await executor.run(host, op, settings)
    if not wait or not first.ok:
        return first
    if not isinstance(first.data, power.BootId):
        return msgspec.structs.replace(
            first, status="error", err=f"{op.name} reported no boot_id to wait on")
    before: power.BootId = first.data
    _forget_connection(executor, host, settings)
    deadline = t0 + timeout
    pause = first_s
    step_s = poll_s
    last = "no probe yet"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(pause, left))
        left = deadline - time.monotonic()
        if left <= 0:
            break
        seen = await _probe(executor, host, probe, settings, left)
        if seen.ok and isinstance(seen.data, power.BootId):
            if power.is_back(before, seen.data):
                waited = round(time.monotonic() - t0, 3)
                return Result(
                    host=host.name, op=op.name, status="ok", code=0,
                    out=f"back after {waited:.1f} s (boot {before.boot_id[:8]} -> "
                        f"{seen.data.boot_id[:8]})",
                    started_at=started, duration_s=waited, transport=seen.transport,
                    data=Rebooted(before=before, after=seen.data, waited_s=waited),
                    changed=True)
            last = "still the same boot_id (not gone down yet, or did not reboot)"
        else:
            text = (seen.err or seen.out).strip()
            last = text.splitlines()[-1] if text else seen.status
        pause = step_s
        step_s = min(step_s * 2, poll_max_s)
    return Result(
        host=host.name, op=op.name, status="timeout", code=UNREACHED, out=first.out,
        err=f"{op.name} ran, but the host was not back within {timeout:g} s "
            f"(last probe: {last}); raise it with timeout=/--timeout",
        started_at=started, duration_s=round(time.monotonic() - t0, 3),
        transport=first.transport, data=before, changed=True)


def wait_back(hosts: Hosts | Host | Iterable[Host], op: Op, probe: Op | None = None, *,
              wait: bool = True, timeout: float = REBOOT_TIMEOUT_S,
              first_s: float | None = None, poll_s: float = POLL_FIRST_S,
              poll_max_s: float = POLL_MAX_S, via: Via | None = None,
              settings: Settings | None = None, dry_run: bool | None = None) -> Stream:
    """Run `op` (it reports a BootId), then wait per host until `probe` shows a new boot.

    One Result per host: ok with `data` a Rebooted; `timeout` (data: the BootId before)
    when not back in time; or the op's own failure. `first_s`: the pause before the first
    probe (default: 1 s).
    """
    if timeout <= 0 or poll_s <= 0 or poll_max_s <= 0:
        raise ValueError("timeout, poll_s and poll_max_s must be > 0 seconds")
    hs = as_hosts(hosts)
    r = resolve(via=via, settings=settings, dry_run=dry_run)
    use_settings = r.settings
    probe = probe or power.boot_id()
    op = r.op(op)
    if r.dry_run or r.check:  # nothing reboots: nothing to wait for
        return source(hs, op, via=r.via, settings=use_settings, dry_run=r.dry_run,
                      check=r.check, diff=r.diff)
    pick: Callable[[Host], Executor] = r.executors()
    pause = POLL_FIRST_S if first_s is None else first_s

    async def run_one(host: Host, on_line: Callable[[Line], None] | None) -> Result:
        return await _wait_one(host, op, probe, pick(host), use_settings, wait=wait,
                               timeout=timeout, first_s=pause, poll_s=poll_s,
                               poll_max_s=poll_max_s)

    def rebuild(subset: Hosts) -> Stream:
        return wait_back(subset, op, probe, wait=wait, timeout=timeout, first_s=first_s,
                         poll_s=poll_s, poll_max_s=poll_max_s, via=r.via,
                         settings=use_settings, dry_run=False)

    return Stream(fanout(hs, run_one), hs, rebuild)


def reboot(hosts: Hosts | Host | Iterable[Host], *, wait: bool = True,
           timeout: float = REBOOT_TIMEOUT_S, delay_s: int = 2, sudo: bool = False,
           become_user: str | None = None, poll_s: float = POLL_FIRST_S,
           poll_max_s: float = POLL_MAX_S, via: Via | None = None,
           settings: Settings | None = None, dry_run: bool | None = None) -> Stream:
    """Reboot hosts; with `wait`, each Result comes once that host runs a new boot.

        run(reboot(hosts, sudo=True, timeout=300) | pretty())
    """
    op = power.reboot(delay_s=delay_s, sudo=sudo, become_user=become_user)
    return wait_back(hosts, op, power.boot_id(), wait=wait, timeout=timeout,
                     first_s=delay_s + poll_s, poll_s=poll_s, poll_max_s=poll_max_s,
                     via=via, settings=settings, dry_run=dry_run)
