"""TLS material for the mesh: contexts for links and the admin API, peer identities.

Every mesh connection is TLS 1.3 with both certificates verified against the
trust bundle; hostnames are not checked, SPIFFE IDs are (by the caller, with
``peer_ids``; with ``vouched_ids`` wherever an operator, monitor or issuer ID
is trusted, since an issuer CA may sign only host and service IDs). The
contexts are built in one place so that the handshake implementation can be
swapped (Python's ssl today). A reload builds a new ``TlsMaterial`` and swaps
it in; connections made earlier keep theirs.
``TlsMaterial.from_pem`` builds one from text (a pushed or renewed
certificate, or the running one under another trust bundle).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.errors import CertificateError, ConfigError
from meshd.identity import ISSUED_KINDS, ISSUER_CA_SUFFIX, SpiffeId
from meshd.registry import serial_key
from meshd.tls.der import leaf_problem

# The link protocol. Version 2 adds the link budget: a dialler keeps what it has in flight
# within the budget only with a peer that credits small streams in time (version 2);
# a version 1 peer (meshd 0.1.0) is still linked, during a rolling upgrade.
ALPN_LINK_2 = "meshd-link/2"
ALPN_LINK = "meshd-link/1"
LINK_PROTOCOLS = (ALPN_LINK_2, ALPN_LINK)  # preferred first
ALPN_ADMIN = "http/1.1"


@dataclass(frozen=True)
class Pem:
    """The text a ``TlsMaterial`` was made from: enough to make it again under another bundle."""

    chain: bytes  # leaf first (a key before it is ignored)
    key: bytes
    bundle: bytes


@dataclass(frozen=True)
class SelfView:
    """Our own certificate as a peer sees it (``_self_check``)."""

    ids: frozenset[SpiffeId]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: str  # upper-case hex without leading zeros (``serial_of``)


@dataclass(frozen=True)
class TlsMaterial:
    """Loaded certificate, key and bundle, with the contexts made from them.

    ``issuer``: the client context for renewal's call to an issuer's admin API.
    """

    ids: frozenset[SpiffeId]
    not_after: dt.datetime
    server: ssl.SSLContext
    client: ssl.SSLContext
    admin: ssl.SSLContext
    issuer: ssl.SSLContext
    not_before: dt.datetime
    serial: str
    pem: Pem = field(repr=False)
    # what links compare at a swap: the same certificate under the same bundle, or not
    # (a digest of both, not a counter: a reload that changed nothing keeps every link)
    generation: bytes = field(default=b"", repr=False)
    # the trust bundle alone: a swap that keeps it leaves peers' chains valid until expiry
    trust: bytes = field(default=b"", repr=False)

    @classmethod
    def load(cls, cert: Path, key: Path, bundle: Path) -> TlsMaterial:
        """Load and check the files; CertificateError naming the file on any problem."""
        for path in (cert, key, bundle):
            if not path.is_file():
                raise CertificateError(f"{path}: no such file")
        server = mutual_context(ssl.Purpose.CLIENT_AUTH, cert, key, bundle, [*LINK_PROTOCOLS])
        client = mutual_context(ssl.Purpose.SERVER_AUTH, cert, key, bundle, [*LINK_PROTOCOLS])
        me = _self_check(client, server, cert)
        pem = Pem(cert.read_bytes(), key.read_bytes(), bundle.read_bytes())
        return cls(
            ids=me.ids,
            not_after=me.not_after,
            server=server,
            client=client,
            admin=mutual_context(ssl.Purpose.CLIENT_AUTH, cert, key, bundle, [ALPN_ADMIN]),
            issuer=mutual_context(ssl.Purpose.SERVER_AUTH, cert, key, bundle, [ALPN_ADMIN]),
            not_before=me.not_before,
            serial=me.serial,
            pem=pem,
            generation=_generation(pem),
            trust=hashlib.sha256(pem.bundle).digest(),
        )

    @classmethod
    def from_pem(cls, pem: Pem) -> TlsMaterial:
        """``load`` from text, through private scratch files (CertificateError names them)."""
        with tempfile.TemporaryDirectory(prefix="meshd-tls-") as tmp:  # 0700: the key stays ours
            paths = [Path(tmp) / name for name in ("cert.pem", "key.pem", "bundle.pem")]
            for path, data in zip(paths, (pem.chain, pem.key, pem.bundle), strict=True):
                path.write_bytes(data)
            try:
                return cls.load(*paths)
            except CertificateError as e:  # name what was given, not the scratch files
                message = e.message
                for path, name in zip(
                    paths, ("the certificate", "the key", "the bundle"), strict=True
                ):
                    message = message.replace(str(path), name)
                raise CertificateError(message, e.hint) from e

    def under(self, bundle: bytes) -> TlsMaterial:
        """The same certificate and key verified under another trust bundle."""
        return TlsMaterial.from_pem(Pem(self.pem.chain, self.pem.key, bundle))


def _generation(pem: Pem) -> bytes:
    """The certificates and the bundle (not a key that may come first, as in renewed.pem)."""
    certs = pem.chain[max(0, pem.chain.find(b"-----BEGIN CERTIFICATE-----")) :]
    return hashlib.sha256(certs + b"\0" + pem.bundle).digest()


def _self_check(client: ssl.SSLContext, server: ssl.SSLContext, cert: Path) -> SelfView:
    """Handshake with ourselves in memory: proves key, chain and bundle agree, reads our identity.

    It also keeps the x509 parser (and its memory) out of the daemon: what we
    need of our own certificate is what a peer would see.
    """
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    near = client.wrap_bio(c_in, c_out, server_side=False)
    far = server.wrap_bio(s_in, s_out, server_side=True)
    done = {near: False, far: False}
    for _ in range(10):
        for obj, out, into in ((near, c_out, s_in), (far, s_out, c_in)):
            try:
                obj.do_handshake()
                done[obj] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                why = getattr(e, "verify_message", None) or e.reason or str(e)
                raise CertificateError(
                    f"{cert} does not verify against the trust bundle: {why}",
                    hint="check that the certificate is current and issued by the mesh CA",
                ) from e
            into.write(out.read())
        if all(done.values()):
            break
    peer = near.getpeercert()
    if not peer:
        raise CertificateError(f"{cert}: the handshake with itself did not complete")
    return SelfView(
        peer_ids(near), _time(peer["notBefore"]), _time(peer["notAfter"]), serial_of(peer)
    )


def serial_of(peer: dict[str, Any]) -> str:
    """A ``getpeercert()`` serial as the registry spells serials: upper-case hex, no leading 0.

    OpenSSL pads the hex to whole bytes ("0A1B"), ``format(serial, "X")`` does
    not ("A1B"): one in eight random serials would be spelled two ways.
    """
    return serial_key(str(peer["serialNumber"]))


def _time(text: object) -> dt.datetime:
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(str(text)), dt.UTC)


def mutual_context(
    purpose: ssl.Purpose, cert: Path, key: Path, bundle: Path, alpn: list[str]
) -> ssl.SSLContext:
    """A mesh TLS 1.3 context: our certificate, peers verified against the bundle.

    Peers are identified by SPIFFE ID after the handshake, not by host name.
    """
    side = (
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # peers are identified by SPIFFE ID, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    # No session resumption: a resumed session is not verified again, so a ticket would let
    # an identity outlive its certificate (short-lived certificates are our revocation).
    ctx.options |= ssl.OP_NO_TICKET
    if side == ssl.PROTOCOL_TLS_SERVER:
        ctx.num_tickets = 0
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


def vouched_ids(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> frozenset[SpiffeId]:
    """``peer_ids``, less what the CA that signed the leaf may not vouch for.

    An issuer CA's name constraint covers the trust domain, not the path, so
    OpenSSL would accept an operator, monitor or issuer ID from an issuer key
    (one on a compromised host): from a leaf an issuer signed only host and
    service IDs count. Whoever trusts an operator, monitor or issuer ID asks here.
    """
    ids = peer_ids(ssl_object)
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if cert and issued_by_issuer(cert):
        return frozenset(i for i in ids if i.kind in ISSUED_KINDS)
    return ids


def issued_by_issuer(peer: dict[str, Any]) -> bool:
    """Whether a verified leaf (``getpeercert()``) was signed by an issuer CA.

    The chain was built by name, so the leaf's issuer name is its CA's subject:
    "<host> issuer CA" for an issuer (``meshd.identity.issuer_ca_name``).
    """
    for rdn in peer.get("issuer", ()):
        for attribute, value in rdn:
            if attribute == "commonName" and str(value).endswith(ISSUER_CA_SUFFIX):
                return True
    return False


def peer_problem(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """Why a verified peer's leaf may not identify it (a CA, no signing key usage), or None."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return "it presented no certificate"
    return leaf_problem(der)


def started(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> float:
    """When the peer's certificate started (its notBefore, Unix seconds; 0 when there is none:
    revocations by ID then count it as started before any of them)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    when = cert.get("notBefore") if cert else None
    return float(ssl.cert_time_to_seconds(str(when))) if when else 0.0


def seconds_left(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> float:
    """Seconds until the peer's certificate expires (0 when there is none, or it has)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return 0.0
    return max(0.0, ssl.cert_time_to_seconds(str(cert["notAfter"])) - time.time())
