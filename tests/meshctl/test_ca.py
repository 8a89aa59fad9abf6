"""The mesh CA: creation and CSR signing, checked with real OpenSSL too."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshctl.ca import ISSUING_CA_LIFETIME, MAX_LEAF_LIFETIME, ROOT_CA_LIFETIME, sign_csr
from meshd.errors import CertificateError
from meshd.identity import SpiffeId
from meshd.pki import build_csr, cert_pem, generate_key, spiffe_ids
from tests.meshctl.helpers import NOW, make_ca

SVC = SpiffeId.parse("spiffe://t.mesh/svc/api")
HOST = SpiffeId.parse("spiffe://t.mesh/host/h2")
OTHER = SpiffeId.parse("spiffe://t.mesh/svc/db")

CA = make_ca()


def _csr_with(key: object, names: list[x509.GeneralName]) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


def _uris(*ids: SpiffeId) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(str(i)) for i in ids]


def test_ca_shape() -> None:
    root, issuing = CA.root.cert, CA.issuing.cert
    assert root.not_valid_after_utc - root.not_valid_before_utc >= ROOT_CA_LIFETIME
    assert issuing.not_valid_after_utc - issuing.not_valid_before_utc >= ISSUING_CA_LIFETIME
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert isinstance(CA.root.key.curve, ec.SECP256R1)
    assert issuing.issuer == root.subject


def test_sign_valid_csr() -> None:
    cert = sign_csr(build_csr(generate_key(), [SVC, HOST]), [HOST, SVC], CA.issuing, NOW)
    assert spiffe_ids(cert) == sorted([SVC, HOST])
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc == NOW + dt.timedelta(hours=24)


def test_openssl_verifies_leaf_and_enforces_trust_domain(tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(cert_pem(CA.root.cert))
    chain = tmp_path / "issuing.pem"
    chain.write_bytes(cert_pem(CA.issuing.cert))
    now = dt.datetime.now(dt.UTC)
    good = tmp_path / "good.pem"
    good.write_bytes(cert_pem(sign_csr(build_csr(generate_key(), [SVC]), [SVC], CA.issuing, now)))
    evil = tmp_path / "evil.pem"
    evil.write_bytes(cert_pem(_forge_foreign_leaf(now)))
    verify = ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(chain)]
    assert subprocess.run([*verify, str(good)], capture_output=True, check=False).returncode == 0
    refused = subprocess.run([*verify, str(evil)], capture_output=True, text=True, check=False)
    assert refused.returncode != 0
    assert "permitted subtree violation" in refused.stdout + refused.stderr


def _forge_foreign_leaf(now: dt.datetime) -> x509.Certificate:
    """A leaf for another trust domain, signed with the issuing key behind sign_csr's back."""
    key = generate_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(CA.issuing.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(_uris(SpiffeId("evil.mesh", "/svc/api"))), critical=True
        )
        .sign(CA.issuing.key, hashes.SHA256())
    )


def _ca_csr() -> x509.CertificateSigningRequest:
    """A CSR for an ID the signer would give, that also asks to be a CA."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(x509.SubjectAlternativeName(_uris(SVC)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(generate_key(), hashes.SHA256())
    )


def _tampered_csr() -> x509.CertificateSigningRequest:
    der = bytearray(build_csr(generate_key(), [SVC]).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value
    return x509.load_der_x509_csr(bytes(der))


@pytest.mark.parametrize(
    ("csr", "ids", "message"),
    [
        (build_csr(generate_key(), [SVC, OTHER]), [SVC], "asks for identities"),
        (build_csr(generate_key(), [SVC]), [SVC, HOST], "asks for identities"),
        (build_csr(generate_key(), [OTHER]), [SVC], "asks for identities"),
        (_csr_with(generate_key(), []), [SVC], "asks for identities"),
        (_tampered_csr(), [SVC], "signature does not verify"),
        (_ca_csr(), [SVC], "asks for a CA certificate"),
        (_csr_with(rsa.generate_private_key(65537, 2048), _uris(SVC)), [SVC], "weak 2048-bit RSA"),
        (_csr_with(ec.generate_private_key(ec.SECP256K1()), _uris(SVC)), [SVC], "curve secp256k1"),
        (_csr_with(ed25519.Ed25519PrivateKey.generate(), _uris(SVC)), [SVC], "not accepted"),
        (
            _csr_with(generate_key(), [*_uris(SVC), x509.DNSName("api.example")]),
            [SVC],
            "other than SPIFFE",
        ),
        (
            _csr_with(generate_key(), [*_uris(SVC), x509.UniformResourceIdentifier("https://x/")]),
            [SVC],
            "not a SPIFFE ID",
        ),
        (
            build_csr(generate_key(), [SpiffeId("other.mesh", "/svc/api")]),
            [SpiffeId("other.mesh", "/svc/api")],
            "outside the trust domain",
        ),
        (build_csr(generate_key(), [SVC]), [], "no SPIFFE IDs"),
    ],
)
def test_sign_refuses(
    csr: x509.CertificateSigningRequest, ids: list[SpiffeId], message: str
) -> None:
    with pytest.raises(CertificateError, match=message):
        sign_csr(csr, ids, CA.issuing, NOW)


def test_rsa_3072_accepted() -> None:
    csr = _csr_with(rsa.generate_private_key(65537, 3072), _uris(SVC))
    assert spiffe_ids(sign_csr(csr, [SVC], CA.issuing, NOW)) == [SVC]


@pytest.mark.parametrize("lifetime", [dt.timedelta(0), MAX_LEAF_LIFETIME + dt.timedelta(seconds=1)])
def test_lifetime_bounds(lifetime: dt.timedelta) -> None:
    with pytest.raises(CertificateError, match="lifetime"):
        sign_csr(build_csr(generate_key(), [SVC]), [SVC], CA.issuing, NOW, lifetime)


def test_leaf_never_outlives_issuer() -> None:
    late = CA.issuing.cert.not_valid_after_utc - dt.timedelta(hours=1)
    cert = sign_csr(build_csr(generate_key(), [SVC]), [SVC], CA.issuing, late)
    assert cert.not_valid_after_utc == CA.issuing.cert.not_valid_after_utc
