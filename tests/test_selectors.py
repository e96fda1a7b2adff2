"""Selectors: exact messages for mistakes, and the algebra checked against a set model."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reops.core.inventory import Inventory, loads
from reops.core.selector import (
    And,
    Not,
    Or,
    SelectorError,
    Word,
    compile,
    parse,
    select,
    standard_atoms,
)

# ── a fixed inventory for example-based tests ───────────────────────────────────────────

FLEET = """\
[groups.web]
[groups.db]
[groups.empty]

[hosts.web1]
groups = ["web"]
tags = { dc = "ams", role = "frontend" }
[hosts.web2]
groups = ["web"]
tags = { dc = "fra", role = "frontend" }
[hosts.web3]
groups = ["web", "canary"]
tags = { dc = "ams" }
[hosts.db1]
groups = ["db"]
tags = { dc = "ams", role = "primary" }
[hosts.db2]
groups = ["db"]
tags = { dc = "fra", role = "replica" }
[hosts.lb]
"""


@pytest.fixture(scope="module")
def fleet() -> Inventory:
    return loads(FLEET, "fleet.toml")


GOOD = [
    ("all", ["web1", "web2", "web3", "db1", "db2", "lb"]),
    ("web*", ["web1", "web2", "web3"]),
    ("db[12]", ["db1", "db2"]),
    ("db[!1]", ["db2"]),
    ("?b", ["lb"]),
    ("lb", ["lb"]),
    ("group:web", ["web1", "web2", "web3"]),
    ("group:canary", ["web3"]),  # implicit group: only named by a host
    ("group:empty", []),  # defined, no members: a valid, empty result
    ("tag:dc=ams", ["web1", "web3", "db1"]),
    ("tag:role", ["web1", "web2", "db1", "db2"]),
    ("db2, web1", ["web1", "db2"]),  # inventory order, not selector order
    ("group:web & !web3", ["web1", "web2"]),
    ("group:web&tag:dc=ams", ["web1", "web3"]),
    ("!group:web", ["db1", "db2", "lb"]),
    ("!web1", ["web2", "web3", "db1", "db2", "lb"]),
    ("!!lb", ["lb"]),
    ("group:db , tag:dc=ams & group:web", ["web1", "web3", "db1", "db2"]),  # & before ,
    ("(group:db , tag:dc=ams) & group:web", ["web1", "web3"]),
    ("!(group:web , group:db)", ["lb"]),
    ("!group:web & !group:db", ["lb"]),  # ! before &
    ("web1,(!group:web)", ["web1", "db1", "db2", "lb"]),  # a parenthesized `!` in a union
    ("  ( ( web1 ) )  ", ["web1"]),
    ("group:web & group:db", []),
]


@pytest.mark.parametrize(("selector", "names"), GOOD)
def test_select(fleet: Inventory, selector: str, names: list[str]) -> None:
    assert fleet.select(selector).names == names


BAD = [
    ("", "empty selector (use 'all' for every host)"),
    ("   ", "empty selector (use 'all' for every host)"),
    (
        "web1,",
        "expected a name, group:, tag: or '(', got end of selector (column 6)\n  web1,\n       ^",
    ),
    (
        "web1 web2",
        "expected ',' or '&' before 'web2' (column 6)\n  web1 web2\n       ^",
    ),
    (
        "(web1",
        "expected ')' to close the '(' at column 1, got end of selector (column 6)\n"
        "  (web1\n       ^",
    ),
    ("web1)", "unmatched ')' (column 5)\n  web1)\n      ^"),
    ("()", "empty parentheses (column 2)\n  ()\n   ^"),
    ("& web1", "expected a name, group:, tag: or '(', got '&' (column 1)\n  & web1\n  ^"),
    (
        "group:web,!web3",
        "'!x' joined by ',' adds everything except x; to exclude, write 'group:web & !web3' "
        "(or parenthesize '(!x)' if you mean the union) (column 11)\n"
        "  group:web,!web3\n"
        "            ^",
    ),
    (
        "web9",
        "no host named 'web9' (did you mean 'web1', 'web2' or 'web3'?) (column 1)\n  web9\n  ^",
    ),
    ("zzz*", "no host matches 'zzz*' (column 1)\n  zzz*\n  ^"),
    (
        "group:web & group:wbe",
        "no group 'wbe' (did you mean 'web'?) (column 13)\n"
        "  group:web & group:wbe\n"
        "              ^",
    ),
    (
        "grup:web",
        "unknown selector kind 'grup:' (did you mean 'group:'?); known: group:, tag: "
        "(column 1)\n  grup:web\n  ^",
    ),
    ("group:", "group: needs an argument, e.g. group:NAME (column 1)\n  group:\n  ^"),
    ("tag:rack", "no host has tag 'rack'; tags in use: dc, role (column 1)\n  tag:rack\n  ^"),
    (
        "tag:dc=ams1",
        "no host has tag dc=ams1 (did you mean 'ams'?); values of 'dc': ams, fra (column 1)\n"
        "  tag:dc=ams1\n"
        "  ^",
    ),
]


@pytest.mark.parametrize(("selector", "message"), BAD)
def test_bad_selector(fleet: Inventory, selector: str, message: str) -> None:
    with pytest.raises(SelectorError) as e:
        fleet.select(selector)
    assert str(e.value) == message


def test_selector_error_is_a_value_error() -> None:
    assert issubclass(SelectorError, ValueError)


def test_parse_tree() -> None:
    assert parse("a, b & !c") == Or((Word("a", 1), And((Word("b", 4), Not(Word("c", 9))))))


# ── pluggable atoms, as the machines feature uses them ──────────────────────────────────


@dataclass(frozen=True)
class Machine:
    name: str
    groups: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    type: str = ""
    running: bool = False


MACHINES = [
    Machine("vm1", type="web", running=True, tags={"os": "debian"}),
    Machine("vm2", type="db", tags={"os": "alpine"}),
    Machine("vm3", type="web", groups=("lab",)),
]


def machine_atoms() -> dict[str, Callable[[str], Callable[[Machine], bool]]]:
    base = standard_atoms(MACHINES, noun="machine")
    fallback = base[""]

    def typed(t: str) -> Callable[[Machine], bool]:
        return lambda m: m.type == t

    def key_value_or_name(word: str) -> Callable[[Machine], bool]:
        if "=" in word:
            k, _, v = word.partition("=")
            return lambda m: str(getattr(m, k, None)) == v
        return fallback(word)

    return {
        **base,
        "typed:": typed,
        "running": lambda _: lambda m: m.running,
        "": key_value_or_name,
    }


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("typed:web", ["vm1", "vm3"]),
        ("typed:web & !running", ["vm3"]),
        ("running, group:lab", ["vm1", "vm3"]),
        ("type=db", ["vm2"]),
        ("tag:os=alpine, vm1", ["vm1", "vm2"]),
        ("all & !vm*", []),
    ],
)
def test_extra_atoms(selector: str, names: list[str]) -> None:
    assert [m.name for m in select(MACHINES, selector, machine_atoms())] == names


def test_extra_atoms_errors_use_the_noun_and_list_prefixes() -> None:
    with pytest.raises(SelectorError, match=r"no machine named 'vm9'"):
        select(MACHINES, "vm9", machine_atoms())
    with pytest.raises(
        SelectorError, match=r"did you mean 'typed:'\?\); known: group:, tag:, typed:"
    ):
        select(MACHINES, "type:web", machine_atoms())


def test_without_a_fallback_unknown_words_are_errors() -> None:
    atoms = {"running": machine_atoms()["running"]}
    with pytest.raises(SelectorError, match=r"unknown word 'runing' \(did you mean 'running'\?\)"):
        compile("runing", atoms)


# ── the algebra, against a set model ────────────────────────────────────────────────────

GROUPS = ["g1", "g2", "g3"]
TAGS = {"dc": ["x", "y"], "role": ["p", "q"]}
Tree = tuple[Any, ...]


@dataclass(frozen=True)
class Spec:
    """A random inventory: ordered hosts with groups and tags."""

    hosts: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], ...]

    def toml(self) -> str:
        lines = [f"[groups.{g}]" for g in GROUPS]
        for name, groups, tags in self.hosts:
            lines.append(f"[hosts.{name}]")
            lines.append("groups = [" + ", ".join(f'"{g}"' for g in groups) + "]")
            lines.append("tags = {" + ", ".join(f'{k} = "{v}"' for k, v in tags) + "}")
        return "\n".join(lines) + "\n"

    @property
    def names(self) -> list[str]:
        return [h[0] for h in self.hosts]

    def leaves(self) -> list[str]:
        """Atoms that name something that exists, so they always compile."""
        out = ["all", *self.names, *(f"group:{g}" for g in GROUPS)]
        out += sorted({n[0] + "*" for n in self.names})
        out += sorted({n[:-1] + "?" for n in self.names if len(n) > 1})
        for _, _, tags in self.hosts:
            for k, v in tags:
                out += [f"tag:{k}", f"tag:{k}={v}"]
        return sorted(set(out))

    def atom(self, word: str) -> set[str]:
        """The model's meaning of one atom, written independently of the implementation."""
        if word == "all":
            return set(self.names)
        if word.startswith("group:"):
            return {n for n, gs, _ in self.hosts if word[6:] in gs}
        if word.startswith("tag:"):
            k, eq, v = word[4:].partition("=")
            return {
                n
                for n, _, ts in self.hosts
                if any(tk == k and (not eq or tv == v) for tk, tv in ts)
            }
        return {n for n in self.names if fnmatch.fnmatchcase(n, word)}

    def model(self, tree: Tree) -> set[str]:
        kind = tree[0]
        if kind == "atom":
            return self.atom(tree[1])
        if kind == "not":
            return set(self.names) - self.model(tree[1])
        parts = [self.model(t) for t in tree[1]]
        return set.intersection(*parts) if kind == "and" else set.union(*parts)


name_st = st.text("abwd", min_size=1, max_size=3).map(lambda s: s + "1")


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    names = draw(st.lists(name_st, min_size=1, max_size=8, unique=True))
    hosts = []
    for n in names:
        groups = tuple(draw(st.lists(st.sampled_from(GROUPS), unique=True, max_size=3)))
        tags = tuple(
            (k, draw(st.sampled_from(vs))) for k, vs in TAGS.items() if draw(st.booleans())
        )
        hosts.append((n, groups, tags))
    return Spec(tuple(hosts))


def trees(leaves: list[str]) -> st.SearchStrategy[Tree]:
    return st.recursive(
        st.sampled_from(leaves).map(lambda w: ("atom", w)),
        lambda sub: st.one_of(
            sub.map(lambda t: ("not", t)),
            st.lists(sub, min_size=2, max_size=3).map(lambda ts: ("and", tuple(ts))),
            st.lists(sub, min_size=2, max_size=3).map(lambda ts: ("or", tuple(ts))),
        ),
        max_leaves=8,
    )


PRECEDENCE = {"or": 0, "and": 1, "not": 2, "atom": 3}


def render(tree: Tree, draw: st.DrawFn, context: int = 0) -> str:
    """Tree → selector text with random spacing and optional redundant parentheses.

    Adds the parentheses precedence requires, and those the `,!` rule requires.
    """
    kind = tree[0]
    ws = lambda: draw(st.sampled_from(["", " ", "  "]))  # noqa: E731
    if kind == "atom":
        text = tree[1]
    elif kind == "not":
        text = "!" + ws() + render(tree[1], draw, PRECEDENCE["not"])
    else:
        sep = "," if kind == "or" else "&"
        text = (ws() + sep + ws()).join(render(t, draw, PRECEDENCE[kind] + 1) for t in tree[1])
    needs = PRECEDENCE[kind] < context or (kind == "not" and context == PRECEDENCE["or"] + 1)
    if needs or (draw(st.booleans()) and draw(st.booleans())):
        text = "(" + ws() + text + ws() + ")"
    return text


@st.composite
def cases(draw: st.DrawFn, n: int = 1) -> tuple[Spec, Inventory, list[tuple[Tree, str]]]:
    spec = draw(specs())
    inv = loads(spec.toml(), "prop.toml")
    exprs = []
    for _ in range(n):
        tree = draw(trees(spec.leaves()))
        exprs.append((tree, render(tree, draw)))
    return spec, inv, exprs


PROP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(cases())
def test_select_matches_the_set_model_in_inventory_order(case: Any) -> None:
    spec, inv, [(tree, text)] = case
    expected = spec.model(tree)
    assert inv.select(text).names == [n for n in spec.names if n in expected], text


def names(inv: Inventory, text: str) -> set[str]:
    return set(inv.select(text).names)


@PROP
@given(cases(n=2))
def test_union_commutes_and_intersection_commutes(case: Any) -> None:
    _, inv, [(_, a), (_, b)] = case
    assert names(inv, f"({a}),({b})") == names(inv, f"({b}),({a})")
    assert names(inv, f"({a})&({b})") == names(inv, f"({b})&({a})")


@PROP
@given(cases())
def test_complement_laws(case: Any) -> None:
    spec, inv, [(_, a)] = case
    assert names(inv, f"({a}) & !({a})") == set()
    assert names(inv, f"({a}),(!({a}))") == set(spec.names)
    assert names(inv, f"!!({a})") == names(inv, a)
    assert names(inv, f"!({a})") == set(spec.names) - names(inv, a)


@PROP
@given(cases(n=2))
def test_de_morgan(case: Any) -> None:
    _, inv, [(_, a), (_, b)] = case
    assert names(inv, f"!(({a}),({b}))") == names(inv, f"!({a}) & !({b})")
    assert names(inv, f"!(({a})&({b}))") == names(inv, f"(!({a})),(!({b}))")


@PROP
@given(cases())
def test_parentheses_are_idempotent(case: Any) -> None:
    _, inv, [(_, a)] = case
    assert inv.select(f"(({a}))") == inv.select(a) == inv.select(f" ( {a} ) ")


@PROP
@given(cases(n=3))
def test_intersection_distributes_over_union(case: Any) -> None:
    _, inv, [(_, a), (_, b), (_, c)] = case
    assert names(inv, f"({a}) & (({b}),({c}))") == names(inv, f"({a})&({b}),({a})&({c})")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab*?[]!,&() :=g", max_size=12))
def test_any_text_either_selects_or_raises_selector_error(text: str) -> None:
    inv = loads('[hosts.a]\ngroups = ["g"]\n[hosts.b]\n', "t.toml")
    try:
        result = inv.select(text)
    except SelectorError as e:
        assert str(e)
    else:
        assert set(result.names) <= {"a", "b"}
