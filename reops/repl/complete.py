"""TAB completion the Python completer cannot give: what is inside the strings that name
hosts, systems and flows.

    inv["we<TAB>             → web1 web2 …           (host names)
    inv.select("group:w<TAB> → group:web             (selector words: all, names, groups,
                                                      tags, after , & ! ( too)
    systems("<TAB>           → the store's systems   (names, when the store answers)
    flows.stop("<TAB>        → flows running in the hub

Merged with ptpython's own completer, so attributes and names complete as usual. Systems
and flows are asked for in the completer's thread, at most every few seconds.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from reops.core.inventory import Inventory

#: how long names asked of the hub or the store are reused before asking again
REFRESH_S = 5.0

#: `NAME["partial` or `NAME.select("partial` or `NAME("partial`, with the quote used
_CALL = re.compile(r"""(?P<target>[A-Za-z_][\w.]*)\s*(?P<open>\[|\()\s*(?P<q>["'])"""
                   r"""(?P<text>[^"']*)$""")
#: where one selector word starts: after an operator or a space
_WORD_START = re.compile(r"[,&!()\s]")

Names = Callable[[], Iterable[str]]


class Cached:
    """Names from a slow source (the hub, the store), refreshed at most every REFRESH_S;
    a source that fails gives no names (completion must never raise or hang)."""

    def __init__(self, source: Names) -> None:
        self._source = source
        self._names: list[str] = []
        self._at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> list[str]:
        with self._lock:
            if time.monotonic() - self._at >= REFRESH_S:
                self._at = time.monotonic()
                try:
                    self._names = sorted(set(self._source()))
                except Exception:
                    self._names = []
            return self._names


def selector_words(inv: Inventory) -> list[str]:
    """Every word a selector over `inv` may use: all, host names, group:, tag:K=V."""
    words = ["all", *inv.hosts.names]
    words += [f"group:{g}" for g in inv.groups]
    tags = sorted({(k, v) for h in inv.hosts for k, v in h.tags.items()})
    words += sorted({f"tag:{k}" for k, _ in tags}) + [f"tag:{k}={v}" for k, v in tags]
    return words


class ReopsCompleter(Completer):
    """Completes inventory selectors, host names, systems and flows inside strings."""

    def __init__(self, namespace: Callable[[], dict[str, Any]], *,
                 systems: Names | None = None, flows: Names | None = None) -> None:
        self.namespace = namespace
        self.systems = Cached(systems) if systems is not None else None
        self.flows = Cached(flows) if flows is not None else None

    def candidates(self, target: str, bracket: str) -> tuple[list[str], bool] | None:
        """(words, whether the string is a selector) for `target[` / `target(`, else None."""
        ns = self.namespace()
        head, _, method = target.rpartition(".")
        if bracket == "[" and isinstance(ns.get(target), Inventory):
            return list(ns[target].hosts.names), False
        if bracket == "(" and method == "select" and isinstance(ns.get(head), Inventory):
            return selector_words(ns[head]), True
        if bracket == "(" and target == "systems" and self.systems is not None:
            return ["all", *self.systems()], True
        if (bracket == "(" and head == "flows" and method in ("stop", "reload", "log")
                and self.flows is not None):
            return self.flows(), False
        return None

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        found = _CALL.search(document.current_line_before_cursor)
        if found is None:
            return
        got = self.candidates(found["target"], found["open"])
        if got is None:
            return
        words, selector = got
        text = found["text"]
        if selector:  # complete the word being typed, after the last operator
            starts = [m.end() for m in _WORD_START.finditer(text)]
            text = text[starts[-1]:] if starts else text
        for word in words:
            if word.startswith(text) and word != text:
                yield Completion(word, start_position=-len(text), display_meta=_meta(word))


def _meta(word: str) -> str:
    if word.startswith("group:"):
        return "group"
    if word.startswith("tag:"):
        return "tag"
    return ""
