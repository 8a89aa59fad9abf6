"""The trust document: the bundle every context of meshd is built with, at once and at start.

Refused (409) when meshd's own running certificate does not verify under it:
that would cut meshd off from every peer that still trusts it.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

from tests.meshd.harness import Meshd, MeshNet, admin_call
from tests.meshd.tlsfixtures import Identity, TestPki, joint_bundle


def operator_of(other: TestPki, net: MeshNet, directory: Path) -> ssl.SSLContext:
    """An operator certificate from ``other`` CA, trusting both roots itself."""
    bob: Identity = other.issue("bob", "operator/bob")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(joint_bundle(directory / "both.pem", net.pki, other))
    ctx.load_cert_chain(bob.cert, bob.key)
    return ctx


def bob_reads_stats(meshd: Meshd, ctx: ssl.SSLContext) -> int:
    try:
        return admin_call(("127.0.0.1", meshd.ports["admin"]), ctx, "GET", "/stats")[0]
    except (ssl.SSLError, ConnectionError):
        return 0  # his certificate is not trusted


def test_a_trust_bundle_with_a_second_root_is_used_at_once_and_after_restart(
    net: MeshNet, tmp_path: Path
) -> None:
    other = TestPki(tmp_path / "other")
    bob = operator_of(other, net, tmp_path)
    ident = net.pki.issue("a", "host/a")
    meshd = net.start("a", identity=ident)
    assert bob_reads_stats(meshd, bob) == 0
    bundle = net.pki.bundle.read_text() + other.bundle.read_text()
    status, body = net.admin(meshd, "PUT", "/trust", {"version": 1, "bundle_pem": bundle})
    assert status == 200, body
    assert bob_reads_stats(meshd, bob) == 200  # the admin context trusts the new root now
    meshd.stop()
    meshd = net.start("a", identity=ident)
    assert bob_reads_stats(meshd, bob) == 200  # the stored document is layered at start
    status, body = net.admin(meshd, "GET", "/stats")
    assert json.loads(body)["documents"]["trust"] == 1


def test_a_trust_bundle_that_does_not_verify_our_certificate_is_refused(
    net: MeshNet, tmp_path: Path
) -> None:
    other = TestPki(tmp_path / "other")
    meshd = net.start("a")
    doc = {"version": 1, "bundle_pem": other.bundle.read_text()}
    status, body = net.admin(meshd, "PUT", "/trust", doc)
    assert status == 409, body
    assert "does not verify under bundle_pem" in json.loads(body)["error"]
    assert net.admin(meshd, "GET", "/trust")[0] == 404  # nothing applied
    status, body = net.admin(meshd, "GET", "/stats")  # the old bundle still runs
    assert status == 200
    assert json.loads(body)["renewal"]["state"] == "off"  # no issuer in the registry


def test_a_stored_trust_bundle_under_which_nothing_verifies_is_set_aside_at_start(
    net: MeshNet, tmp_path: Path
) -> None:
    meshd = net.start("a")
    doc = {"version": 1, "bundle_pem": net.pki.bundle.read_text()}
    assert net.admin(meshd, "PUT", "/trust", doc)[0] == 200
    meshd.stop()
    other = TestPki(tmp_path / "other")  # the host was joined again, under another CA
    meshd = net.start("a", identity=other.issue("a", "host/a"))
    meshd.wait_log(r"pushed trust set aside: no certificate verifies under it")
