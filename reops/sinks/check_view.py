"""How a `--check` run reads on a terminal: per host its diff (the Result's `out`), then
one summary line; the terminal sink can call `lines(outcome, host)` for a host's block.

A check Result carries `data={"check": {"changes": bool, "diff": str}}`; its `out` is the
diff already (or "no change"), so any sink that prints `out` shows it. This module adds the
words a person scans for: which hosts WOULD change, which would not, which failed.
"""

from __future__ import annotations

from reops.core.model import Outcome


def lines(out: Outcome, host: str) -> list[str]:
    """A host's block: `web1: would change` then the diff's lines (none when unchanged)."""
    found = out.check(host)
    if found["changes"] is None:
        return [f"{host}: {found.get('error', '').strip() or 'failed'}"]
    if not found["changes"]:
        return [f"{host}: no change"]
    return [f"{host}: would change", *str(found["diff"]).splitlines()]


def summary(out: Outcome) -> str:
    """`check: 2 hosts would change (web1, web2), 1 no change, 1 failed (db1)`."""
    answers = {r.host: out.check(r.host)["changes"] for r in out.results}
    changing = [h for h, c in answers.items() if c]
    failed = [h for h, c in answers.items() if c is None]
    same = len(answers) - len(changing) - len(failed)

    def names(hosts: list[str]) -> str:
        shown = ", ".join(hosts[:8]) + (", …" if len(hosts) > 8 else "")
        return f" ({shown})" if hosts else ""

    return (f"check: {len(changing)} hosts would change{names(changing)}, {same} no change, "
            f"{len(failed)} failed{names(failed)}")


def blocks(out: Outcome) -> str:
    """The diffs of the hosts that would change, hosts with the same diff gathered into one
    block (`web1, web2: would change`), in host order; "" when nothing would change."""
    gathered: dict[str, list[str]] = {}
    for host in out.hosts:
        found = out.check(host)
        if found["changes"]:
            gathered.setdefault(str(found["diff"]), []).append(host)
    return "\n".join(f"{', '.join(hosts)}: would change" + (f"\n{diff}" if diff else "")
                     for diff, hosts in gathered.items())
