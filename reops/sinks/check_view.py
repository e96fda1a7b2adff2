"""How a `--check` run reads on a terminal: per host its diff (the Result's `out`), then
one summary line; the terminal sink can call `lines(result)` for a host's block.

A check Result carries `data={"check": {"changes": bool, "diff": str}}`; its `out` is the
diff already (or "no change"), so any sink that prints `out` shows it. This module adds the
words a person scans for: which hosts WOULD change, which would not, which failed.
"""

from __future__ import annotations

from typing import Any

from reops.core.model import Outcome, Result


def report(r: Result) -> dict[str, Any] | None:
    """The {changes, diff} of a check Result, None when it is not one (or failed)."""
    if r.ok and isinstance(r.data, dict) and isinstance(r.data.get("check"), dict):
        return r.data["check"]
    return None


def label(r: Result) -> str:
    """The word for a host's line: `would change`, `no change`, or its failure status."""
    found = report(r)
    if found is None:
        return r.status
    return "would change" if found.get("changes") else "no change"


def lines(r: Result) -> list[str]:
    """A host's block: `web1: would change` then the diff's lines (none when unchanged)."""
    found = report(r)
    head = f"{r.host}: {label(r)}"
    if found is None:
        return [f"{head}: {r.err.strip() or r.status}"]
    diff = str(found.get("diff", ""))
    return [head, *diff.splitlines()] if found.get("changes") else [head]


def summary(out: Outcome) -> str:
    """`check: 2 hosts would change (web1, web2), 1 no change, 1 failed (db1)`."""
    changing = [r.host for r in out.results if (report(r) or {}).get("changes")]
    failed = [r.host for r in out.results if report(r) is None]
    same = len(out.results) - len(changing) - len(failed)

    def names(hosts: list[str]) -> str:
        shown = ", ".join(hosts[:8]) + (", …" if len(hosts) > 8 else "")
        return f" ({shown})" if hosts else ""

    return (f"check: {len(changing)} hosts would change{names(changing)}, {same} no change, "
            f"{len(failed)} failed{names(failed)}")
