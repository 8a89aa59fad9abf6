"""The issuer's work that needs cryptography: its key, its CA certificate, signing.

Imported only on a host that is (or is becoming) an issuer, and called in a
worker thread (``meshd.issuer.service``): the daemon of every other host
never loads x509 code. Leaves are signed by ``meshd.pki.sign_csr``, the
signer meshctl uses too, after ``meshd.issuer.decide.grant`` has said which
identities the caller may have.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.errors import CertificateError, MeshError
from meshd.files import write_private
from meshd.identity import SpiffeId
from meshd.issuer.decide import Caller, Grant, Refusal, grant
from meshd.pki import (
    Authority,
    build_csr,
    cert_pem,
    generate_key,
    private_pem,
    sign_csr,
    spiffe_ids,
)
from meshd.registry import Registry


@dataclass(frozen=True)
class IssuerCa:
    """A checked issuer CA: the certificate with its key, and which key file holds that key."""

    authority: Authority
    key_file: Path
    not_after: dt.datetime

    @property
    def pem(self) -> bytes:
        return cert_pem(self.authority.cert)


@dataclass(frozen=True)
class Issued:
    """A signed leaf: its PEM followed by the issuer CA's, when it expires, and which asked-for
    identities it leaves out (and why)."""

    chain_pem: str
    not_after: dt.datetime
    dropped: tuple[str, ...] = ()


def new_key(pending: Path, issuer_id: SpiffeId) -> str:
    """A fresh issuer key at ``pending`` (0600) and the PEM CSR for ``issuer_id``."""
    key = generate_key()
    csr = build_csr(key, [issuer_id]).public_bytes(serialization.Encoding.PEM)
    write_private(pending, private_pem(key))
    return csr.decode()


def check_ca(
    text: str,
    key_files: Sequence[Path],
    bundle: Sequence[bytes],
    issuer_id: SpiffeId,
    now: dt.datetime,
) -> IssuerCa:
    """``text`` as this host's issuer CA; CertificateError naming the field otherwise.

    It must be one CA certificate with path length 0, constrained to our
    trust domain, for ``issuer_id``, current, signed by a root of ``bundle``
    (DER, the trust bundle meshd runs), for the key in one of ``key_files``.
    """
    cert = _one_certificate(text)
    _check_shape(cert, issuer_id)
    _check_current(cert, now)
    _check_chain(cert, bundle)
    key, key_file = _matching_key(cert, key_files)
    return IssuerCa(Authority(cert, key), key_file, cert.not_valid_after_utc)


def _fail(problem: str, hint: str = "sign the issuer's CSR with meshctl issuer add") -> NoReturn:
    raise CertificateError(f"issuer: cert_pem: {problem}", hint=hint)


def _one_certificate(text: str) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError as e:
        raise CertificateError(f"issuer: cert_pem: not a PEM certificate ({e})") from e
    if len(certs) != 1:
        _fail(f"holds {len(certs)} certificates; expected the issuer CA alone")
    return certs[0]


def _check_shape(cert: x509.Certificate, issuer_id: SpiffeId) -> None:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        names = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        _fail("not an issuer CA: it needs basicConstraints and nameConstraints")
    if not basic.ca or basic.path_length != 0:
        _fail(f"not a CA with path length 0 (ca={basic.ca}, path length {basic.path_length})")
    domains = [u.value for u in names.permitted_subtrees or []]
    if domains != [issuer_id.trust_domain]:
        _fail(f"name constraints {domains} are not the trust domain {issuer_id.trust_domain}")
    if spiffe_ids(cert) != [issuer_id]:
        shown = [str(i) for i in spiffe_ids(cert)]
        _fail(f"names {shown}, not this host's issuer identity {issuer_id}")


def _check_current(cert: x509.Certificate, now: dt.datetime) -> None:
    if now >= cert.not_valid_after_utc:
        _fail(f"expired on {cert.not_valid_after_utc.isoformat()}", "run meshctl ca renew-issuers")
    if now < cert.not_valid_before_utc:
        _fail(f"not valid before {cert.not_valid_before_utc.isoformat()}", "check the clocks")


def _check_chain(cert: x509.Certificate, bundle: Sequence[bytes]) -> None:
    for der in bundle:
        root = x509.load_der_x509_certificate(der)
        if root.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue  # another root of the same name, or not signed by it
        return
    _fail("not signed by a root of the trust bundle meshd runs", "sign it with this mesh's root")


def _matching_key(
    cert: x509.Certificate, key_files: Sequence[Path]
) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    wanted = _public_der(cert.public_key())
    for path in key_files:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise CertificateError(f"issuer: cannot read the issuer key {path}: {e}") from e
        if isinstance(key, ec.EllipticCurvePrivateKey) and _public_der(key.public_key()) == wanted:
            return key, path
    _fail(
        "its public key is not the pending issuer key nor the current one",
        "ask this host for a CSR (POST /issuer/csr) and sign that",
    )


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(
    ca: IssuerCa,
    csr_pem: str,
    caller: Caller,
    registry: Registry,
    trust_domain: str,
    lifetime: dt.timedelta,
    now: dt.datetime,
) -> Issued | Refusal:
    """Sign ``csr_pem`` for ``caller`` as ``grant`` allows it; the refusal otherwise."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        requested = spiffe_ids(csr)
    except (ValueError, MeshError) as e:
        return Refusal(f"csr_pem is not a usable PEM CSR: {e}")
    allowed = grant(caller, requested, registry, trust_domain, now.timestamp())
    if isinstance(allowed, Refusal):
        return allowed
    try:
        cert = sign_csr(
            csr, allowed.ids, ca.authority, now, lifetime, subset=True, not_before=_start(allowed)
        )
    except MeshError as e:
        return Refusal(e.message)
    chain = cert_pem(cert, ca.authority.cert).decode()
    return Issued(chain, cert.not_valid_after_utc, allowed.dropped)


def _start(allowed: Grant) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(allowed.not_before, dt.UTC) if allowed.not_before else None
