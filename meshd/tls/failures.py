"""Why a TLS handshake, or the link it was for, failed: one vocabulary for every port.

Every ``HandshakeFailed`` event carries a ``HandshakeFailure``: published by
the mesh port and the admin API when a peer's handshake fails
(``meshd.tls.handshake``, ``meshd.admin.server``), by the mesh port when a
peer that finished it is no host of ours or holds its links already
(``meshd.proxy.inbound``), and by the link dialler (``meshd.proxy.pool``).
The values are the ``reason`` label of ``meshd_handshake_failures_total``,
which dashboards and tests read: they never change. ``classify`` is the one
mapping from what a handshake raised to a reason.
"""

from __future__ import annotations

import enum
import ssl

import anyio


class HandshakeFailure(enum.StrEnum):
    # the peer never finished its handshake
    TIMEOUT = "timeout"  # not a known peer within the handshake deadline
    CLOSED = "closed"  # closed or reset before the handshake was done
    EVICTED = "evicted"  # dropped from a full gate of peers not yet known (meshd.tls.gate)
    # what OpenSSL said (``classify``)
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    UNTRUSTED = "untrusted"  # not issued by the trust bundle
    VERIFY_FAILED = "verify_failed"  # any other certificate verdict
    NO_CERTIFICATE = "no_certificate"
    NOT_TLS = "not_tls"
    OLD_TLS = "old_tls"  # below TLS 1.3
    TLS_ERROR = "tls_error"  # any other TLS error
    ERROR = "error"  # neither TLS nor the connection: a bug, logged with it
    # the handshake was done, but the peer is not who the link is for
    REFUSED = "refused"  # a dialled peer's link refused itself: no ALPN, a CA leaf
    WRONG_IDENTITY = "wrong_identity"  # no host identity of ours, or not the one dialled
    TOO_MANY_LINKS = "too_many_links"  # the peer holds max_links_per_peer already
    CONNECT_FAILED = "connect_failed"  # a dial that did not give a link, for any reason


# OpenSSL X509_V_ERR_* codes we name
_VERIFY_REASONS = {
    9: HandshakeFailure.NOT_YET_VALID,
    10: HandshakeFailure.EXPIRED,
    18: HandshakeFailure.UNTRUSTED,
    19: HandshakeFailure.UNTRUSTED,
    20: HandshakeFailure.UNTRUSTED,
    21: HandshakeFailure.UNTRUSTED,
}
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": HandshakeFailure.NO_CERTIFICATE,
    "CERTIFICATE_REQUIRED": HandshakeFailure.NO_CERTIFICATE,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": HandshakeFailure.NO_CERTIFICATE,
    "WRONG_VERSION_NUMBER": HandshakeFailure.NOT_TLS,
    "HTTP_REQUEST": HandshakeFailure.NOT_TLS,
    "UNSUPPORTED_PROTOCOL": HandshakeFailure.OLD_TLS,
    "TLSV1_ALERT_PROTOCOL_VERSION": HandshakeFailure.OLD_TLS,
    "TLSV1_ALERT_UNKNOWN_CA": HandshakeFailure.UNTRUSTED,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": HandshakeFailure.EXPIRED,
    "NO_PROTOCOLS_AVAILABLE": HandshakeFailure.OLD_TLS,
}
# what a peer that goes away raises: the socket's errors, and anyio's streams' (admin API)
_CLOSED = (ConnectionError, EOFError, anyio.EndOfStream, anyio.BrokenResourceError)


def classify(error: BaseException) -> HandshakeFailure:
    """Why a handshake that raised ``error`` failed."""
    if isinstance(error, TimeoutError):
        return HandshakeFailure.TIMEOUT
    if isinstance(error, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(error.verify_code, HandshakeFailure.VERIFY_FAILED)
    if isinstance(error, ssl.SSLError):
        return _REASONS.get(error.reason or "", HandshakeFailure.TLS_ERROR)
    if isinstance(error, _CLOSED):
        return HandshakeFailure.CLOSED
    return HandshakeFailure.ERROR
