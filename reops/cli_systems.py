"""`reops types|systems|jobs|events`: machines from the command line.

For now each command runs the Machines service in its own process (the queue's flock makes
sure only one process runs jobs at a time; a crash is recovered by the next command). Once
`reops hub` hosts the service (reops.systems.service), these commands become its clients.
Exit codes: 0 every job succeeded, 1 some failed, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import click
import msgspec

from reops.cli import UserError
from reops.selector import SelectorError
from reops.systems.libvirt_events import HypervisorEvent
from reops.systems.machines import Machines
from reops.systems.model import Job, JobEvent, MachinesError, System, short

T = TypeVar("T")


@contextmanager
def _errors() -> Iterator[None]:
    """Our input errors as the CLI's one-line, exit-code-2 errors."""
    try:
        yield
    except (MachinesError, SelectorError) as e:
        raise UserError(str(e).splitlines()[0] if isinstance(e, MachinesError) else str(e)) \
            from None


def _run(work: Callable[[Machines], Awaitable[T]], *, queue: bool = False) -> T:
    """Open Machines (running the queue here when asked), do `work`, close."""
    async def main() -> T:
        m = Machines.open()
        try:
            if queue:
                for j in await m.run_queue():
                    click.echo(f"recovered: job {j.short_id} {j.op}: {j.error}", err=True)
            return await work(m)
        finally:
            await m.aclose()
    with _errors():
        return asyncio.run(main())


def _progress(m: Machines) -> None:
    names = {s.id: s.hostname for s in m.store.systems()}

    def show(ev: JobEvent) -> None:
        j = ev.job
        what = names.get(j.system_id or "") or (j.system_id or "")[:7] or j.args.get(
            "hypervisor", "")
        tail = f": {j.error}" if j.error else (f" {_brief(j.result)}" if j.result else "")
        click.echo(f"  {ev.event:<11} {j.op:<8} {what:<20} job {j.short_id}{tail}", err=True)
    m.job_events.subscribe(show)


def _brief(result: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in result.items() if v not in (None, [], ""))


async def _finish(m: Machines, jobs: list[Job]) -> int:
    done = await m.wait(jobs)
    failed = [j for j in done if j.state != "succeeded"]
    return 1 if failed else 0


def _confirm(op: str, chosen: list[System], force: bool) -> None:
    """Ask before destructive work on a TTY; scripts and --force go ahead."""
    if force or not sys.stdin.isatty():
        return
    names = ", ".join(s.hostname for s in chosen[:10]) + (" …" if len(chosen) > 10 else "")
    click.confirm(f"{op} {len(chosen)} system(s): {names}?", abort=True)


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# ── types ────────────────────────────────────────────────────────────────────────────────


@click.group()
def types() -> None:
    """Machine types: what a system is for and the flow that provisions it."""


@types.command("add")
@click.argument("name")
@click.option("--description", "-d", default="", help="What systems of this type are for.")
@click.option("--provision", "-p", default=None, help="Flow run after create (path or name).")
@click.option("--arg", "args", multiple=True, help="KEY=VALUE argument for the flow.")
def types_add(name: str, description: str, provision: str | None, args: tuple[str, ...]) -> None:
    """Add (or replace) a type: reops types add redis -d "redis server" -p flows/redis.py"""
    parsed = dict(a.partition("=")[::2] for a in args)

    async def work(m: Machines) -> None:
        t = m.add_type(name, description, provision, parsed)
        click.echo(f"type {t.name} added")
    _run(work)


@types.command("ls")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
def types_ls(output: str) -> None:
    """List types."""
    async def work(m: Machines) -> None:
        ts = m.types()
        if output == "json":
            click.echo(msgspec.json.encode(ts).decode())
            return
        _table([(t.name, t.description, t.provision or "-") for t in ts],
               ("NAME", "DESCRIPTION", "PROVISION"))
    _run(work)


@types.command("rm")
@click.argument("name")
def types_rm(name: str) -> None:
    """Remove a type no system uses."""
    async def work(m: Machines) -> None:
        m.remove_type(name)
        click.echo(f"type {name} removed")
    _run(work)


# ── systems ──────────────────────────────────────────────────────────────────────────────


@click.group()
def systems() -> None:
    """Machines: VMs on libvirt hypervisors and physical hosts."""


@systems.command("create")
@click.argument("type_name", metavar="TYPE")
@click.option("--preset", "presets", multiple=True,
              help="tiny..xlarge, an os (debian-12, …), KEY=VALUE, or [presets.NAME]; repeat.")
@click.option("--count", type=int, default=None, help="How many systems.")
@click.option("--hypervisor", default=None, help="A [hypervisors.NAME] from config.toml.")
@click.option("--hostname", default=None, help="Name (NAME-1.. when --count > 1).")
def systems_create(type_name: str, presets: tuple[str, ...], count: int | None,
                   hypervisor: str | None, hostname: str | None) -> None:
    """Create systems of a type: reops systems create redis --preset small --count 2"""
    async def work(m: Machines) -> int:
        _progress(m)
        jobs = await m.create(type_name, presets, count=count, hypervisor=hypervisor,
                              hostname=hostname)
        code = await _finish(m, jobs)
        _print_systems(m.systems("all"), only={j.system_id for j in jobs})
        return code
    sys.exit(_run(work, queue=True))


def _print_systems(chosen: list[System], only: set[str | None] | None = None) -> None:
    rows = [
        (s.short_id, s.hostname, s.machine.ip or "-", s.type or "-", s.machine.os or "-",
         s.placement.hypervisor, s.state)
        for s in chosen if only is None or s.id in only
    ]
    _table(rows, ("ID", "HOSTNAME", "IP", "TYPE", "OS", "HYPERVISOR", "STATE"))


@systems.command("ls")
@click.argument("selector", default="all")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
def systems_ls(selector: str, output: str) -> None:
    """List systems: reops systems ls 'typed:redis & running'"""
    async def work(m: Machines) -> None:
        chosen = m.systems(selector)
        if output == "json":
            click.echo(msgspec.json.encode(chosen).decode())
        else:
            _print_systems(chosen)
    _run(work)


def _lifecycle(op: str, help_: str, destructive: bool) -> click.Command:
    @click.command(op, help=help_)
    @click.argument("selector")
    @click.option("--force", "-f", is_flag=True, help="Do not ask for confirmation.")
    def cmd(selector: str, force: bool) -> None:
        async def work(m: Machines) -> int:
            chosen = m.systems(selector)
            if not chosen:
                raise MachinesError(f"no system matches {selector!r}")
            if destructive:
                _confirm(op, chosen, force)
            _progress(m)
            return await _finish(m, m.submit(op, selector))  # type: ignore[arg-type]
        sys.exit(_run(work, queue=True))
    return cmd


for _op, _help, _destructive in (
    ("start", "Start systems (VMs boot; physical machines get a Wake-on-LAN packet).", False),
    ("stop", "Stop systems: graceful shutdown, destroyed after machines.stop_timeout.", True),
    ("reload", "Destroy and re-create systems from their records (same id and size).", True),
    ("destroy", "Power off and delete systems: domain, volumes and record.", True),
    ("clear", "Forget systems' records; the machines themselves are left alone.", True),
):
    systems.add_command(_lifecycle(_op, _help, _destructive))


@systems.command("snapshot")
@click.argument("selector")
@click.argument("name")
def systems_snapshot(selector: str, name: str) -> None:
    """Take a named snapshot of systems."""
    async def work(m: Machines) -> int:
        _progress(m)
        return await _finish(m, await m.snapshot(selector, name))
    sys.exit(_run(work, queue=True))


@systems.command("revert")
@click.argument("selector")
@click.argument("name")
@click.option("--force", "-f", is_flag=True, help="Do not ask for confirmation.")
def systems_revert(selector: str, name: str, force: bool) -> None:
    """Revert systems to a named snapshot."""
    async def work(m: Machines) -> int:
        _confirm("revert", m.systems(selector), force)
        _progress(m)
        return await _finish(m, await m.revert(selector, name))
    sys.exit(_run(work, queue=True))


@systems.command("sync")
@click.option("--hypervisor", default=None, help="A [hypervisors.NAME] from config.toml.")
def systems_sync(hypervisor: str | None) -> None:
    """Import the machines that already exist on a hypervisor."""
    async def work(m: Machines) -> int:
        _progress(m)
        return await _finish(m, [await m.sync(hypervisor)])
    sys.exit(_run(work, queue=True))


@systems.command("register")
@click.argument("hostname")
@click.option("--mac", required=True, help="MAC address for Wake-on-LAN.")
@click.option("--ip", default=None, help="Address for SSH.")
@click.option("--hypervisor", default=None, help="A [hypervisors.NAME] with kind = \"physical\".")
@click.option("--type", "type_name", default="physical", help="A type from `reops types ls`.")
def systems_register(hostname: str, mac: str, ip: str | None, hypervisor: str | None,
                     type_name: str) -> None:
    """Record a physical machine (started by Wake-on-LAN)."""
    async def work(m: Machines) -> None:
        s = m.register_physical(hostname, mac, ip=ip, type_name=type_name,
                                hypervisor=hypervisor)
        click.echo(f"system {s.short_id} {s.hostname} registered")
    _run(work)


# ── jobs ─────────────────────────────────────────────────────────────────────────────────


@click.group()
def jobs() -> None:
    """The durable job queue."""


def _job_rows(m: Machines, js: list[Job]) -> list[tuple[str, ...]]:
    names = {s.id: s.hostname for s in m.store.systems()}
    return [
        (j.short_id, j.op, names.get(j.system_id or "", short(j.system_id or "") or "-"),
         j.state, time.strftime("%H:%M:%S", time.localtime(j.created_at)),
         (j.error or _brief(j.result))[:60])
        for j in js
    ]


@jobs.command("ls")
@click.option("--limit", "-n", type=int, default=50, help="Newest N jobs.")
def jobs_ls(limit: int) -> None:
    """List jobs, oldest first."""
    async def work(m: Machines) -> None:
        _table(_job_rows(m, m.jobs(limit=limit)),
               ("ID", "OP", "SYSTEM", "STATE", "CREATED", "RESULT"))
    _run(work)


@jobs.command("show")
@click.argument("job_id")
def jobs_show(job_id: str) -> None:
    """Show one job (any unique id prefix) as JSON."""
    async def work(m: Machines) -> None:
        click.echo(msgspec.json.format(msgspec.json.encode(m.job(job_id))).decode())
    _run(work)


@jobs.command("wait")
@click.argument("job_id")
def jobs_wait(job_id: str) -> None:
    """Run the queue here until a job is finished; exit 0 when it succeeded."""
    async def work(m: Machines) -> int:
        _progress(m)
        job = (await m.wait([m.job(job_id)]))[0]
        click.echo(f"job {job.short_id} {job.state}{': ' + job.error if job.error else ''}")
        return 0 if job.state == "succeeded" else 1
    sys.exit(_run(work, queue=True))


# ── events ───────────────────────────────────────────────────────────────────────────────


@click.command()
@click.option("--hypervisor", "names", multiple=True, help="Which hypervisors (default: all).")
@click.option("--count", "-n", type=int, default=None, help="Stop after N events.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
def events(names: tuple[str, ...], count: int | None, output: str) -> None:
    """Hypervisor lifecycle events as they happen (Ctrl-C to stop)."""
    async def work(m: Machines) -> None:
        done = asyncio.get_running_loop().create_future()
        seen = 0

        def show(ev: HypervisorEvent) -> None:
            nonlocal seen
            if output == "json":
                click.echo(msgspec.json.encode(ev).decode())
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(ev.time))
                click.echo(f"{stamp} {ev.hypervisor} {ev.kind} {ev.name} {ev.event} {ev.detail}")
            seen += 1
            if count is not None and seen >= count and not done.done():
                done.set_result(None)

        for name in names or tuple(m.config.hypervisors):
            if m.config.hypervisors.get(name) and m.config.hypervisors[name].kind != "libvirt":
                continue
            (await m.hypervisor_events(name)).subscribe(show)
        click.echo("watching hypervisor events (Ctrl-C to stop)", err=True)
        await done
    with suppress(KeyboardInterrupt):
        _run(work)
