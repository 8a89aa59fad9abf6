"""``meshctl demo up`` / ``status`` / ``demo down``: the README's main command, for real.

Three more testbed hosts (a prefix of the test's own), the sample apps, a
join through meshctl's own code, traffic through the chain; ``down`` must
leave nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.testbed import Testbed, leftovers
from meshd.errors import ProvisionError
from tests.meshctl.provision.test_join_testbed import Result, in_process

pytestmark = pytest.mark.testbed


@pytest.fixture
def prefix(testbed_ready: None) -> Iterator[str]:
    name = f"d{secrets.token_hex(2)}"
    try:
        yield name
    finally:
        with contextlib.suppress(ProvisionError):
            Testbed.attach(name).down()


def test_demo_up_status_down(prefix: str, tmp_path: Path) -> None:
    ws = tmp_path / "mesh-demo"

    def meshctl(*argv: str) -> Result:
        return in_process(list(argv), ws, {})

    up = meshctl("demo", "up", "--testbed-prefix", prefix)
    assert up.code == 0, up.out + up.err
    assert "50 requests through web -> api -> db" in up.out
    assert f"web@{prefix}-h1 -> api@{prefix}-h2 -> db@{prefix}-h3" in up.out
    assert "meshctl -w" in up.out and "status" in up.out  # what to try next
    # it ends with zero trust: applied as `meshctl policy apply` does, then judged for real
    assert "policy apply" in up.out and "policy version 2 (a new version)" in up.out
    assert "With the zero-trust policy in force:" in up.out
    assert (
        "web -> api: GET http://api.mesh:8081/products -> 200 allowed by "
        "web-api-db/allow/web-to-api"
    ) in up.out
    assert "web -> db: GET http://db.mesh:8082/items -> 403 denied by mesh/authz/default" in up.out
    listed = meshctl("policy", "list", "--json")
    assert listed.code == 0, listed.out + listed.err
    applied = json.loads(listed.out)
    assert applied["version"] == 2
    assert sorted(d["name"] for d in applied["documents"]) == ["mesh", "web-api-db"]
    status = meshctl("status", "--json")
    assert status.code == 0, status.out + status.err
    hosts = json.loads(status.out)["hosts"]
    assert [(h["host"], h["healthy"]) for h in hosts] == [
        ("api1", True),
        ("db1", True),
        ("web1", True),
    ]
    again = meshctl("demo", "up", "--testbed-prefix", prefix)
    assert again.code != 0 and "already running" in again.err
    down = meshctl("demo", "down", "--testbed-prefix", prefix)
    assert down.code == 0, down.out + down.err
    assert leftovers(prefix) == []
    assert not ws.exists()
