"""meshctl/demo.py's pure parts: how the demo prints the calls its zero-trust policy judges."""

from __future__ import annotations

import pytest

from meshctl import demo

BODY = '{"error": "denied", "rule": "mesh/authz/default"}'


@pytest.mark.parametrize(
    ("call", "line"),
    [
        (
            demo.Call("web", "api", "http://api.mesh:8081/products", 200, "", '{"served_by": 1}'),
            "web -> api: GET http://api.mesh:8081/products -> 200 allowed by "
            "web-api-db/allow/web-to-api",
        ),
        (
            demo.Call("web", "db", "http://db.mesh:8082/items", 403, "mesh/authz/default", BODY),
            "web -> db: GET http://db.mesh:8082/items -> 403 denied by mesh/authz/default\n"
            f"    {BODY}",
        ),
    ],
    ids=["allowed", "denied"],
)
def test_a_call_names_the_rule_that_decided_it(call: demo.Call, line: str) -> None:
    assert demo.call_line(call, "web-api-db/allow/web-to-api") == line


def test_the_policy_files_ship_with_the_demo() -> None:
    assert [p.name for p in demo.POLICY_FILES] == ["mesh.toml", "web-api-db.toml"]
    assert all(p.is_file() for p in demo.POLICY_FILES)
    assert [callee for callee, _ in demo.POLICY_CALLS] == ["api", "db"]
