"""Keys, CSRs and certificates as meshd needs them, and the one leaf signer of the mesh.

meshd makes its private key where it is used and asks for certificates with a
CSR naming the SPIFFE IDs it wants; nothing here touches the network. Files
holding private keys are written 0600 through ``meshd.files.write_private``
(fresh temporary name, never through a link), and so is the CSR.

``sign_csr`` is how every leaf is signed, by meshctl's issuing CA and by an
issuer meshd (``meshd.issuer``) alike, so that both refuse the same CSRs.
The daemon loads this module (and cryptography's x509) only on an issuer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.errors import CertificateError
from meshd.files import write_atomic, write_private
from meshd.identity import SpiffeId

CURVE = ec.SECP256R1()
DEFAULT_LEAF_LIFETIME = dt.timedelta(hours=24)
MAX_LEAF_LIFETIME = dt.timedelta(days=90)
MAX_BACKDATE = dt.timedelta(minutes=5)  # tolerate clock skew between hosts
ALLOWED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 3072


def admin_server_name(trust_domain: str) -> str:
    """The DNS name every meshd's certificate carries besides its SPIFFE IDs: ``meshd.<td>``.

    Scrapers that check a host name and not a SPIFFE ID (Prometheus) verify meshd's
    admin API with it; meshctl goes further and checks the host's SPIFFE ID.
    """
    return f"meshd.{trust_domain}"


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def backdate(lifetime: dt.timedelta) -> dt.timedelta:
    """How far before ``now`` a certificate of ``lifetime`` starts: clock skew, within reason.

    A tenth of the lifetime at most: a 1-minute leaf backdated 5 minutes
    would be past its renewal point (2/3 of its life) the moment it is issued.
    """
    return min(MAX_BACKDATE, lifetime / 10)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key, the mesh's key type for every identity."""
    return ec.generate_private_key(CURVE)


def build_csr(
    key: ec.EllipticCurvePrivateKey, ids: Iterable[SpiffeId]
) -> x509.CertificateSigningRequest:
    """A CSR asking for ``ids`` as URI SANs, signed by ``key``."""
    uris = [x509.UniformResourceIdentifier(str(i)) for i in sorted(set(ids))]
    if not uris:
        raise CertificateError("a CSR needs at least one SPIFFE ID")
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uris[0].value)]))
        .add_extension(x509.SubjectAlternativeName(uris), critical=False)
        .sign(key, hashes.SHA256())
    )


def private_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def spiffe_ids(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[SpiffeId]:
    """The SPIFFE IDs among the URI SANs of a certificate or CSR."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return [SpiffeId.parse(u) for u in uris if u.startswith("spiffe://")]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate, as colon-separated hex."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def load_certs(path: Path) -> list[x509.Certificate]:
    """All PEM certificates in ``path``; CertificateError naming the file otherwise."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError as e:
        raise CertificateError(f"{path}: no such file") from e
    except ValueError as e:
        raise CertificateError(f"{path}: not a PEM certificate file ({e})") from e
    return certs


def cert_pem(*certs: x509.Certificate) -> bytes:
    """PEM text of ``certs``, concatenated."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def keygen(key_path: Path, csr_path: Path, ids: Sequence[str], force: bool) -> None:
    """Make a fresh key at ``key_path`` and write a CSR for ``ids``."""
    parsed = [SpiffeId.parse(i) for i in ids]
    if key_path.exists() and not force:
        raise CertificateError(f"{key_path} exists", hint="pass --force to replace the key")
    key = generate_key()
    csr = build_csr(key, parsed).public_bytes(serialization.Encoding.PEM)
    write_private(key_path, private_pem(key))
    if str(csr_path) == "-":
        sys.stdout.write(csr.decode())
    else:
        write_atomic(csr_path, csr, 0o644)  # as root: never through a link planted there


def sign_csr(
    csr: x509.CertificateSigningRequest,
    ids: Iterable[SpiffeId],
    issuer: Authority,
    now: dt.datetime,
    lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME,
    *,
    subset: bool = False,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign ``csr`` for exactly ``ids``; refuse anything else about it.

    Refused: a CSR whose signature does not verify, a weak or unknown key
    type, one asking for a CA, requested SPIFFE IDs that differ from ``ids``
    (with ``subset``: ``ids`` may leave some of them out, as an issuer does
    with a service the registry no longer assigns), any other SAN, IDs outside
    the issuer's trust domain, a lifetime beyond the maximum. The leaf never
    outlives ``issuer``'s certificate, and never starts before ``not_before``
    (a revoked host name that joined again: ``Registry.not_before_floor``). A leaf
    holding a host ID also gets the DNS name ``admin_server_name`` (signer-made, never asked
    for), so that a scraper that knows no SPIFFE can verify meshd's admin API.
    """
    wanted = sorted(set(ids))
    check_csr(csr, wanted, subset=subset)
    _check_trust_domain(wanted, issuer)
    if not dt.timedelta(0) < lifetime <= MAX_LEAF_LIFETIME:
        raise CertificateError(f"leaf lifetime {lifetime} is outside (0, {MAX_LEAF_LIFETIME}]")
    not_after = min(now + lifetime, issuer.cert.not_valid_after_utc)
    start = now - backdate(lifetime)
    if not_before is not None and not_before > start:
        start = not_before  # a revocation by ID spares only leaves from then on
    if start >= not_after:
        raise CertificateError(
            f"the leaf would start ({start.isoformat()}) no earlier than it ends"
            f" ({not_after.isoformat()})",
            hint="check this host's clock",
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(wanted[0]))]))
        .issuer_name(issuer.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_leaf_names(wanted)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer.key, hashes.SHA256())


def _leaf_names(ids: Sequence[SpiffeId]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(i)) for i in ids]
    domains = sorted({i.trust_domain for i in ids if i.kind == "host"})
    return names + [x509.DNSName(admin_server_name(d)) for d in domains]


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def check_csr(
    csr: x509.CertificateSigningRequest, wanted: list[SpiffeId], *, subset: bool = False
) -> None:
    """Refuse a CSR that is badly signed, of a weak key, asks for a CA or for other IDs
    (``subset``: for fewer IDs than ``wanted`` is fine, as long as it asks for them all)."""
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:  # pragma: no cover - cryptography returns False instead
        valid = False
    if not valid:
        raise CertificateError(
            "CSR signature does not verify", hint="regenerate it with meshd keygen"
        )
    _check_key(csr.public_key())
    _check_not_ca(csr)
    if not wanted:
        raise CertificateError("no SPIFFE IDs to sign for")
    _check_sans(csr, wanted, subset)


def _check_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise CertificateError(
                f"CSR key uses curve {key.curve.name}; allowed: {', '.join(ALLOWED_CURVES)}"
            )
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateError(
                f"CSR has a weak {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits"
            )
        return
    raise CertificateError(f"CSR key type {type(key).__name__} is not accepted; use ECDSA P-256")


def _check_not_ca(csr: x509.CertificateSigningRequest) -> None:
    try:
        constraints = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    if constraints.ca:
        raise CertificateError(
            "CSR asks for a CA certificate; only leaves are signed",
            hint="make the CSR with meshd keygen",
        )


def _check_sans(csr: x509.CertificateSigningRequest, wanted: list[SpiffeId], subset: bool) -> None:
    names: list[x509.GeneralName]
    try:
        names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []  # (cryptography 51 refuses an empty SubjectAlternativeName)
    others = [n for n in names if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        raise CertificateError(f"CSR asks for names other than SPIFFE IDs: {others[0].value}")
    requested = sorted(set(spiffe_ids(csr)))
    if len(requested) != len(names):
        raise CertificateError("CSR asks for a URI that is not a SPIFFE ID")
    if requested != wanted and not (subset and set(wanted) <= set(requested)):
        raise CertificateError(
            "CSR asks for identities "
            f"{_fmt(requested)} but the signing request is for {_fmt(wanted)}",
            hint="make the CSR with exactly the identities the inventory gives this host",
        )


def _check_trust_domain(wanted: list[SpiffeId], issuer: Authority) -> None:
    constraint = issuer.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    domains = {u.value for u in constraint.permitted_subtrees or []}
    foreign = [i for i in wanted if i.trust_domain not in domains]
    if foreign:
        raise CertificateError(
            f"{foreign[0]} is outside the trust domain {', '.join(sorted(domains))}"
        )


def _fmt(ids: list[SpiffeId]) -> str:
    return "[" + ", ".join(str(i) for i in ids) + "]" if ids else "[]"
