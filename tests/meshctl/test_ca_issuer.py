"""Issuer CAs signed by the root: their shape, their checks, and the chain OpenSSL verifies."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshctl.ca import Authority, sign_csr, sign_issuer
from meshd.errors import CertificateError
from meshd.identity import SpiffeId
from meshd.pki import build_csr, cert_pem, generate_key, spiffe_ids
from tests.meshctl.helpers import NOW, TD, make_ca
from tests.meshctl.test_ca import _csr_with, _tampered_csr, _uris

CA = make_ca()
ISSUER_ID = SpiffeId.parse(f"spiffe://{TD}/issuer/web1")
SVC = SpiffeId.parse(f"spiffe://{TD}/svc/web")
DAY = dt.timedelta(days=1)


def _issuer(now: dt.datetime = NOW, lifetime: dt.timedelta = 30 * DAY) -> Authority:
    key = generate_key()
    cert = sign_issuer(build_csr(key, [ISSUER_ID]), "web1", CA.root, now, lifetime, TD)
    return Authority(cert, key)


def test_shape() -> None:
    cert = _issuer().cert
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and not usage.digital_signature
    names = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert names.critical
    assert [u.value for u in names.value.permitted_subtrees or []] == [TD]
    assert spiffe_ids(cert) == [ISSUER_ID]
    assert cert.issuer == CA.root.cert.subject
    assert cert.not_valid_after_utc == NOW + 30 * DAY
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)


def test_never_outlives_the_root() -> None:
    late = CA.root.cert.not_valid_after_utc - DAY
    assert _issuer(late, 365 * DAY).cert.not_valid_after_utc == CA.root.cert.not_valid_after_utc


def test_a_short_issuer_is_backdated_a_tenth_of_its_life() -> None:
    cert = _issuer(lifetime=dt.timedelta(minutes=10)).cert
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=1)


def _key_csr(key: object) -> x509.CertificateSigningRequest:
    return _csr_with(key, _uris(ISSUER_ID))


@pytest.mark.parametrize(
    ("csr", "lifetime", "message"),
    [
        (_tampered_csr(), 30 * DAY, "signature does not verify"),
        (_key_csr(rsa.generate_private_key(65537, 2048)), 30 * DAY, "weak 2048-bit RSA"),
        (_key_csr(ec.generate_private_key(ec.SECP256K1())), 30 * DAY, "curve secp256k1"),
        (build_csr(generate_key(), [SVC]), 30 * DAY, "asks for identities"),
        (build_csr(generate_key(), [ISSUER_ID, SVC]), 30 * DAY, "asks for identities"),
        (  # another host's issuer identity
            build_csr(generate_key(), [SpiffeId.parse(f"spiffe://{TD}/issuer/db1")]),
            30 * DAY,
            "asks for identities",
        ),
        (_csr_with(generate_key(), []), 30 * DAY, "asks for identities"),
        (
            _csr_with(generate_key(), [*_uris(ISSUER_ID), x509.DNSName("web1")]),
            30 * DAY,
            "other than SPIFFE",
        ),
        (build_csr(generate_key(), [ISSUER_ID]), dt.timedelta(0), "issuer lifetime"),
        (build_csr(generate_key(), [ISSUER_ID]), 366 * DAY, "issuer lifetime"),
    ],
)
def test_refuses(csr: x509.CertificateSigningRequest, lifetime: dt.timedelta, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        sign_issuer(csr, "web1", CA.root, NOW, lifetime, TD)


def _verify(tmp_path: Path, chain: list[x509.Certificate], leaf: x509.Certificate) -> str:
    """OpenSSL's verdict on root -> ``chain`` -> ``leaf``: "" when it verifies."""
    (tmp_path / "root.pem").write_bytes(cert_pem(CA.root.cert))
    (tmp_path / "chain.pem").write_bytes(cert_pem(*chain))
    (tmp_path / "leaf.pem").write_bytes(cert_pem(leaf))
    command = ["openssl", "verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_openssl_verifies_root_issuer_leaf(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    issuer = _issuer(now)
    leaf = sign_csr(build_csr(generate_key(), [SVC]), [SVC], issuer, now)
    assert _verify(tmp_path, [issuer.cert], leaf) == ""


def _forged(issuer: Authority, now: dt.datetime, uri: str, ca: bool) -> Authority:
    """A certificate signed with the issuer's key behind sign_csr's back, and its key."""
    key = generate_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return Authority(cert, key)


def test_openssl_refuses_a_leaf_outside_the_trust_domain(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    issuer = _issuer(now)
    forged = _forged(issuer, now, "spiffe://evil.mesh/svc/web", ca=False)
    assert "permitted subtree violation" in _verify(tmp_path, [issuer.cert], forged.cert)


def test_openssl_refuses_a_ca_under_an_issuer(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    issuer = _issuer(now)
    sub = _forged(issuer, now, f"spiffe://{TD}/issuer/sub", ca=True)
    leaf = _forged(sub, now, f"spiffe://{TD}/svc/web", ca=False)
    assert "path length" in _verify(tmp_path, [issuer.cert, sub.cert], leaf.cert)
