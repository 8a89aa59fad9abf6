"""What applying a document would change, by id (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.policydiff import diff, flatten

ALLOW = {"name": "a", "from": ["web"], "to": "api"}
DOC: dict[str, Any] = {
    "version": 1,
    "name": "d",
    "mtls": {"mode": "strict", "services": {"db": "permissive"}},
    "authz": {"default": "deny"},
    "allow": [ALLOW],
}


def test_flatten_names_settings_and_rules_by_their_ids() -> None:
    assert flatten("d", DOC) == {
        "d/mtls/mode": "strict",
        "d/mtls/services/db": "permissive",
        "d/authz/default": "deny",
        "d/allow/a": {"from": ["web"], "to": "api"},
    }


@pytest.mark.parametrize(
    ("after", "status", "changes"),
    [
        (DOC, "unchanged", []),
        ({**DOC, "authz": {"default": "audit"}}, "changed", [("changed", "d/authz/default")]),
        ({**DOC, "allow": []}, "changed", [("removed", "d/allow/a")]),
        (
            {**DOC, "allow": [{**ALLOW, "ports": [80]}], "deny": [{"name": "x", "to": "*"}]},
            "changed",
            [("changed", "d/allow/a"), ("added", "d/deny/x")],
        ),
        (
            {k: v for k, v in DOC.items() if k != "mtls"},
            "changed",
            [("removed", "d/mtls/mode"), ("removed", "d/mtls/services/db")],
        ),
    ],
)
def test_diff_by_id(after: dict[str, Any], status: str, changes: list[tuple[str, str]]) -> None:
    found = diff("d", DOC, after)
    assert found.status == status
    assert [(c.change, c.id) for c in found.changes] == changes


def test_a_new_document_adds_everything() -> None:
    found = diff("d", None, DOC)
    assert found.status == "new"
    assert {c.change for c in found.changes} == {"added"} and len(found.changes) == 4
