"""At start, meshd runs the newer of its registry file and the registry pushed to it."""

from __future__ import annotations

import json

import pytest

from tests.meshd.harness import MeshNet, admin_call, client_context


@pytest.mark.parametrize(
    ("file_version", "expected"),
    [(3, 3), (1, 2)],  # meshctl rewrote the file with a newer version / an older file
    ids=["the file is newer", "the push is newer"],
)
def test_the_newer_registry_wins_at_start(net: MeshNet, file_version: int, expected: int) -> None:
    operator = client_context(net.pki.issue("ops", "operator/ops"))
    meshd = net.start("a")
    address = ("127.0.0.1", meshd.ports["admin"])
    pushed = {"version": 2, "services": {}}
    status, body = admin_call(address, operator, "PUT", "/registry", json.dumps(pushed).encode())
    assert status == 200, body
    meshd.stop()
    net.registry["version"] = file_version
    meshd = net.start("a")  # same state dir: the push is remembered
    status, body = admin_call(("127.0.0.1", meshd.ports["admin"]), operator, "GET", "/registry")
    assert status == 200 and json.loads(body)["version"] == expected, body
