"""What renewal accepts from an issuer: pure checks of a certificate that already loaded.

By then ``TlsMaterial.from_pem`` has proven that it fits the key meshd made,
chains to the trust bundle meshd runs and is current. An issuer (a peer,
until proven) must still have signed a leaf, not a CA; for this host's
identity; for nothing it was not asked for (fewer is fine: an issuer signs
what the registry still assigns); and not one expiring before the running
certificate, which would shorten what meshd has.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Set

from meshd.identity import SpiffeId
from meshd.tls.der import leaf_problem

BEGIN, END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def refusal(
    leaf: bytes,
    ids: Set[SpiffeId],
    not_after: dt.datetime,
    asked: Set[SpiffeId],
    host_id: SpiffeId,
    running_not_after: dt.datetime,
) -> str | None:
    """Why renewal must not swap in the certificate ``leaf`` (DER), or None."""
    problem = leaf_problem(leaf)
    if problem is not None:
        return problem
    if host_id not in ids:
        return f"its certificate does not carry {host_id}"
    extra = sorted(str(i) for i in ids - asked)
    if extra:
        return f"its certificate carries what we did not ask for: {', '.join(extra)}"
    if not_after < running_not_after:
        return (
            f"its certificate expires at {not_after.isoformat()}, before the one we run"
            f" ({running_not_after.isoformat()})"
        )
    return None


def leaf_der(chain: bytes) -> bytes:
    """The first certificate of a PEM chain, in DER (b"" when there is none)."""
    start = chain.find(BEGIN)
    end = chain.find(END, start)
    if start < 0 or end < 0:
        return b""
    return ssl.PEM_cert_to_DER_cert(chain[start : end + len(END)].decode("ascii", "replace"))
