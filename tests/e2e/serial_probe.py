"""Which certificate a mesh port presents right now: its serial, by a TLS handshake.

TLS 1.3 encrypts the server's certificate, so a capture of the wire cannot
show it changing; a client holding a mesh identity (the operator's
certificate, or a host's) can. The handshake verifies the port's certificate
against the trust bundle before anything is read from it, and nothing is sent
after the handshake.

Standard library only, so it also runs on a testbed host:

    python3 serial_probe.py ADDRESS PORT --cert C --key K --bundle B
    {"serial": "4F1A...", "not_after": "Dec  5 08:01:00 2026 GMT", "ids": ["spiffe://..."]}

``serial`` is upper-case hex without leading zeros: ``format(serial, "X")``, as
issue 12's contracts spell serials. (``ssl``'s own ``serialNumber`` pads to
whole bytes: ``0A1B`` for ``A1B``.)
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Presented:
    serial: str
    not_after: str
    ids: tuple[str, ...]  # the URI SANs: SPIFFE IDs


def context(cert: Path, key: Path, bundle: Path) -> ssl.SSLContext:
    """Mutual TLS 1.3, the peer verified against ``bundle``; SPIFFE IDs, no host names."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(bundle))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def presented(
    address: str, port: int, cert: Path, key: Path, bundle: Path, timeout: float = 5.0
) -> Presented:
    """Handshake with ``address:port`` and read the verified certificate it presented."""
    tls_context = context(cert, key, bundle)
    with (
        socket.create_connection((address, port), timeout=timeout) as raw,
        tls_context.wrap_socket(raw) as tls,
    ):
        peer = tls.getpeercert()
    if not peer:
        raise ssl.SSLError(f"{address}:{port} presented no certificate")
    return of_peer(peer)


def of_peer(peer: Mapping[str, object]) -> Presented:
    """The parts of ``getpeercert()`` the tests compare."""
    sans = peer.get("subjectAltName", ())
    assert isinstance(sans, tuple)
    ids = tuple(str(value) for kind, value in sans if kind == "URI")
    serial = format(int(str(peer["serialNumber"]), 16), "X")
    return Presented(serial, str(peer["notAfter"]), ids)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args(argv)
    found = presented(a.address, a.port, a.cert, a.key, a.bundle, a.timeout)
    print(json.dumps(asdict(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
