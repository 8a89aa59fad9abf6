"""The line scanner (POLICY.md §2.13): the line of every header, key and array element."""

from __future__ import annotations

import json
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.policy.lang.lines import Lines, Path, scan

TEXT = '''\
# a comment with [brackets] and key = "value"
version = 1
"name" = 'doc'
[mtls]
mode = "strict"
[mtls.services]
"billing-legacy" = "permissive"
[[allow]]
name = "a"
methods = [
  "GET",   # a comment
  "POST",
]
headers = { "x-tenant" = "acme", 'x-q' = { prefix = "q" } }
description = """
[[deny]] inside a string
"""
[[allow]]
name = "b"
[[resilience]]
[resilience.retries]
budget.ratio = 0.2
'''

EXPECTED: list[tuple[Path, int]] = [
    (("version",), 2),
    (("name",), 3),
    (("mtls",), 4),
    (("mtls", "mode"), 5),
    (("mtls", "services"), 6),
    (("mtls", "services", "billing-legacy"), 7),
    (("allow",), 8),
    (("allow", 0), 8),
    (("allow", 0, "name"), 9),
    (("allow", 0, "methods"), 10),
    (("allow", 0, "methods", 0), 11),
    (("allow", 0, "methods", 1), 12),
    (("allow", 0, "headers", "x-tenant"), 14),
    (("allow", 0, "headers", "x-q", "prefix"), 14),
    (("allow", 0, "description"), 15),
    (("allow", 1), 18),
    (("allow", 1, "name"), 19),
    (("resilience", 0), 20),
    (("resilience", 0, "retries"), 21),
    (("resilience", 0, "retries", "budget", "ratio"), 22),
    # not present: the nearest known parent
    (("allow", 1, "to"), 18),
    (("allow", 0, "methods", 7), 10),
    (("deny",), 1),  # nowhere in the text: line 1 of the file
]


@pytest.mark.parametrize(("path", "line"), EXPECTED, ids=[repr(p) for p, _ in EXPECTED])
def test_line_of_every_path(path: Path, line: int) -> None:
    assert scan(TEXT).line(path) == line


def test_deny_inside_a_string_is_not_a_header() -> None:
    assert ("deny", 0) not in scan(TEXT).lines


@pytest.mark.parametrize("text", ["x = [1,\n", "[a\n", 'x = "unclosed\n', "= 1\n"])
def test_broken_text_keeps_what_was_found(text: str) -> None:
    found = scan("v = 1\n" + text)
    assert found.line(("v",)) == 1


def test_data_without_text_has_line_0() -> None:
    assert Lines().line(("a", 0, "b")) == 0


# -- property: a rendered document's keys are found where the renderer put them ---------------

KEYS = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
STRINGS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
LINES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\n"), max_size=12
)
SCALARS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.text(
        st.characters(blacklist_categories=("Cs", "Co"), blacklist_characters="\x7f"), max_size=12
    ).map(
        lambda s: json.dumps(s, ensure_ascii=False)  # a basic string, escapes included
    ),
    STRINGS.filter(lambda s: "'" not in s).map(lambda s: f"'{s}'"),
    LINES.filter(lambda s: "'''" not in s and not s.endswith("'")).map(lambda s: f"'''{s}'''"),
    st.just('"""a "quoted" \\""" [[b]]\n c"""'),
    st.just("2026-09-01T18:00:00Z"),
)


@st.composite
def rendered(draw: st.DrawFn) -> tuple[str, dict[Path, int]]:
    """TOML text of tables of keys (some values multi-line arrays) and where each one starts."""
    out: list[str] = []
    expected: dict[Path, int] = {}

    def add(path: Path | None, text: str) -> None:
        if path is not None:
            expected[path] = 1 + sum(piece.count("\n") + 1 for piece in out)
        out.append(text)

    for index in range(draw(st.integers(0, 3))):
        add(("rule", index), f"[[rule]]  # element {index}")
        for key in draw(st.lists(KEYS, unique=True, max_size=4)):
            values = draw(st.one_of(st.none(), st.lists(SCALARS, max_size=3)))
            add(
                ("rule", index, key), f'"{key}" = ' + ("[" if values is not None else draw(SCALARS))
            )
            for position, value in enumerate(values or []):
                add(("rule", index, key, position), f"  {value},  # [x]")
            if values is not None:
                add(None, "]")
    return "\n".join(out) + "\n", expected


@settings(max_examples=300, deadline=None)
@given(rendered())
def test_scan_finds_every_rendered_key(case: tuple[str, dict[Path, int]]) -> None:
    text, expected = case
    tomllib.loads(text)  # the renderer writes valid TOML
    assert {path: line for path, line in scan(text).lines.items() if path != ("rule",)} == expected
