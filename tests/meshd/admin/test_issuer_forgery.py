"""A stolen issuer key mints no operator: a real meshd's admin API trusts operator, monitor
and issuer IDs only from leaves meshctl's CA signed.

An issuer CA's name constraint covers the trust domain, not the path, so
OpenSSL verifies ``spiffe://<td>/operator/...`` on a leaf an issuer key
signed; meshd must not take it for an operator (``vouched_ids``).
"""

from __future__ import annotations

import json

import pytest

from tests.meshd.harness import MeshNet, admin_call, client_context
from tests.meshd.issuer.issuers import issued_by, issuer_authority


@pytest.mark.parametrize("path", ["operator/mallory", "monitor/prom", "issuer/h9"])
def test_an_identity_only_meshctl_may_sign_is_forbidden_from_an_issuer_ca(
    net: MeshNet, path: str
) -> None:
    meshd = net.start("a", identity=net.pki.issue("a", "host/a"))
    address = ("127.0.0.1", meshd.ports["admin"])
    forged = issued_by(issuer_authority(net.pki, "h1"), net.pki, "forged", path)
    status, text = admin_call(address, client_context(forged), "GET", "/stats")
    assert status == 403, text
    assert "only operator identities" in json.loads(text)["error"]
    meshd.wait_log(r"admin: refused .*not an operator \(an issuer CA signed it\)")
    real = net.pki.issue("real", path)  # the same identity from meshctl's CA
    expected = 200 if path.startswith("operator/") else 403
    assert admin_call(address, client_context(real), "GET", "/stats")[0] == expected


def test_a_host_leaf_from_an_issuer_ca_is_still_a_host_and_no_more(net: MeshNet) -> None:
    meshd = net.start("a", identity=net.pki.issue("a", "host/a"))
    address = ("127.0.0.1", meshd.ports["admin"])
    both = issued_by(issuer_authority(net.pki, "h1"), net.pki, "both", "host/h1", "operator/x")
    status, text = admin_call(address, client_context(both), "GET", "/stats")
    assert status == 403 and "a host may only POST /issue" in json.loads(text)["error"], text
    body = json.dumps({"csr_pem": "x"}).encode()
    status, text = admin_call(address, client_context(both), "POST", "/issue", body)
    assert status == 503, text  # a renewed host: on to the issuer (a is none)
