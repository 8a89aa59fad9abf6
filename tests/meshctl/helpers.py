"""Shared builders for meshctl tests."""

from __future__ import annotations

import datetime as dt

from meshctl.ca import MeshCa, create_ca
from meshctl.config import MeshConfig
from meshctl.inventory import HostSpec, Inventory, ServiceSpec

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
TD = "t.mesh"
# a mesh of two hosts: web1 (SSH on 2222, a service with its own run-as user) and db1
MESH = MeshConfig("t", TD, "alice", ca_key_encrypted=False)
WEB1 = HostSpec(
    "web1",
    "10.0.0.11",
    port=2222,
    services=(ServiceSpec("web", 8080), ServiceSpec("admin", 9000, run_as="www-data")),
)
DB1 = HostSpec("db1", "10.0.0.12", services=(ServiceSpec("db", 5432),))
INVENTORY = Inventory().with_host(WEB1).with_host(DB1)


def make_ca() -> MeshCa:
    return create_ca("t", TD, NOW)
