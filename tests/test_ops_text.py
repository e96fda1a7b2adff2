"""The shared script protocol: markers, sections, changed markers, failure messages."""

from __future__ import annotations

import subprocess

import pytest

from reops.ops.text import (
    CHANGED,
    UNCHANGED,
    changed_marker,
    dq,
    fail,
    key_values,
    marker,
    markers,
    script,
    sections,
    without_markers,
)


def sh(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("out", "expected"), [
    ("", {}),
    ("noise\n::reops:: a\n1\n2\n::reops:: b\n", {"a": "1\n2", "b": ""}),
    ("::reops:: a\n::reops:: a\nx\n", {"a": "x"}),  # a repeated section: the last wins
    ("# label line\n::reops:: only\n  keep spaces  \n", {"only": "  keep spaces  "}),
])
def test_sections(out: str, expected: dict[str, str]) -> None:
    assert sections(out) == expected


@pytest.mark.parametrize(("out", "expected"), [
    ("", None),
    ("::reops:: manager\napt\n", None),
    ("::reops:: unchanged\n", False),
    ("::reops:: changed\n", True),
    ("::reops:: unchanged\n::reops:: changed\n", True),  # any change counts
    ("::reops:: changed\n::reops:: unchanged\n", True),
])
def test_changed_marker(out: str, expected: bool | None) -> None:
    assert changed_marker(0, out) is expected


def test_markers_are_printed_by_the_shell() -> None:
    out = sh(script(marker("one"), "echo body", CHANGED, UNCHANGED)).stdout
    assert markers(out) == ["one", "changed", "unchanged"]
    assert without_markers(out) == "body"


def test_marker_names_are_words() -> None:
    with pytest.raises(ValueError, match="plain words"):
        marker("a b; rm -rf /")


@pytest.mark.parametrize("message", [
    "plain", 'with "double" quotes', "dollar $HOME and `backticks`", "back\\slash \\n",
    "it's",
])
def test_fail_prints_exactly_the_message_and_exits(message: str) -> None:
    p = sh(fail(69, message))
    assert p.returncode == 69
    assert p.stderr == f"reops: {message}\n"
    assert sh(f"printf %s {dq(message)}").stdout == message


@pytest.mark.parametrize(("text", "sep", "expected"), [
    ('ID=debian\nVERSION_ID="12"\nNAME=\'x y\'\n\nbad line\n', "=",
     {"ID": "debian", "VERSION_ID": "12", "NAME": "x y"}),
    ("MemTotal:  123 kB\nSwapTotal: 0 kB\n", ":", {"MemTotal": "123 kB", "SwapTotal": "0 kB"}),
    ("A=b=c\n", "=", {"A": "b=c"}),
])
def test_key_values(text: str, sep: str, expected: dict[str, str]) -> None:
    assert key_values(text, sep) == expected
