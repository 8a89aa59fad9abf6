"""The three-host fixture works: joined by the real CLI, apps up, load between all of them.

A smoke test of tests/e2e/mesh3.py for the identity-lifecycle tests: each host
runs loadgen.py for 10 s against the apps of the two others, through the
mesh, with zero failed requests; and the serial probe reads each mesh port's
certificate, the one meshd says it runs.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator

import pytest
from cryptography import x509

from meshctl.testbed import Testbed
from tests.e2e.mesh3 import Mesh, Node, joined_mesh
from tests.meshd.onhost import ok

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def mesh(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with joined_mesh(testbed, tmp_path_factory.mktemp("mesh3"), leaf_lifetime="2h") as m:
        sys.stderr.write(f"\n[mesh3] three hosts joined in {m.took:.1f} s\n")
        yield m


def test_load_between_all_three_hosts_has_no_failures(mesh: Mesh) -> None:
    loads = [mesh.start_load(node, seconds=10, connections=4) for node in mesh.nodes]
    results = [load.result() for load in loads]
    for load, result in zip(loads, results, strict=True):
        assert result["failed"] == 0, (load.node.name, result)
        assert result["ok"] > 100, (load.node.name, result)  # type: ignore[operator]
        assert result["connects"] == 4, (load.node.name, result)  # keep-alive held throughout
    for node in mesh.nodes:  # every app was called by both others
        seen = node.host.run(f"journalctl -u {node.app.unit} -o cat --no-pager | grep -c healthz")
        assert int(seen[1]) >= 2 * 100, (node.name, seen)


def on_host(node: Node) -> x509.Certificate:
    """The leaf meshd runs with: the first certificate of /etc/meshd/cert.pem."""
    return x509.load_pem_x509_certificate(ok(node.host, "cat /etc/meshd/cert.pem").encode())


def test_the_probe_reads_each_mesh_port_certificate_with_the_chosen_lifetime(mesh: Mesh) -> None:
    for node in mesh.nodes:
        cert = on_host(node)
        serial = format(cert.serial_number, "X")
        assert mesh.serial(node) == serial, node.name
        assert mesh.serials()[node.name] == serial
        for other in mesh.others(node):  # what its peers see, probed with their own identity
            assert mesh.serial_seen_from(other, node) == serial, (other.name, node.name)
        lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
        assert dt.timedelta(hours=1) < lifetime <= dt.timedelta(hours=2), (node.name, lifetime)


def test_wrk_copied_onto_a_host_runs_through_the_mesh(mesh: Mesh) -> None:
    web, api = mesh.node("web1"), mesh.node("api1")
    result = mesh.start_wrk(web, api, seconds=5, connections=4).result()
    assert result["failed"] == 0 and int(result["ok"]) > 50, result  # type: ignore[call-overload]
