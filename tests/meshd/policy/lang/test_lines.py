"""The line scanner (POLICY.md §2.13): the line of every header, key and array element."""

from __future__ import annotations

import pytest

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
    (("deny",), 0),
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


def test_empty_lines_know_nothing() -> None:
    assert Lines().line(("a", 0, "b")) == 0
