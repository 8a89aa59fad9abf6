"""Real certificates for meshd tests: a mesh CA and leaves for any SPIFFE IDs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshctl.ca import MeshCa, create_ca, sign_csr
from meshd.files import write_private
from meshd.identity import SpiffeId
from meshd.pki import build_csr, cert_pem, generate_key, private_pem, spiffe_ids

TD = "t.mesh"


@dataclass(frozen=True)
class Identity:
    """Files of one identity, as meshd's config points at them."""

    cert: Path
    key: Path
    bundle: Path
    ids: tuple[SpiffeId, ...]


class TestPki:
    """A CA in a directory that issues identities on demand."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, directory: Path, trust_domain: str = TD, ca: MeshCa | None = None) -> None:
        self.dir = directory
        self.trust_domain = trust_domain
        self.ca = ca or create_ca("t", trust_domain, dt.datetime.now(dt.UTC))
        directory.mkdir(parents=True, exist_ok=True)
        self.bundle = directory / f"bundle-{id(self.ca)}.pem"
        self.bundle.write_bytes(cert_pem(self.ca.root.cert))

    def issue(
        self,
        name: str,
        *paths: str,
        lifetime: dt.timedelta = dt.timedelta(hours=1),
        now: dt.datetime | None = None,
    ) -> Identity:
        """Files for ``spiffe://TD/<path>`` per path, e.g. issue("h1", "host/h1", "svc/api")."""
        ids = tuple(SpiffeId(self.trust_domain, "/" + p) for p in paths)
        key = generate_key()
        when = now or dt.datetime.now(dt.UTC)
        cert = sign_csr(build_csr(key, ids), ids, self.ca.issuing, when, lifetime)
        return self._write(name, key, cert)

    def issue_odd(self, name: str, *paths: str, ca: bool, key_usage: bool) -> Identity:
        """A leaf that meshctl would never issue: marked as a CA, or without key usage."""
        key = generate_key()
        uris = [f"spiffe://{self.trust_domain}/{path}" for path in paths]
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uris[0])]))
            .issuer_name(self.ca.issuing.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                False,
            )
        )
        if key_usage:
            builder = builder.add_extension(
                x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), True
            )
        return self._write(name, key, builder.sign(self.ca.issuing.key, hashes.SHA256()))

    def reissue(
        self, identity: Identity, name: str, lifetime: dt.timedelta = dt.timedelta(hours=2)
    ) -> Identity:
        """A fresh certificate for the same key and identities (rotation without a new key).

        A lifetime of seconds gives a certificate that expires while a test runs.
        """
        key = serialization.load_pem_private_key(identity.key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = sign_csr(
            build_csr(key, identity.ids),
            identity.ids,
            self.ca.issuing,
            dt.datetime.now(dt.UTC),
            lifetime,
        )
        return self._write(name, key, cert)

    def _write(
        self, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> Identity:
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(cert_pem(cert, self.ca.issuing.cert))
        write_private(key_path, private_pem(key))
        return Identity(cert_path, key_path, self.bundle, tuple(spiffe_ids(cert)))


def joint_bundle(path: Path, *pkis: TestPki) -> Path:
    """One trust bundle file holding the roots of every CA in ``pkis`` (e.g. federated domains)."""
    path.write_bytes(b"".join(p.bundle.read_bytes() for p in pkis))
    return path


def not_after(identity: Identity) -> dt.datetime:
    """When ``identity``'s certificate expires (to the second, as the certificate says)."""
    cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    return cert.not_valid_after_utc
