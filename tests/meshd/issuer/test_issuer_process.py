"""A real meshd process as an issuer: x509 code only once it becomes one, kept across a restart."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshd.identity import SpiffeId
from meshd.pki import build_csr, generate_key, spiffe_ids
from tests.meshd.harness import Meshd, MeshNet, admin_call, client_context
from tests.meshd.issuer.issuers import sign_issuer_ca
from tests.meshd.tlsfixtures import Identity


def loads_x509(meshd: Meshd) -> bool:
    """Whether cryptography's native module is mapped into meshd (it is ~10 MB of RSS)."""
    return "cryptography" in Path(f"/proc/{meshd.proc.pid}/maps").read_text()


def issue(net: MeshNet, meshd: Meshd, who: Identity, *paths: str) -> tuple[int, dict[str, str]]:
    ids = [SpiffeId(net.pki.trust_domain, "/" + p) for p in paths]
    csr = build_csr(generate_key(), ids).public_bytes(serialization.Encoding.PEM).decode()
    body = json.dumps({"csr_pem": csr}).encode()
    address = ("127.0.0.1", meshd.ports["admin"])
    status, text = admin_call(address, client_context(who), "POST", "/issue", body)
    return status, json.loads(text)


def test_an_issuer_meshd_loads_x509_only_once_an_issuer_and_keeps_it_across_a_restart(
    net: MeshNet,
) -> None:
    net.add_service("api", 8080, "h1", 15443)
    h1 = net.pki.issue("h1", "host/h1", "svc/api")
    h0 = net.pki.issue("h0", "host/h0")
    meshd = net.start("h0", identity=h0)
    assert issue(net, meshd, h1, "host/h1")[0] == 503  # no issuer: answered without x509 code
    assert not loads_x509(meshd)
    status, body = net.admin(meshd, "POST", "/issuer/csr")
    assert status == 200 and loads_x509(meshd)
    csr = json.loads(body)["csr_pem"]
    ca_pem = sign_issuer_ca(csr, "h0", net.pki.ca.root, net.pki.trust_domain)
    doc = {"version": 1, "cert_pem": ca_pem, "leaf_lifetime": 120}
    assert net.admin(meshd, "PUT", "/issuer", doc)[0] == 200
    status, signed = issue(net, meshd, h1, "host/h1", "svc/api")
    assert status == 200, signed
    assert net.metric(meshd, "meshd_issuer_requests_total", result="signed") == 1
    assert net.metric(meshd, "meshd_issuer_requests_total", result="unavailable") == 1
    assert meshd.stop() == 0

    meshd = net.start("h0", identity=h0)  # the same state directory
    meshd.wait_log(r"issuer: signing as spiffe://t\.mesh/issuer/h0")
    status, signed = issue(net, meshd, h1, "host/h1")
    assert status == 200, signed
    leaf = x509.load_pem_x509_certificates(signed["cert_pem"].encode())[0]
    assert spiffe_ids(leaf) == [SpiffeId(net.pki.trust_domain, "/host/h1")]
    stats = json.loads(net.admin(meshd, "GET", "/stats")[1])
    assert stats["issuer"]["signed"] == 1 and stats["issuer"]["not_after"]
    status, refused = issue(net, meshd, h1, "host/h9")
    assert status == 403 and "host/h9 is not held" in refused["error"]
    meshd.wait_log(r"issuer: refused 127\.0\.0\.1:\d+ \(spiffe://t\.mesh/host/h1.*host/h9")
