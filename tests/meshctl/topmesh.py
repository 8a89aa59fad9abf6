"""A workspace of joined hosts whose admin APIs are ``trafficserver`` hosts on 127.0.0.x.

The workspace is a real one (``init_workspace``: CA, operator certificate,
trust bundle); each host gets a host certificate from its CA, an inventory
entry at its loopback address and a join record, so ``meshctl top`` reaches
it exactly as it reaches a real meshd. The admin port is one for all hosts,
as on a real mesh: a port free on 127.0.0.1, tried on every address.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshctl import state
from meshctl.ca import Authority, MeshCa
from meshctl.config import DefaultsConfig, MeshConfig
from meshctl.inventory import HostSpec, Inventory, ServiceSpec
from meshctl.workspace import Workspace, init_workspace
from tests.meshctl.trafficserver import HostModel, Series
from tests.meshd.harness import free_port_on
from tests.meshd.tlsfixtures import TD, TestPki


@dataclass
class TopMesh:
    ws: Workspace
    pki: TestPki
    port: int


def top_mesh(root: Path, hosts: dict[str, str]) -> TopMesh:
    """A workspace whose joined hosts are ``hosts`` (name -> loopback address)."""
    port = free_port_on(list(hosts.values()))
    config = MeshConfig("t", TD, "alice", False, DefaultsConfig(admin_port=port))
    ws = init_workspace(root / "ws", config, None, dt.datetime.now(dt.UTC))
    root_key = serialization.load_pem_private_key(ws.root_ca_key.read_bytes(), None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(ws.root_ca_cert.read_bytes())
    pki = TestPki(root / "pki", TD, MeshCa(Authority(cert, root_key), ws.issuer(None)))
    inventory = Inventory()
    for name, address in hosts.items():
        inventory = inventory.with_host(
            HostSpec(name, address, services=(ServiceSpec(name, 8080),))
        )
        state.record_join(ws, name, {})
    state.save_inventory(ws, inventory)
    return TopMesh(ws, pki, port)


def model(mesh: TopMesh, name: str, address: str, *series: Series, hang: bool = False) -> HostModel:
    """Host ``name`` at ``address`` with a certificate of the mesh, serving ``series``."""
    identity = mesh.pki.issue(name, f"host/{name}")
    return HostModel(name, address, str(identity.cert), str(identity.key), series, hang)


def hung(host: HostModel) -> HostModel:
    return replace(host, hang=True)
