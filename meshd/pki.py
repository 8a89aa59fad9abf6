"""Keys, CSRs and certificates as meshd needs them.

meshd makes its private key where it is used and asks for certificates with a
CSR naming the SPIFFE IDs it wants; nothing here touches the network. Files
holding private keys are written 0600 through ``meshd.files.write_private``
(fresh temporary name, never through a link), and so is the CSR.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshd.errors import CertificateError
from meshd.files import write_atomic, write_private
from meshd.identity import SpiffeId

CURVE = ec.SECP256R1()


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
