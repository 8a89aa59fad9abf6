"""The mesh's certificate authority: root and issuing CA, issuer CAs, and CSR signing.

Pure over keys and certificates (no files): the workspace module stores what
is made here. The root CA signs only CAs: the issuing CA (meshctl's own,
for joins) and the issuer CAs of hosts that sign renewals inside the mesh
(``sign_issuer``); those sign every leaf, constrained to the trust domain's
SPIFFE IDs, with ``sign_csr`` (it lives in ``meshd.pki``, since an issuer
meshd signs with it too). A leaf carries one
or more SPIFFE IDs as URI SANs (a host's meshd holds its host identity and
the identities of the services it fronts in one certificate, so that one
multiplexed link proves them all).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshd.errors import CertificateError
from meshd.identity import SpiffeId, issuer_ca_name, make_id
from meshd.pki import (
    ALLOWED_CURVES,
    DEFAULT_LEAF_LIFETIME,
    MAX_LEAF_LIFETIME,
    MIN_RSA_BITS,
    Authority,
    build_csr,
    check_csr,
    generate_key,
    sign_csr,
)

__all__ = [
    "ALLOWED_CURVES",
    "DEFAULT_LEAF_LIFETIME",
    "ISSUING_CA_LIFETIME",
    "MAX_LEAF_LIFETIME",
    "MIN_RSA_BITS",
    "OPERATOR_CERT_LIFETIME",
    "ROOT_CA_LIFETIME",
    "Authority",
    "MeshCa",
    "create_ca",
    "issue_identity",
    "sign_csr",
    "sign_issuer",
]

ROOT_CA_LIFETIME = dt.timedelta(days=3650)
ISSUING_CA_LIFETIME = dt.timedelta(days=365)
OPERATOR_CERT_LIFETIME = dt.timedelta(days=90)
BACKDATE = dt.timedelta(minutes=5)  # CAs: tolerate clock skew between hosts
MAX_ISSUER_LIFETIME = dt.timedelta(days=365)


@dataclass(frozen=True)
class MeshCa:
    """The two CAs of a mesh."""

    root: Authority
    issuing: Authority


def create_ca(mesh_name: str, trust_domain: str, now: dt.datetime) -> MeshCa:
    """A new root CA (10 y) and issuing CA (1 y) for ``trust_domain``."""
    root_key = generate_key()
    root_name = _ca_name(mesh_name, "root CA")
    root_cert = _ca_builder(
        root_name, root_name, root_key.public_key(), now, ROOT_CA_LIFETIME, None
    )
    root = Authority(root_cert.sign(root_key, hashes.SHA256()), root_key)
    issuing_key = generate_key()
    builder = (
        _ca_builder(
            _ca_name(mesh_name, "issuing CA"),
            root_name,
            issuing_key.public_key(),
            now,
            ISSUING_CA_LIFETIME,
            0,
        )
        .add_extension(
            x509.NameConstraints([x509.UniformResourceIdentifier(trust_domain)], None),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
    )
    return MeshCa(root, Authority(builder.sign(root_key, hashes.SHA256()), issuing_key))


def _ca_name(mesh_name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"mesh {mesh_name}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{mesh_name} {role}"),
        ]
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    lifetime: dt.timedelta,
    path_length: int | None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def sign_issuer(
    csr: x509.CertificateSigningRequest,
    host: str,
    root: Authority,
    now: dt.datetime,
    lifetime: dt.timedelta,
    trust_domain: str,
) -> x509.Certificate:
    """An issuer CA for ``host``'s meshd, signed by the root: it may sign leaves only.

    The CSR must be well signed, of an accepted key, and ask for exactly
    ``spiffe://<trust domain>/issuer/<host>``. The CA gets path length 0 and a
    name constraint to the trust domain, and never outlives the root.
    """
    wanted = make_id(trust_domain, "issuer", host)
    check_csr(csr, [wanted])
    if not dt.timedelta(0) < lifetime <= MAX_ISSUER_LIFETIME:
        raise CertificateError(
            f"issuer lifetime {lifetime} is outside (0, {MAX_ISSUER_LIFETIME}]",
            hint="set issuer_lifetime in mesh.toml from 10m to 365d",
        )
    not_after = min(now + lifetime, root.cert.not_valid_after_utc)
    public_key = csr.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_issuer_name(root.cert, host))
        .issuer_name(root.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - min(BACKDATE, lifetime / 10))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_issuer_key_usage(), critical=True)
        .add_extension(
            x509.NameConstraints([x509.UniformResourceIdentifier(trust_domain)], None),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(wanted))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
            critical=False,
        )
    )
    return builder.sign(root.key, hashes.SHA256())


def _issuer_name(root: x509.Certificate, host: str) -> x509.Name:
    mesh = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(mesh[0].value))] if mesh else []
    return x509.Name([*names, x509.NameAttribute(NameOID.COMMON_NAME, issuer_ca_name(host))])


def _issuer_key_usage() -> x509.KeyUsage:
    """certSign (and CRL signing): an issuer CA's key signs certificates, never TLS."""
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def issue_identity(
    ids: Iterable[SpiffeId], issuer: Authority, now: dt.datetime, lifetime: dt.timedelta
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key made here plus its certificate: for the operator's own identity only."""
    key = generate_key()
    wanted = list(ids)
    return key, sign_csr(build_csr(key, wanted), wanted, issuer, now, lifetime)
