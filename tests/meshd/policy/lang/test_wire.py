"""The /policy document (wire): its JSON shape, what each host gets, and loading it back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meshd.errors import ConfigError
from meshd.policy.lang.model import Document
from meshd.policy.lang.validate import check_text
from meshd.policy.lang.wire import PolicyDocument, for_host, load

NOW = datetime(2026, 8, 1, tzinfo=UTC)
MESH = "prod.mesh"
ZERO_TRUST = (Path(__file__).parent / "examples" / "zero-trust.toml").read_text()


def document(text: str) -> Document:
    found, problems = check_text(text, "policy/t.toml", MESH, NOW)
    assert found is not None, problems
    return found


def names(data: Any, kind: str) -> list[str]:
    return [rule["name"] for rule in data.get(kind, [])]


HOSTS = [
    ({"api"}, ["web-to-api", "metrics-scrape"], ["no-admin-from-web", "retire-web-deletes"]),
    ({"db"}, ["api-to-db", "metrics-scrape"], []),
    ({"web"}, ["metrics-scrape"], []),
    (
        {"api", "db"},
        ["web-to-api", "api-to-db", "metrics-scrape"],
        ["no-admin-from-web", "retire-web-deletes"],
    ),
]


@pytest.mark.parametrize(("services", "allows", "denies"), HOSTS)
def test_for_host_keeps_the_rules_to_its_services_and_star(
    services: set[str], allows: list[str], denies: list[str]
) -> None:
    (data,) = for_host([document(ZERO_TRUST)], services)
    assert names(data, "allow") == allows
    assert names(data, "deny") == denies
    assert data["mtls"] == {"mode": "strict"}
    assert data["authz"] == {"default": "deny"}
    assert data["name"] == "zero-trust"


SETTINGS = 'version = 1\nname = "s"\n[mtls]\nmode = "permissive"\n[mtls.services]\napi = "strict"\ndb = "strict"\n[authz.services]\ndb = "audit"\n'


@pytest.mark.parametrize(
    ("services", "mtls", "authz"),
    [
        ({"api"}, {"mode": "permissive", "services": {"api": "strict"}}, {}),
        (
            {"db"},
            {"mode": "permissive", "services": {"db": "strict"}},
            {"services": {"db": "audit"}},
        ),
        ({"web"}, {"mode": "permissive"}, {}),
    ],
)
def test_for_host_keeps_only_its_service_settings(
    services: set[str], mtls: dict[str, Any], authz: dict[str, Any]
) -> None:
    (data,) = for_host([document(SETTINGS)], services)
    assert data["mtls"] == mtls
    assert data["authz"] == authz


def test_a_pushed_policy_loads_to_the_same_documents() -> None:
    original = document(ZERO_TRUST)
    wire = PolicyDocument(7, for_host([original], {"api", "db"}))
    back = PolicyDocument.from_json(wire.to_json())
    assert back == wire
    (loaded,) = load(back, MESH, NOW)
    assert [r.id for r in loaded.rules] == [
        r.id for r in original.rules if r.selector.to in ("api", "db", "*")
    ]
    assert [r.selector for r in loaded.rules] == [r.selector for r in original.rules]
    assert (
        loaded.authz_default is not None and loaded.authz_default.id == "zero-trust/authz/default"
    )


def test_no_policy() -> None:
    empty = PolicyDocument.from_json({"version": 0})
    assert empty == PolicyDocument(0, ())
    assert load(empty, MESH, NOW) == []


BAD_SHAPES: list[tuple[Any, str]] = [
    ([], "JSON object"),
    ({"version": "1"}, "integer"),
    ({"version": True}, "integer"),
    ({"version": -1}, "integer"),
    ({"version": 1, "documents": {}}, "list"),
    ({"version": 1, "documents": [1]}, "JSON object"),
    ({"version": 1, "documents": [{}] * 1025}, "at most 1024"),
    ({"version": 1, "extra": 1}, "unknown fields ['extra']"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_SHAPES)
def test_from_json_refuses_bad_shapes(doc: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PolicyDocument.from_json(doc)


def test_load_lists_every_problem() -> None:
    bad = PolicyDocument(
        3,
        (
            {"version": 1, "name": "a", "allow": [{"name": "x", "to": "api", "methods": ["get"]}]},
            {"version": 2, "name": "b"},
        ),
    )
    with pytest.raises(ConfigError) as raised:
        load(bad, MESH, NOW)
    assert raised.value.message.splitlines()[1:] == [
        'documents[0]:0: error[P004] allow."x": allow rules must name their sources: add from = ["*"] for any authenticated peer',
        'documents[0]:0: error[P012] allow."x".methods[0]: method "get" must be upper-case (did you mean "GET"?)',
        "documents[1]:0: error[P007] version: unsupported version 2: this meshctl understands version 1",
    ]


def test_load_checks_across_documents() -> None:
    bad = PolicyDocument(
        4,
        (
            {"version": 1, "name": "a", "authz": {"default": "deny"}},
            {"version": 1, "name": "b", "authz": {"default": "audit"}},
        ),
    )
    with pytest.raises(
        ConfigError,
        match=r'documents\[1\]:0: error\[P040\] authz.default: already set by document "a" \(documents\[0\]\)',
    ):
        load(bad, MESH, NOW)
