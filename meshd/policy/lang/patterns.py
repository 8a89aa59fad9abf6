"""Path patterns and header matchers (§2.2): what a selector's HTTP fields may say.

A pattern is a normalised absolute path with whole-segment wildcards, so it
can never disagree with what §2.3's normaliser forwards; a header matcher is
a lower-case name and exactly one of exact, prefix or present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshd.policy.lang import fields
from meshd.policy.lang.fields import Report, Where
from meshd.policy.lang.model import HeaderMatch

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-zA-Z-]+")
# RFC 3986 pchar minus "%" (checked on its own) and "*" (a wildcard, §2.2)
_PCHAR = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()+,;=:@")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def paths(report: Report, where: Where, value: object) -> tuple[str, ...] | None:
    items = fields.array(report, where, value, '["/v1/**"]')
    if items is None:
        return None
    found = [path(report, where.item(i), item) for i, item in enumerate(items)]
    return fields.every(found)


def path(report: Report, where: Where, value: object) -> str | None:
    found = fields.text(report, where, value, ', e.g. "/v1/**"')
    if found is None:
        return None
    problem = path_problem(found)
    if problem:
        report.add("P013", where, problem)
        return None
    return found


def path_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid path pattern (§2.2), or None."""
    if not pattern.startswith("/"):
        return f'path pattern "{pattern}" must be absolute: start it with "/"'
    if "?" in pattern or "#" in pattern:
        return (
            f'path pattern "{pattern}" must not hold a query or fragment: paths match without them'
        )
    if pattern == "/":
        return None
    if pattern.endswith("/"):
        bare = pattern.rstrip("/") or "/"
        return (
            f'trailing "/" is not significant in "{pattern}": write "{bare}" (exact) '
            f'or "{bare.rstrip("/")}/**" (subtree)'
        )
    segments = pattern[1:].split("/")
    for index, segment in enumerate(segments):
        problem = _segment_problem(pattern, segment, last=index == len(segments) - 1)
        if problem:
            return problem
    return None


def _segment_problem(pattern: str, segment: str, last: bool) -> str | None:
    if not segment:
        return f'"//" in "{pattern}": patterns are normalised paths, write one "/"'
    if segment.split(";", 1)[0] in (".", ".."):
        return (
            f'"{segment}" segment in "{pattern}": '
            "patterns are normalised paths, without dot segments"
        )
    if segment == "**":
        return None if last else f'"**" must be the last segment in "{pattern}"'
    if segment == "*":
        return None
    if "*" in segment:
        return (
            f'partial-segment wildcard "{segment}" in "{pattern}": "*" and "**" stand for '
            'whole segments; a literal "*" is written %2A'
        )
    return _characters_problem(pattern, segment)


def _characters_problem(pattern: str, segment: str) -> str | None:
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "%":
            problem = _escape_problem(pattern, segment[index + 1 : index + 3])
            if problem:
                return problem
            index += 3
            continue
        if char not in _PCHAR:
            return f'character {char!r} in "{pattern}" must be percent-encoded (upper-case hex)'
        index += 1
    return None


def _escape_problem(pattern: str, hexdigits: str) -> str | None:
    if len(hexdigits) != 2 or any(c not in "0123456789ABCDEFabcdef" for c in hexdigits):
        return f'malformed percent-encoding in "{pattern}": write "%" as %25'
    if hexdigits != hexdigits.upper():
        upper = hexdigits.upper()
        return f'"%{hexdigits}" in "{pattern}" must use upper-case hex: write "%{upper}"'
    decoded = chr(int(hexdigits, 16))
    if decoded in _UNRESERVED:
        return (
            f'"%{hexdigits}" in "{pattern}" encodes "{decoded}": '
            f'write "{decoded}" (paths are normalised before matching)'
        )
    if decoded in "/\\\x00":
        return (
            f'"%{hexdigits}" in "{pattern}": requests holding it are rejected (400), '
            "so the pattern would never match"
        )
    return None


def headers(report: Report, where: Where, value: object) -> tuple[HeaderMatch, ...] | None:
    found_table = fields.table(report, where, value, '{ "x-tenant" = "acme" }')
    if found_table is None:
        return None
    if not found_table:
        report.add("P014", where, "an empty headers table: list a header or leave the field out")
        return None
    found = [header(report, where.quoted(name), name, v) for name, v in found_table.items()]
    return fields.every(found)


def header(report: Report, where: Where, name: str, value: object) -> HeaderMatch | None:
    problem = _header_name_problem(name)
    if problem:
        report.add("P014", where, problem)
        return None
    if isinstance(value, str):
        return HeaderMatch(name, exact=value)
    if not isinstance(value, Mapping):
        fields.wrong_type(report, where, '"value", { prefix = "qa-" } or { present = true }', value)
        return None
    return _matcher(report, where, name, value)


def _header_name_problem(name: str) -> str | None:
    if name.startswith(":"):
        return f'pseudo-header "{name}" cannot be matched: use "host" for :authority'
    if not _TOKEN.fullmatch(name):
        return f'invalid header name "{name}": a header name is a token (letters, digits, "-", ...)'
    if name != name.lower():
        return f'header names must be lower-case: write "{name.lower()}"'
    return None


def _matcher(
    report: Report, where: Where, name: str, value: Mapping[str, Any]
) -> HeaderMatch | None:
    keys = sorted(value)
    if keys == ["prefix"] and isinstance(value["prefix"], str) and value["prefix"]:
        return HeaderMatch(name, prefix=value["prefix"])
    if keys == ["present"] and isinstance(value["present"], bool):
        return HeaderMatch(name, present=value["present"])
    report.add(
        "P014",
        where,
        f'a header matcher is a string, {{ prefix = "..." }} (non-empty) or '
        f"{{ present = true/false }}, got {{ {', '.join(keys)} }}",
    )
    return None
