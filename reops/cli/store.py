"""`reops store migrate`: create or upgrade the durable store's schema, and say what it did.

The engine is the one `[store] url` (or $REOPS_STORE_URL) names; a controller does the same
when it opens the store, so this is for upgrading ahead of time or checking a new database.
"""

from __future__ import annotations

import click


@click.group("store")
def store_cmd() -> None:
    """The durable store (SQLite by default; PostgreSQL with [store] url)."""


@store_cmd.command("migrate")
@click.option("--url", help="The store to migrate (default: [store] url, REOPS_STORE_URL,"
              " else SQLite in ~/.reops).")
def migrate_cmd(url: str | None) -> None:
    """Create or upgrade the schema of every part of the store (machines, flows)."""
    import msgspec

    from reops.cli.main import fail
    from reops.core.settings import ConfigError
    from reops.store.base import Migrating, StoreError
    from reops.store.engines import load_store_settings, open_flows, open_machines

    lines: list[str] = []
    try:
        settings = load_store_settings()
        if url is not None:
            settings = msgspec.structs.replace(settings, url=url)
        for name, opener in (("machines", open_machines), ("flows", open_flows)):
            part: Migrating = opener(settings)
            try:
                done = (f"applied migration(s) {', '.join(map(str, part.applied))}"
                        if part.applied else "already up to date")
                lines.append(f"{name}: {part.where}: schema version {part.schema_version}"
                             f" ({done})")
            finally:
                part.close()
    except (StoreError, ConfigError) as e:
        fail(str(e))
    for line in lines:
        click.echo(line)
