"""Issuer CAs for tests: signed by a test root as ``meshctl issuer add`` signs them, or not quite."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshd.pki import Authority, cert_pem


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
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"issuer {host}")]))
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
