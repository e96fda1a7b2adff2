"""How a `--check` run reads on a terminal: per block of hosts `would change` / `no change`,
each diff verbatim (controls made visible), then one summary line
`check: 3 would change · 17 no change · 0 errors`.

A check Result carries `data={"check": {"changes": bool, "diff": str}}`. The terminal sink
(`sinks/terminal.py`) is the one owner of this output: it asks `report` per Result and
prints `summary_text`; `-o json/jsonl` carry the same data untouched. `lines`, `blocks`
and `summary` render a finished Outcome the same way (for code that holds an Outcome).
"""

from __future__ import annotations

from typing import Any

from reops.core.model import Outcome, Result
from reops.sinks.gather import split_lines, visible
from reops.sinks.natural import fold, natural_sorted

#: hosts named in a summary (the rest are counted)
SUMMARY_NAMES = 20


def _of(step: Result) -> dict[str, Any] | None:
    if isinstance(step.data, dict) and isinstance(step.data.get("check"), dict):
        return step.data["check"]
    return None


def report(r: Result) -> dict[str, Any] | None:
    """A host's check answer over all its steps (as `Outcome.check`): {changes, diff};
    changes None when its check failed; None when no step of `r` is a check."""
    steps = r.steps
    found = [_of(s) for s in steps]
    if not any(x is not None for x in found):
        return None
    last = found[-1]
    if last is None or not steps[-1].ok:
        return {"changes": None, "diff": "", "error": steps[-1].err or steps[-1].status}
    changed = [x for x in found if x is not None and x.get("changes")]
    return {"changes": bool(changed),
            "diff": "\n".join(str(x.get("diff", "")) for x in changed if x.get("diff"))}


def word(changes: bool | None) -> str:
    """`would change` / `no change` / `error`."""
    return "error" if changes is None else "would change" if changes else "no change"


def diff_lines(diff: str) -> list[str]:
    """A diff's lines as a terminal shows them: verbatim, controls made visible."""
    return [visible(x) for x in split_lines(diff)]


def summary_text(changing: int, same: int, errors: int) -> str:
    """`check: 3 would change · 17 no change · 0 errors`."""
    return f"check: {changing} would change · {same} no change · {errors} errors"


def _answers(out: Outcome) -> dict[str, dict[str, Any]]:
    return {h: out.check(h) for h in out.hosts if h in {r.host for r in out.results}}


def lines(out: Outcome, host: str) -> list[str]:
    """A host's block: `web1: would change` then the diff's lines (none when unchanged)."""
    found = out.check(host)
    name = visible(host)
    if found["changes"] is None:
        return [f"{name}: {visible(str(found.get('error', '')).strip()) or 'failed'}"]
    if not found["changes"]:
        return [f"{name}: no change"]
    return [f"{name}: would change", *diff_lines(str(found["diff"]))]


def summary(out: Outcome) -> str:
    """`check: 2 would change · 1 no change · 1 errors` (+ ` · errors: db1`)."""
    answers = _answers(out)
    changing = [h for h, a in answers.items() if a["changes"]]
    failed = [h for h, a in answers.items() if a["changes"] is None]
    text = summary_text(len(changing), len(answers) - len(changing) - len(failed),
                        len(failed))
    return text + (f" · errors: {visible(fold(failed, SUMMARY_NAMES))}" if failed else "")


def blocks(out: Outcome) -> str:
    """Hosts gathered by identical answer, natural order: `web[1-3] (3): would change`
    then the diff; `web[4-10] (7): no change`."""
    gathered: dict[tuple[Any, str], list[str]] = {}
    answers = _answers(out)
    for host in natural_sorted(answers):
        a = answers[host]
        key = (a["changes"], str(a["diff"]) if a["changes"] else
               str(a.get("error", "")) if a["changes"] is None else "")
        gathered.setdefault(key, []).append(host)
    rows: list[str] = []
    for (changes, text), hosts in gathered.items():
        label = visible(hosts[0]) if len(hosts) == 1 else \
            f"{visible(fold(hosts))} ({len(hosts)})"
        if changes is None:
            rows.append(f"{label}: error: {visible(text.strip()) or 'failed'}")
        else:
            rows.extend([f"{label}: {word(changes)}", *diff_lines(text)])
    return "\n".join(rows)
