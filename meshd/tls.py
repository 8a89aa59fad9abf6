"""TLS material for the mesh: contexts for links and the admin API, peer identities.

Every mesh connection is TLS 1.3 with both certificates verified against the
trust bundle; hostnames are not checked, SPIFFE IDs are (by the caller, with
``peer_ids``). The contexts are built in one place so that the handshake
implementation can be swapped (Python's ssl today). A reload builds a new
``TlsMaterial`` and swaps it in; connections made earlier keep theirs.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from meshd.errors import CertificateError, ConfigError
from meshd.identity import SpiffeId
from meshd.pki import load_certs, spiffe_ids

ALPN_LINK = "meshd-link/1"
ALPN_ADMIN = "http/1.1"


@dataclass(frozen=True)
class TlsMaterial:
    """Loaded certificate, key and bundle, with the contexts made from them."""

    ids: frozenset[SpiffeId]
    not_after: dt.datetime
    server: ssl.SSLContext
    client: ssl.SSLContext
    admin: ssl.SSLContext

    @classmethod
    def load(cls, cert: Path, key: Path, bundle: Path) -> TlsMaterial:
        """Load and check the files; CertificateError naming the file on any problem."""
        chain = load_certs(cert)
        leaf = chain[0]
        load_certs(bundle)  # a readable, non-empty bundle before OpenSSL sees it
        return cls(
            ids=frozenset(spiffe_ids(leaf)),
            not_after=leaf.not_valid_after_utc,
            server=_context(ssl.Purpose.CLIENT_AUTH, cert, key, bundle, [ALPN_LINK]),
            client=_context(ssl.Purpose.SERVER_AUTH, cert, key, bundle, [ALPN_LINK]),
            admin=_context(ssl.Purpose.CLIENT_AUTH, cert, key, bundle, [ALPN_ADMIN]),
        )


def _context(
    purpose: ssl.Purpose, cert: Path, key: Path, bundle: Path, alpn: list[str]
) -> ssl.SSLContext:
    side = (
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # peers are identified by SPIFFE ID, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(bundle))
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        raise CertificateError(
            f"cannot load {cert} / {key} / {bundle}: {e}",
            hint="check that the key matches the certificate",
        ) from e
    ctx.set_alpn_protocols(alpn)
    return ctx


def peer_ids(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> frozenset[SpiffeId]:
    """The SPIFFE IDs of a verified peer certificate (empty if none)."""
    if ssl_object is None:
        return frozenset()
    cert = ssl_object.getpeercert()
    if not cert:
        return frozenset()
    ids = set()
    for entry in cert.get("subjectAltName", ()):
        kind, value = entry[0], entry[1]
        if kind == "URI" and isinstance(value, str) and value.startswith("spiffe://"):
            try:
                ids.add(SpiffeId.parse(value))
            except ConfigError:
                continue
    return frozenset(ids)


def leaf_of(cert: Path) -> x509.Certificate:
    return load_certs(cert)[0]
