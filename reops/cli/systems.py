"""`reops types|systems|jobs|events`: machines from the command line.

When `reops hub` runs and hosts Machines (reops.systems.service), every command is its
client: jobs run and VMs stay connected there. Without a hub, a command runs Machines in its
own process (the queue's flock lets one process run jobs at a time; the next command
recovers what a crash interrupted).
Exit codes: 0 every job succeeded, 1 some failed, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from reops.cli.main import UserError
from reops.core.selector import SelectorError
from reops.store.model import Job, JobEvent, JobEventKind, JobOp, MachinesError, System, short
from reops.systems.api import MachinesAPI, connect
from reops.systems.config import load_machines_config
from reops.systems.libvirt.events import HypervisorEvent

T = TypeVar("T")


@contextmanager
def _errors() -> Iterator[None]:
    """Our input errors as the CLI's one-line, exit-code-2 errors."""
    try:
        yield
    except (MachinesError, SelectorError) as e:
        raise UserError(str(e).splitlines()[0] if isinstance(e, MachinesError) else str(e)) \
            from None


def _run(work: Callable[[MachinesAPI], Awaitable[T]], *, jobs: bool = False) -> T:
    """Reach Machines (the hub's, else run here), do `work`, close.

    `jobs`: the work submits jobs, so follow job events from before they are submitted.
    """
    async def main() -> T:
        api = await connect()
        try:
            for j in getattr(api, "recovered", ()):
                click.echo(f"recovered: job {j.short_id} {j.op}: {j.error}", err=True)
            if jobs:
                await api.follow()
            return await work(api)
        finally:
            await api.aclose()
    with _errors():
        return asyncio.run(main())


async def _finish(api: MachinesAPI, jobs: list[Job],
                  chosen: Sequence[System] | None = None) -> int:
    """Show the jobs' progress until they end; 1 when any did not succeed."""
    names = {s.id: s.hostname for s in (await api.systems() if chosen is None else chosen)}

    def show(ev: JobEvent) -> None:
        j = ev.job
        what = names.get(j.system_id or "") or (j.system_id or "")[:7] or j.args.get(
            "hypervisor", "")
        tail = f": {j.error}" if j.error else (f" {_brief(j.result)}" if j.result else "")
        click.echo(f"  {ev.event:<11} {j.op:<8} {what:<20} job {j.short_id}{tail}", err=True)

    ended: set[str] = set()
    shown: set[tuple[str, str]] = set()  # (event, job id): the hub replays what we printed

    def show_once(ev: JobEvent) -> None:
        if ev.event not in ("queued", "started"):
            ended.add(ev.job.id)
        if (ev.event, ev.job.id) not in shown:
            shown.add((ev.event, ev.job.id))
            show(ev)

    for j in jobs:
        show_once(JobEvent(event="queued", job=j))
    done = await api.wait(jobs, show_once)
    for j in done:  # finished before we were listening (a fast job in the hub)
        if j.id not in ended and j.state != "running":
            show(JobEvent(event=_ended(j), job=j))
    return 0 if all(j.state == "succeeded" for j in done) else 1


def _ended(j: Job) -> JobEventKind:
    return "succeeded" if j.state == "succeeded" else (
        "interrupted" if j.state == "interrupted" else "failed")


def _brief(result: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in result.items() if v not in (None, [], ""))


def _interactive() -> bool:
    """Whether a person can answer a question (stdin is a terminal)."""
    return sys.stdin.isatty()


def _confirm(op: str, chosen: list[System], force: bool) -> None:
    """Ask before destructive work on a TTY; scripts and --force go ahead."""
    if force or not _interactive():
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
@click.option("--provision", "-p", default=None, metavar="FILE[:FUNC]",
              help="Recipe run after create: FUNC(hosts, **args) in FILE [FUNC: provision].")
@click.option("--arg", "args", multiple=True, help="KEY=VALUE argument for the recipe.")
def types_add(name: str, description: str, provision: str | None, args: tuple[str, ...]) -> None:
    """Add (or replace) a type: reops types add redis -d "redis server" -p flows/redis.py"""
    parsed = dict(a.partition("=")[::2] for a in args)
    if provision is not None:  # stored absolute: the hub runs it from another directory
        file, sep, func = provision.partition(":")
        path = Path(file).expanduser()
        if not path.is_file():
            raise click.BadParameter(f"{file}: no such recipe file", param_hint="--provision")
        provision = f"{path.resolve()}{sep}{func}"

    async def work(api: MachinesAPI) -> None:
        t = await api.add_type(name, description, provision, parsed)
        click.echo(f"type {t.name} added")
    _run(work)


@types.command("ls")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
def types_ls(output: str) -> None:
    """List types."""
    async def work(api: MachinesAPI) -> None:
        ts = await api.types()
        if output == "json":
            click.echo(msgspec.json.encode(ts).decode())
            return
        _table([(t.name, t.description, t.provision or "-",
                 " ".join(f"{k}={v}" for k, v in t.args.items()) or "-") for t in ts],
               ("NAME", "DESCRIPTION", "PROVISION", "ARGS"))
    _run(work)


@types.command("rm")
@click.argument("name")
def types_rm(name: str) -> None:
    """Remove a type no system uses."""
    async def work(api: MachinesAPI) -> None:
        await api.remove_type(name)
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
@click.option("--image", default=None, help="Boot from this image (reops images ls).")
def systems_create(type_name: str, presets: tuple[str, ...], count: int | None,
                   hypervisor: str | None, hostname: str | None, image: str | None) -> None:
    """Create systems of a type: reops systems create redis --preset small --count 2"""
    if image:
        presets = (*presets, f"image={image}")

    async def work(api: MachinesAPI) -> int:
        jobs = await api.create(type_name, presets, count, hypervisor, hostname)
        code = await _finish(api, jobs)
        made = {j.system_id for j in jobs}
        _print_systems([s for s in await api.systems() if s.id in made])
        return code
    sys.exit(_run(work, jobs=True))


def _address(s: System) -> str:
    """ip, with the SSH port when it is not 22 (a guest's port forward)."""
    if not s.machine.ip:
        return "-"
    return s.machine.ip if s.machine.port == 22 else f"{s.machine.ip}:{s.machine.port}"


def _print_systems(chosen: list[System]) -> None:
    rows = [
        (s.short_id, s.hostname, _address(s), s.type or "-", s.machine.os or "-",
         s.placement.hypervisor, str(s.state))
        for s in chosen
    ]
    _table(rows, ("ID", "HOSTNAME", "IP", "TYPE", "OS", "HYPERVISOR", "STATE"))


@systems.command("ls")
@click.argument("selector", default="all")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
def systems_ls(selector: str, output: str) -> None:
    """List systems: reops systems ls 'typed:redis & running'"""
    async def work(api: MachinesAPI) -> None:
        chosen = await api.systems(selector)
        if output == "json":
            click.echo(msgspec.json.encode(chosen).decode())
        else:
            _print_systems(chosen)
    _run(work)


def _lifecycle(op: JobOp, help_: str, destructive: bool) -> click.Command:
    @click.command(op, help=help_)
    @click.argument("selector")
    @click.option("--force", "-f", is_flag=True, help="Do not ask for confirmation.")
    def cmd(selector: str, force: bool) -> None:
        async def work(api: MachinesAPI) -> int:
            chosen = await api.systems(selector)
            if not chosen:
                raise MachinesError(f"no system matches {selector!r}")
            if destructive:
                _confirm(op, chosen, force)
            return await _finish(api, await api.submit(op, selector), chosen)
        sys.exit(_run(work, jobs=True))
    return cmd


LIFECYCLE: tuple[tuple[JobOp, str, bool], ...] = (
    ("start", "Start systems (VMs boot; physical machines get a Wake-on-LAN packet).", False),
    ("stop", "Stop systems: graceful shutdown, destroyed after machines.stop_timeout.", True),
    ("reload", "Destroy and re-create systems from their records (same id and size).", True),
    ("destroy", "Power off and delete systems: domain, volumes and record.", True),
    ("clear", "Forget systems' records; the machines themselves are left alone.", True),
    ("provision", "Run the systems' Type provisioning flow again.", False),
)
for _op, _help, _destructive in LIFECYCLE:
    systems.add_command(_lifecycle(_op, _help, _destructive))


@systems.command("snapshot")
@click.argument("selector")
@click.argument("name")
def systems_snapshot(selector: str, name: str) -> None:
    """Take a named snapshot of systems."""
    async def work(api: MachinesAPI) -> int:
        return await _finish(api, await api.submit("snapshot", selector, name=name))
    sys.exit(_run(work, jobs=True))


@systems.command("revert")
@click.argument("selector")
@click.argument("name")
@click.option("--force", "-f", is_flag=True, help="Do not ask for confirmation.")
def systems_revert(selector: str, name: str, force: bool) -> None:
    """Revert systems to a named snapshot."""
    async def work(api: MachinesAPI) -> int:
        chosen = await api.systems(selector)
        _confirm("revert", chosen, force)
        return await _finish(api, await api.submit("revert", selector, name=name), chosen)
    sys.exit(_run(work, jobs=True))


@systems.command("sync")
@click.option("--hypervisor", default=None, help="A [hypervisors.NAME] from config.toml.")
def systems_sync(hypervisor: str | None) -> None:
    """Import the machines that already exist on a hypervisor."""
    async def work(api: MachinesAPI) -> int:
        return await _finish(api, [await api.sync(hypervisor)])
    sys.exit(_run(work, jobs=True))


@systems.command("register")
@click.argument("hostname")
@click.option("--mac", required=True, help="MAC address for Wake-on-LAN.")
@click.option("--ip", default=None, help="Address for SSH.")
@click.option("--hypervisor", default=None, help="A [hypervisors.NAME] with kind = \"physical\".")
@click.option("--type", "type_name", default="physical", help="A type from `reops types ls`.")
@click.option("--user", default="root", show_default=True, help="SSH login user.")
def systems_register(hostname: str, mac: str, ip: str | None, hypervisor: str | None,
                     type_name: str, user: str) -> None:
    """Record a physical machine (started by Wake-on-LAN)."""
    async def work(api: MachinesAPI) -> None:
        rack = hypervisor or load_machines_config().first("physical")  # not the VMs' default
        s = await api.register(hostname, mac, ip, type_name, rack, user)
        click.echo(f"system {s.short_id} {s.hostname} registered")
    _run(work)


# ── jobs ─────────────────────────────────────────────────────────────────────────────────


@click.group()
def jobs() -> None:
    """The durable job queue."""


@jobs.command("ls")
@click.option("--limit", "-n", type=int, default=50, help="Newest N jobs.")
@click.option("--controller", default=None, metavar="NAME",
              help="Only jobs this controller ran ([hub] name; see `reops hub status`).")
def jobs_ls(limit: int, controller: str | None) -> None:
    """List jobs, oldest first."""
    async def work(api: MachinesAPI) -> None:
        names = {s.id: s.hostname for s in await api.systems()}
        rows = [
            (j.short_id, j.op, names.get(j.system_id or "", short(j.system_id or "") or "-"),
             j.state, time.strftime("%H:%M:%S", time.localtime(j.created_at)),
             (j.error or _brief(j.result))[:60])
            for j in await api.jobs(limit, controller)
        ]
        _table(rows, ("ID", "OP", "SYSTEM", "STATE", "CREATED", "RESULT"))
    _run(work)


@jobs.command("show")
@click.argument("job_id")
def jobs_show(job_id: str) -> None:
    """Show one job (any unique id prefix) as JSON."""
    async def work(api: MachinesAPI) -> None:
        click.echo(msgspec.json.format(msgspec.json.encode(await api.job(job_id))).decode())
    _run(work)


@jobs.command("wait")
@click.argument("job_id")
def jobs_wait(job_id: str) -> None:
    """Wait until a job has finished (following retries); exit 0 when it succeeded."""
    async def work(api: MachinesAPI) -> int:
        job = await api.job(job_id)
        while job.next_id:  # its retry, or the job it queued (a create's provisioning)
            job = await api.job(job.next_id)
        if not job.done:  # a finished job answers at once: no job event will come for it
            job = (await api.wait([job]))[0]
        click.echo(f"job {job.short_id} {job.state}{': ' + job.error if job.error else ''}")
        return 0 if job.state == "succeeded" else 1
    sys.exit(_run(work, jobs=True))


# ── events ───────────────────────────────────────────────────────────────────────────────


@click.command()
@click.option("--hypervisor", "names", multiple=True, help="Which hypervisors (default: all).")
@click.option("--count", "-n", type=int, default=None, help="Stop after N events.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
def events(names: tuple[str, ...], count: int | None, output: str) -> None:
    """Hypervisor lifecycle events as they happen (Ctrl-C to stop)."""
    async def work(api: MachinesAPI) -> None:
        seen = 0
        enough = asyncio.Event()

        def show(ev: HypervisorEvent) -> None:
            nonlocal seen
            if output == "json":
                click.echo(msgspec.json.encode(ev).decode())
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(ev.time))
                click.echo(f"{stamp} {ev.hypervisor} {ev.kind} {ev.name} {ev.event} {ev.detail}")
            seen += 1
            if count is not None and seen >= count:
                enough.set()

        click.echo(f"watching hypervisor events ({api.where}; Ctrl-C to stop)", err=True)
        watching = asyncio.ensure_future(api.watch(names, show))
        stop = asyncio.ensure_future(enough.wait())
        await asyncio.wait([watching, stop], return_when=asyncio.FIRST_COMPLETED)
        for t in (watching, stop):
            t.cancel()
        await asyncio.gather(watching, stop, return_exceptions=True)
    with suppress(KeyboardInterrupt):
        _run(work)
