"""Selector expressions: pick items (hosts, machines) by name, group and tag.

A selector is a small boolean language, parsed once into a predicate and evaluated against
any sequence of items. What the words mean is pluggable (`atoms`), so the inventory and the
hypervisor's machines share one grammar and one set of error messages.

Grammar (whitespace is insignificant; `!` binds tighter than `&`, `&` tighter than `,`)::

    union  := inter ( "," inter )*          a OR b
    inter  := unary ( "&" unary )*          a AND b
    unary  := "!" unary | "(" union ")" | WORD
    WORD   := PREFIX ":" ARG | KEYWORD | NAME-OR-GLOB

`!x` alone means every item except x. A bare `!x` as one operand of `,` (`web*,!web3`) is
rejected: it would mean "web* or anything but web3", nearly everything, while the writer
almost surely meant `web* & !web3`. Parenthesize to say you mean it: `web*,(!web3)`.

Examples: `all`, `web*`, `db[12]`, `group:web & !web3`, `tag:dc=ams,tag:dc=fra`,
`(group:web,group:db) & tag:role`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
S = TypeVar("S", bound="Selectable")

Predicate = Callable[[T], bool]
#: builds a predicate from an atom's argument; raises SelectorError when the argument names
#: something that does not exist (the message says what and suggests near names)
AtomFactory = Callable[[str], Predicate[T]]

_OPERATORS = ",&!()"
_GLOB = "*?["


class SelectorError(ValueError):
    """A selector that does not parse, or names something that does not exist."""

    def __init__(self, message: str, selector: str = "", column: int | None = None) -> None:
        self.message = message
        self.selector = selector
        self.column = column  # 1-based, where the problem starts
        super().__init__(self._render())

    def _render(self) -> str:
        if self.column is None or not self.selector:
            return self.message
        caret = " " * (self.column - 1) + "^"
        return f"{self.message} (column {self.column})\n  {self.selector}\n  {caret}"

    def at(self, selector: str, column: int) -> SelectorError:
        """This error placed in `selector` at `column`, unless it already has a place."""
        if self.column is not None:
            return self
        return SelectorError(self.message, selector, column)


def hint(word: str, candidates: Iterable[str], *, limit: int = 3) -> str:
    """` (did you mean 'x' or 'y'?)` for the closest candidates, or `""` if none is close."""
    known = list(dict.fromkeys(candidates))
    import difflib  # (here: only a selector that matches nothing needs it)

    near = set(difflib.get_close_matches(word, known, n=limit, cutoff=0.6))
    if not near:
        return ""
    shown = [repr(k) for k in known if k in near]  # in the order the user knows them
    listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
    return f" (did you mean {listed}?)"


# ── syntax tree ─────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Word:
    """One atom as written, e.g. `group:web`, and its 1-based column."""

    text: str
    column: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    parenthesized: bool = False


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]


Node = Word | Not | And | Or


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word", one of ",&!()", or "end"
    text: str
    column: int


def _tokenize(selector: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(selector)
    while i < n:
        c = selector[i]
        if c.isspace():
            i += 1
        elif c in _OPERATORS:
            tokens.append(_Token(c, c, i + 1))
            i += 1
        else:
            start = i
            while i < n and not selector[i].isspace() and selector[i] not in _OPERATORS:
                if selector[i] == "[":  # a glob class may hold `!` or `,`: db[!1], x[,]
                    close = selector.find("]", i + 2)
                    if close != -1 and not any(ch.isspace() for ch in selector[i:close]):
                        i = close
                i += 1
            tokens.append(_Token("word", selector[start:i], start + 1))
    tokens.append(_Token("end", "", n + 1))
    return tokens


class _Parser:
    """Recursive descent over the token list; errors carry the column of the bad token."""

    def __init__(self, selector: str) -> None:
        self.selector = selector
        self.tokens = _tokenize(selector)
        self.pos = 0

    def error(self, message: str, token: _Token) -> SelectorError:
        return SelectorError(message, self.selector, token.column)

    @property
    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def parse(self) -> Node:
        if self.peek.kind == "end":
            raise SelectorError("empty selector (use 'all' for every host)")
        node = self.union()
        tok = self.peek
        if tok.kind == ")":
            raise self.error("unmatched ')'", tok)
        if tok.kind != "end":
            raise self.error(f"expected ',' or '&' before {tok.text!r}", tok)
        return node

    def union(self) -> Node:
        first = self.peek
        operands = [self.inter()]
        columns, commas = [first.column], [0]
        while self.peek.kind == ",":
            commas.append(self.take().column)
            columns.append(self.peek.column)
            operands.append(self.inter())
        if len(operands) == 1:
            return operands[0]
        for node, column, comma in zip(operands, columns, commas, strict=True):
            if isinstance(node, Not) and not node.parenthesized:
                sel = self.selector
                fix = (
                    f"write {sel[: comma - 1].rstrip() + ' & ' + sel[comma:].lstrip()!r}"
                    if comma
                    else "use '& !x'"
                )
                raise SelectorError(
                    "'!x' joined by ',' adds everything except x; "
                    f"to exclude, {fix} (or parenthesize '(!x)' if you mean the union)",
                    sel,
                    column,
                )
        return Or(tuple(operands))

    def inter(self) -> Node:
        operands = [self.unary()]
        while self.peek.kind == "&":
            self.take()
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def unary(self) -> Node:
        tok = self.take()
        if tok.kind == "!":
            return Not(self.unary())
        if tok.kind == "(":
            if self.peek.kind == ")":
                raise self.error("empty parentheses", self.peek)
            inner = self.union()
            close = self.take()
            if close.kind != ")":
                what = "end of selector" if close.kind == "end" else repr(close.text)
                raise self.error(
                    f"expected ')' to close the '(' at column {tok.column}, got {what}", close
                )
            return Not(inner.operand, parenthesized=True) if isinstance(inner, Not) else inner
        if tok.kind == "word":
            return Word(tok.text, tok.column)
        what = "end of selector" if tok.kind == "end" else repr(tok.text)
        raise self.error(f"expected a name, group:, tag: or '(', got {what}", tok)


def parse(selector: str) -> Node:
    """The syntax tree of `selector`; raises SelectorError with the column on bad syntax."""
    return _Parser(selector).parse()


# ── compiling: atoms give words their meaning ───────────────────────────────────────────


def _atom(word: Word, atoms: Mapping[str, AtomFactory[T]]) -> Predicate[T]:
    """The predicate for one word: `prefix:arg`, a keyword, or the fallback (names)."""
    text = word.text
    prefix, colon, arg = text.partition(":")
    if colon and f"{prefix}:" in atoms:
        if not arg:
            raise SelectorError(f"{prefix}: needs an argument, e.g. {prefix}:NAME")
        return atoms[f"{prefix}:"](arg)
    if colon:
        prefixes = [k for k in atoms if k.endswith(":")]
        raise SelectorError(
            f"unknown selector kind '{prefix}:'{hint(prefix + ':', prefixes)}; "
            f"known: {', '.join(prefixes) or 'none'}"
        )
    if text in atoms:
        return atoms[text](text)
    if "" not in atoms:
        raise SelectorError(f"unknown word {text!r}{hint(text, atoms)}")
    return atoms[""](text)


def compile(selector: str, atoms: Mapping[str, AtomFactory[T]]) -> Predicate[T]:
    """A predicate for `selector`, with words interpreted by `atoms`.

    Keys of `atoms`: `"prefix:"` handles `prefix:ARG` (called with ARG); a plain word such
    as `"all"` or `"running"` is a keyword (called with the word itself); `""` handles
    every other word (names and globs). Factories run now, so a word that names nothing
    fails here, with its column.
    """
    tree = parse(selector)

    def build(node: Node) -> Predicate[T]:
        if isinstance(node, Word):
            try:
                return _atom(node, atoms)
            except SelectorError as e:
                raise e.at(selector, node.column) from None
        if isinstance(node, Not):
            inner = build(node.operand)
            return lambda item: not inner(item)
        parts = [build(op) for op in node.operands]
        if isinstance(node, And):
            return lambda item: all(p(item) for p in parts)
        return lambda item: any(p(item) for p in parts)

    return build(tree)


def select(items: Iterable[T], selector: str, atoms: Mapping[str, AtomFactory[T]]) -> list[T]:
    """The items matching `selector`, in their original order."""
    pred = compile(selector, atoms)
    return [item for item in items if pred(item)]


# ── the standard atoms: all, names/globs, group:, tag: ──────────────────────────────────


class Selectable(Protocol):
    """What the standard atoms need from an item (Host fits; so can a machine)."""

    @property
    def name(self) -> str: ...
    @property
    def groups(self) -> Sequence[str]: ...
    @property
    def tags(self) -> Mapping[str, str]: ...


def is_glob(word: str) -> bool:
    return any(c in word for c in _GLOB)


@dataclass(frozen=True)
class StandardAtoms(Generic[S]):
    """Builds `all`, name/glob, `group:` and `tag:` atoms over a fixed list of items."""

    items: Sequence[S]
    known_groups: Iterable[str] = ()
    noun: str = "host"

    def names(self, word: str) -> Predicate[S]:
        names = [i.name for i in self.items]
        if is_glob(word):
            if not any(fnmatch.fnmatchcase(n, word) for n in names):
                stem = word.split("*")[0].split("?")[0].split("[")[0]
                raise SelectorError(f"no {self.noun} matches {word!r}{hint(stem, names)}")
            return lambda item: fnmatch.fnmatchcase(item.name, word)
        if word not in names:
            raise SelectorError(f"no {self.noun} named {word!r}{hint(word, names)}")
        return lambda item: item.name == word

    def group(self, name: str) -> Predicate[S]:
        known = [*self.known_groups, *(g for i in self.items for g in i.groups)]
        if name not in known:
            raise SelectorError(f"no group {name!r}{hint(name, known)}")
        return lambda item: name in item.groups

    def tag(self, arg: str) -> Predicate[S]:
        key, eq, value = arg.partition("=")
        keys = [k for i in self.items for k in i.tags]
        if key not in keys:
            near = hint(key, keys) or f"; tags in use: {', '.join(sorted(set(keys))[:12])}"
            raise SelectorError(f"no {self.noun} has tag {key!r}{near}")
        if not eq:
            return lambda item: key in item.tags
        values = [i.tags[key] for i in self.items if key in i.tags]
        if value not in values:
            shown = ", ".join(sorted(set(values))[:8])
            raise SelectorError(
                f"no {self.noun} has tag {key}={value}{hint(value, values)}; "
                f"values of {key!r}: {shown}"
            )
        return lambda item: item.tags.get(key) == value

    def atoms(self) -> dict[str, AtomFactory[S]]:
        return {
            "all": lambda _: lambda item: True,
            "": self.names,
            "group:": self.group,
            "tag:": self.tag,
        }


def standard_atoms(
    items: Sequence[S], known_groups: Iterable[str] = (), noun: str = "host"
) -> dict[str, AtomFactory[S]]:
    """`all`, names/globs, `group:NAME`, `tag:KEY[=VALUE]` over `items`; extend with more."""
    return StandardAtoms(items, tuple(known_groups), noun).atoms()


__all__ = [
    "And",
    "AtomFactory",
    "Node",
    "Not",
    "Or",
    "Predicate",
    "Selectable",
    "SelectorError",
    "Word",
    "compile",
    "hint",
    "is_glob",
    "parse",
    "select",
    "standard_atoms",
]
