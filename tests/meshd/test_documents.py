"""Every pushed document kind is validated fully at the door of a real meshd.

A refused push is a 400 that names the field, changes nothing, and leaves
/metrics and /stats working.
"""

from __future__ import annotations

import json

import pytest

from tests.meshd.harness import Meshd, MeshNet, admin_call


def put_raw(net: MeshNet, meshd: Meshd, kind: str, body: str) -> tuple[int, dict[str, object]]:
    ctx = net.operator_context()
    status, text = admin_call(
        ("127.0.0.1", meshd.ports["admin"]), ctx, "PUT", f"/{kind}", body.encode()
    )
    return status, json.loads(text)


def assert_still_serving(net: MeshNet, meshd: Meshd) -> None:
    status, text = net.admin(meshd, "GET", "/metrics")
    assert status == 200, text
    assert "meshd_document_version" in text
    assert net.admin(meshd, "GET", "/stats")[0] == 200


@pytest.mark.parametrize(
    ("kind", "body", "words"),
    [
        ("policy", '{"version": 6, "allow": []}', ["allow", "not in this meshd yet"]),
        ("policy", '{"version": 6, "x": NaN}', ["NaN"]),
        ("registry", '{"version": 1, "services": {}, "x": Infinity}', ["NaN"]),
        ("registry", '{"version": 1' + "0" * 309 + ', "services": {}}', ["version", "2^53"]),
        ("policy", '{"version": 9007199254740992}', ["version"]),
        ("config", '{"version": 1e400, "toml": ""}', ["version"]),
    ],
    ids=[
        "policy-rules",
        "policy-nan",
        "registry-inf",
        "registry-1e309",
        "policy-2^53",
        "config-inf",
    ],
)
def test_out_of_range_and_unenforceable_documents_get_400(
    net: MeshNet, kind: str, body: str, words: list[str]
) -> None:
    meshd = net.start("a")
    assert put_raw(net, meshd, "policy", '{"version": 5}')[0] == 200  # the one policy accepted
    status, answer = put_raw(net, meshd, kind, body)
    print(f"\n{kind}: {status} {answer}")
    assert status == 400, answer
    for word in words:
        assert word.replace("2^53", "9007199254740991") in str(answer["error"])
    status, text = net.admin(meshd, "GET", "/policy")
    assert (status, json.loads(text)) == (200, {"version": 5})
    assert_still_serving(net, meshd)
    meshd.stop()
    assert meshd.proc.returncode == 0
