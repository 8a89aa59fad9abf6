"""What renewal accepts from an issuer (``meshd.renewal.accept``), table-driven."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization

from meshctl.ca import create_ca
from meshd.identity import SpiffeId
from meshd.pki import build_csr, cert_pem, generate_key, sign_csr
from meshd.renewal.accept import leaf_der, refusal

TD = "t.mesh"
NOW = dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC)
CA = create_ca("t", TD, NOW)
HOST, API, DB = (SpiffeId(TD, p) for p in ("/host/a", "/svc/api", "/svc/db"))
_KEY = generate_key()
LEAF = sign_csr(build_csr(_KEY, [HOST]), [HOST], CA.issuing, NOW, dt.timedelta(hours=1))
LEAF_DER = LEAF.public_bytes(serialization.Encoding.DER)
CA_DER = CA.issuing.cert.public_bytes(serialization.Encoding.DER)
LATER = NOW + dt.timedelta(hours=2)  # when the fresh certificate expires


@pytest.mark.parametrize(
    ("leaf", "ids", "asked", "running", "words"),
    [
        (LEAF_DER, {HOST, API}, {HOST, API}, NOW, None),
        (LEAF_DER, {HOST}, {HOST, API}, NOW, None),  # fewer: what the registry still assigns
        (LEAF_DER, {HOST}, {HOST}, LATER, None),  # the same expiry
        (CA_DER, {HOST}, {HOST}, NOW, "is a CA certificate, not a leaf"),
        (b"junk", {HOST}, {HOST}, NOW, "cannot be read"),
        (LEAF_DER, {API}, {HOST, API}, NOW, "does not carry spiffe://t.mesh/host/a"),
        (LEAF_DER, {HOST, DB}, {HOST, API}, NOW, "did not ask for: spiffe://t.mesh/svc/db"),
        (LEAF_DER, {HOST}, {HOST}, LATER + dt.timedelta(seconds=1), "before the one we run"),
    ],
)
def test_refusal(
    leaf: bytes, ids: set[SpiffeId], asked: set[SpiffeId], running: dt.datetime, words: str | None
) -> None:
    problem = refusal(leaf, ids, LATER, asked, HOST, running)
    assert problem is None if words is None else words in (problem or ""), problem


@pytest.mark.parametrize(
    ("chain", "der"),
    [
        (cert_pem(LEAF, CA.issuing.cert), LEAF_DER),
        (
            b"-----BEGIN PRIVATE KEY-----\n...\n" + cert_pem(LEAF),
            LEAF_DER,
        ),  # renewed.pem: the key first
        (b"no certificate", b""),
    ],
)
def test_leaf_der_is_the_first_certificate(chain: bytes, der: bytes) -> None:
    assert leaf_der(chain) == der
