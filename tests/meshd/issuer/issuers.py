"""Issuer CAs for tests: signed by a test root as ``meshctl issuer add`` signs them, or not
quite; and leaves signed by an issuer CA."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshctl.ca import sign_issuer
from meshd.files import write_private
from meshd.identity import SpiffeId, issuer_ca_name, make_id
from meshd.pki import Authority, build_csr, cert_pem, generate_key, private_pem, sign_csr
from tests.meshd.tlsfixtures import Identity, TestPki


def sign_issuer_ca(
    csr_pem: str,
    host: str,
    root: Authority,
    trust_domain: str,
    *,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(days=30),
    ca: bool = True,
) -> str:
    """root -> issuer CA: path length 0, name constraints to the trust domain, the issuer SAN."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    start = now or dt.datetime.now(dt.UTC)
    uri = x509.UniformResourceIdentifier(f"spiffe://{trust_domain}/issuer/{host}")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_ca_name(host))]))
        .issuer_name(root.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), critical=True
        )
        .add_extension(
            x509.NameConstraints([x509.UniformResourceIdentifier(trust_domain)], None), True
        )
        .add_extension(x509.SubjectAlternativeName([uri]), critical=False)
    )
    return cert_pem(builder.sign(root.key, hashes.SHA256())).decode()


def issuer_authority(pki: TestPki, host: str) -> Authority:
    """``host``'s issuer CA as ``meshctl issuer add`` makes it: a key, signed by the root."""
    key = generate_key()
    csr = build_csr(key, [make_id(pki.trust_domain, "issuer", host)])
    now = dt.datetime.now(dt.UTC)
    cert = sign_issuer(csr, host, pki.ca.root, now, dt.timedelta(days=1), pki.trust_domain)
    return Authority(cert, key)


def issued_by(authority: Authority, pki: TestPki, name: str, *paths: str) -> Identity:
    """Files of a leaf ``authority`` signs as an issuer meshd signs (``meshd.pki.sign_csr``),
    for ``spiffe://<td>/<path>`` per path: whatever a stolen issuer key could sign."""
    ids = tuple(SpiffeId(pki.trust_domain, "/" + p) for p in paths)
    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    leaf = sign_csr(build_csr(key, ids), ids, authority, now, dt.timedelta(hours=1))
    cert, key_file = pki.dir / f"{name}.pem", pki.dir / f"{name}.key"
    cert.write_bytes(cert_pem(leaf, authority.cert))
    write_private(key_file, private_pem(key))
    return Identity(cert, key_file, pki.bundle, ids)
