"""`reops images ls|add|rm|build`: base images in the embedded hypervisor's pool.

An image is a base volume systems get overlays on (`reops systems create … --image NAME`),
plus how it boots (reops.systems.images). Exit codes: 0 done, 2 bad input (one line).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reops.cli.main import UserError

if TYPE_CHECKING:
    from reops.systems.libvirt.pools import Pool

# Function-level imports below are on purpose: `reops images --help` loads no machinery.


@contextmanager
def _errors() -> Iterator[None]:
    from reops.store.model import MachinesError

    try:
        yield
    except MachinesError as e:
        raise UserError(str(e).splitlines()[0]) from None


def _pool(hypervisor: str | None) -> tuple[Pool, str]:
    from reops.systems import images
    from reops.systems.config import load_machines_config

    cfg = load_machines_config().hypervisor(hypervisor)
    return images.pool_for(cfg.uri, cfg.pool), f"pool {cfg.pool!r} of hypervisor {cfg.name!r}"


_HYP = click.option("--hypervisor", default=None, help="A [hypervisors.NAME] from config.toml.")


@click.group("images")
def images_cmd() -> None:
    """Base images: reops images build tiny; reops systems create web --image tiny"""


@images_cmd.command("ls")
@_HYP
def images_ls(hypervisor: str | None) -> None:
    """List the images in the pool."""
    from reops.systems import images

    with _errors():
        pool, where = _pool(hypervisor)
        found = images.images(pool)
    if not found:
        click.echo(f"no images in {where}: reops images build tiny, or "
                   "reops images add NAME FILE.qcow2", err=True)
        return
    rows = [(i.name, i.kind, i.volume, i.user, i.source) for i in found]
    widths = [max(len(r[c]) for r in [("NAME", "KIND", "VOLUME", "USER", "SOURCE"), *rows])
              for c in range(5)]
    for r in [("NAME", "KIND", "VOLUME", "USER", "SOURCE"), *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@images_cmd.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--user", default="root", show_default=True,
              help="The login user cloud-init gives the controller's key to.")
@_HYP
def images_add(name: str, file: Path, user: str, hypervisor: str | None) -> None:
    """Add a bootable qcow2 (e.g. debian-12-genericcloud-amd64.qcow2) as image NAME."""
    from reops.systems import images

    with _errors():
        pool, where = _pool(hypervisor)
        img = images.add(pool, name, file, user)
    click.echo(f"added image {img.name} ({img.volume}) to {where}")


@images_cmd.command("rm")
@click.argument("name")
@_HYP
def images_rm(name: str, hypervisor: str | None) -> None:
    """Delete image NAME (refused while systems are made from it)."""
    import asyncio

    from reops.systems import images
    from reops.systems.api import connect

    async def users() -> list[str]:
        api = await connect(queue=False)
        try:
            return [s.hostname for s in await api.systems("all") if s.machine.image == name]
        finally:
            await api.aclose()

    with _errors():
        pool, where = _pool(hypervisor)
        images.remove(pool, name, asyncio.run(users()))
    click.echo(f"removed image {name} from {where}")


@images_cmd.command("build")
@click.argument("what", type=click.Choice(["tiny"]))
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Where built images are kept, per package versions [~/.reops/cache/images].")
@_HYP
def images_build(what: str, cache: Path | None, hypervisor: str | None) -> None:
    """Build the tiny guest from this machine's Debian packages (kernel, busybox, dropbear)."""
    from reops.systems import images

    with _errors():
        pool, where = _pool(hypervisor)
        img = images.install_tiny(pool, cache)
    made = ", ".join(f"{k} {v}" for k, v in img.versions.items())
    click.echo(f"built image {img.name} into {where} from {made}")
