"""Which engine: `[store] url` in config.toml (or $REOPS_STORE_URL) picks it.

    [store]
    url = "postgresql://reops@db1/reops"   # shared by several controllers
    # url = "sqlite:///var/lib/reops"      # a directory: machines.db and flows.db in it
    # unset: SQLite in reops' home (~/.reops), the embedded default

Opening a store migrates its schema (so a controller that starts is on the current one);
`reops store migrate` does only that and says what it did.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from reops.core.settings import Seconds, home, load_table
from reops.store.base import JobStore, StoreError
from reops.store.flows import AUDIT_KEEP, FlowStore, SqliteFlowStore
from reops.store.sqlite import Store

SCHEMES = ("postgresql://", "postgres://", "sqlite://")


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the durable store lives and how long to wait for it."""

    url: str = ""  # "": SQLite in reops' home
    connect_timeout: Seconds = 10.0  # seconds to wait for PostgreSQL to accept us
    # the shared job queue (several controllers): a claim's lease (renewed every third of
    # it; a dead controller's jobs are taken over after it), the polling fallback behind
    # LISTEN/NOTIFY, and how many jobs a controller claims (and holds) at once
    lease: Seconds = 30.0
    poll: Seconds = 2.0
    claim_batch: int = 16


def load_store_settings(path: Path | None = None) -> StoreSettings:
    """[store] from config.toml, then REOPS_STORE_* variables (REOPS_STORE_URL)."""
    return load_table(StoreSettings, "store", "REOPS_STORE_", path)


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_dir(url: str, root: Path | None = None) -> Path:
    """The directory an SQLite store's files live in: the URL's path, else reops' home."""
    if not url:
        return root or home()
    if not url.startswith("sqlite://"):
        raise StoreError(
            f"[store] url {url!r} (config.toml or REOPS_STORE_URL): must start with"
            " postgresql:// or sqlite:/// (a directory), or be unset for SQLite in"
            f" {root or '~/.reops'}")
    path = url.removeprefix("sqlite://")
    if not path.startswith("/"):
        raise StoreError(f"[store] url {url!r}: give an absolute directory, e.g."
                         " sqlite:///var/lib/reops")
    return Path(path)


def open_machines(settings: StoreSettings | None = None,
                  root: Path | None = None) -> JobStore:
    """The Types/Systems/Jobs store the settings name, opened and migrated."""
    s = settings or load_store_settings()
    if is_postgres(s.url):
        from reops.store.postgres import PgStore

        return PgStore(s.url, s.connect_timeout)
    return Store(sqlite_dir(s.url, root) / "machines.db")


def open_flows(settings: StoreSettings | None = None, root: Path | None = None,
               keep: int = AUDIT_KEEP) -> FlowStore:
    """The flows' store the settings name, opened and migrated."""
    s = settings or load_store_settings()
    if is_postgres(s.url):
        from reops.store.pg_flows import PgFlowStore

        return PgFlowStore(s.url, keep, s.connect_timeout)
    return SqliteFlowStore(sqlite_dir(s.url, root) / "flows.db", keep)


def machines_store(root: Path | None = None) -> JobStore:
    """The systems' and jobs' store: SQLite in `root` when given (tests, a private home),
    else the engine `[store] url` names (PostgreSQL: shared by several controllers)."""
    if root is not None:
        return Store(root / "machines.db")
    return open_machines()


def embedded_dir(root: Path | None = None) -> Path:
    """Where the hub's flows keep their SQLite file: `root`, else the directory
    `[store] url = "sqlite:///DIR"` names, else reops' home. Flows do not run on
    PostgreSQL yet (systems and jobs do: `machines_store`), so a PostgreSQL url is refused
    in one line here instead of being silently ignored."""
    if root is not None:
        return root
    s = load_store_settings()
    if is_postgres(s.url):
        scheme = s.url.split("://", 1)[0]
        raise StoreError(
            f"[store] url = {scheme}://… (config.toml or REOPS_STORE_URL): the hub's flows"
            " do not run on PostgreSQL yet (systems and jobs do); unset it (or give"
            " sqlite:///DIR) to use SQLite")
    return sqlite_dir(s.url)
