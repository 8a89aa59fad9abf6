"""bench/policytoml.py: the policy files it builds say what its arguments say, as TOML."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tests.meshd.policy.lang.build import policytoml as pt


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (pt.document("a"), {"version": 1, "name": "a"}),
        (
            pt.document("a", description='say "hi"\\', comment="one\ntwo"),
            {"version": 1, "name": "a", "description": 'say "hi"\\'},
        ),
        (
            pt.document("a", mtls={"mode": "strict", "services": {"db": "permissive"}}),
            {
                "version": 1,
                "name": "a",
                "mtls": {"mode": "strict", "services": {"db": "permissive"}},
            },
        ),
        (
            pt.document("a", authz={"services": {"api": "audit"}}),
            {"version": 1, "name": "a", "authz": {"services": {"api": "audit"}}},
        ),
        (
            pt.document(
                "a",
                pt.allow(
                    "r", "api", ["web"], ports=[80, "90-99"], headers={"x-t": {"prefix": "q"}}
                ),
                pt.deny("d", "api", paths=["/admin/**"], audit=True),
                pt.deny("e", "api", ["*"]),
                pt.rate_limit("l", "api", 5, "1s", bucket="per-source"),
                authz={"default": "deny"},
            ),
            {
                "version": 1,
                "name": "a",
                "authz": {"default": "deny"},
                "allow": [
                    {
                        "name": "r",
                        "from": ["web"],
                        "to": "api",
                        "ports": [80, "90-99"],
                        "headers": {"x-t": {"prefix": "q"}},
                    }
                ],
                "deny": [
                    {"name": "d", "to": "api", "paths": ["/admin/**"], "audit": True},
                    {"name": "e", "from": ["*"], "to": "api"},
                ],
                "rate_limit": [
                    {"name": "l", "to": "api", "bucket": "per-source", "limit": 5, "per": "1s"}
                ],
            },
        ),
    ],
)
def test_a_built_document_parses_to_its_arguments(text: str, parsed: dict[str, Any]) -> None:
    assert tomllib.loads(text) == parsed


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (7, "7"),
        ('a"b', '"a\\"b"'),
        ([], "[]"),
        (["GET", 8080], '["GET", 8080]'),
        ({"present": True}, "{ present = true }"),
        ({"a.b": "x"}, '{ "a.b" = "x" }'),
    ],
)
def test_values_are_written_as_toml(value: Any, text: str) -> None:
    assert pt.value(value) == text
