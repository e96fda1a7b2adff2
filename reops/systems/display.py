"""Systems as a list that displays itself: a table in a terminal (rich) and a notebook.

`reops.systems.live.systems()` returns one, so `systems("running")` in the REPL or a
notebook reads as a table (id, host, type, state, where, address) instead of a wall of
reprs; it is still a plain `list[System]` for code.
"""

from __future__ import annotations

from typing import Any

from reops.core.display import MAX_ROWS, html_table, plain, rich_table
from reops.store.model import System

HEADS = ("id", "hostname", "type", "state", "hypervisor", "address")


def row(s: System) -> tuple[str, ...]:
    """One System as the table's cells."""
    return (s.short_id, s.machine.fqdn, s.type, s.state, s.placement.hypervisor,
            s.machine.ip or "")


class Systems(list[System]):
    """A list of System that shows as a table (`… N more` past 20 rows)."""

    def _caption(self) -> str:
        states: dict[str, int] = {}
        for s in self:
            states[s.state] = states.get(s.state, 0) + 1
        detail = " · ".join(f"{n} {k}" for k, n in sorted(states.items()))
        return f"{len(self)} systems" + (f" ({detail})" if detail else "")

    def __rich__(self) -> Any:
        """The table in a terminal."""
        return rich_table(self._caption(), HEADS, [row(s) for s in self[:MAX_ROWS]],
                          more=max(0, len(self) - MAX_ROWS))

    def _repr_html_(self) -> str:
        """The table in a notebook, every cell escaped."""
        return html_table(self._caption(), HEADS, [row(s) for s in self[:MAX_ROWS]],
                          kind="systems", more=max(0, len(self) - MAX_ROWS))

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython's text display: the table without colours."""
        p.text(plain(self.__rich__()))

    def __repr__(self) -> str:
        names = ", ".join(s.hostname for s in self[:8])
        more = "" if len(self) <= 8 else f", … (+{len(self) - 8})"
        return f"Systems({names}{more})"
