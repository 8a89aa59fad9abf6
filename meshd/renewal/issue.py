"""Renewal's call to an issuer: ``POST /issue`` on its admin API over mutual TLS.

meshd authenticates with the certificate it runs (``TlsMaterial.issuer``:
ALPN http/1.1) and talks only to an issuer whose verified certificate holds
``spiffe://<td>/host/<issuer host>``: the registry names the host, the
certificate proves it. Every wait has a deadline and the answer is bounded
(``MAX_ANSWER``) before it is parsed: until the key is proven, the issuer is
a peer like any other. Its error text reaches our logs through
``meshd.telemetry.logs.clean``.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSAttribute

from meshd.errors import CertificateError, ConnectError, MeshError
from meshd.identity import make_id
from meshd.registry import IssuerRef
from meshd.telemetry.logs import clean
from meshd.tls.context import TlsMaterial, peer_ids

MAX_ANSWER = 64 * 1024  # a leaf and its issuer CA in PEM are ~2 KiB
CALL_TIMEOUT = 10.0  # connect, handshake, request and answer, all together


async def ask(
    issuer: IssuerRef,
    tls: TlsMaterial,
    trust_domain: str,
    csr_pem: str,
    timeout: float = CALL_TIMEOUT,
) -> str:
    """The certificate chain (PEM) ``issuer`` signs for ``csr_pem``; MeshError saying why not."""
    where = f"issuer {issuer.host} ({issuer.address}:{issuer.port})"
    try:
        with anyio.fail_after(timeout):
            answer = await _exchange(issuer, tls, trust_domain, csr_pem)
    except TimeoutError as e:
        raise ConnectError(f"{where}: no answer within {timeout:.0f}s") from e
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as e:
        raise ConnectError(f"{where}: {clean(e) or type(e).__name__}") from e
    except MeshError as e:
        raise type(e)(f"{where}: {e.message}", e.hint) from e
    return answer


async def _exchange(issuer: IssuerRef, tls: TlsMaterial, trust_domain: str, csr: str) -> str:
    stream = await anyio.connect_tcp(
        issuer.address, issuer.port, ssl_context=tls.issuer, tls_standard_compatible=False
    )
    async with stream:
        held = peer_ids(stream.extra(TLSAttribute.ssl_object))  # noqa: S610 (not Django)
        wanted = make_id(trust_domain, "host", issuer.host)
        if wanted not in held:
            have = ", ".join(sorted(map(str, held))) or "none"
            raise CertificateError(f"its certificate does not hold {wanted} (it has: {have})")
        await stream.send(request(issuer, csr))
        return cert_of(*parse_answer(await _read(stream)))


def request(issuer: IssuerRef, csr_pem: str) -> bytes:
    body = json.dumps({"csr_pem": csr_pem}).encode()
    head = (
        f"POST /issue HTTP/1.1\r\nHost: {issuer.address}:{issuer.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def _read(stream: ByteStream) -> bytes:
    """The whole answer: until the issuer closes or its Content-Length is in, at most MAX_ANSWER."""
    data = b""
    while not complete(data):
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            break
        if len(data) > MAX_ANSWER:
            raise CertificateError(f"its answer is larger than {MAX_ANSWER} bytes")
    return data


def complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole answer with a Content-Length (else: read to the end)."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False


def parse_answer(data: bytes) -> tuple[int, Any]:
    """The status and JSON body of an HTTP/1.1 answer; CertificateError if it is neither."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise CertificateError(f"not an HTTP answer: {clean(head[:80])}")
    try:
        return int(status_line[1]), json.loads(body)
    except (ValueError, RecursionError) as e:
        raise CertificateError(f"answer {clean(status_line[1])} without a JSON body") from e


def cert_of(status: int, doc: Any) -> str:
    """The ``cert_pem`` of a 200 answer; the issuer's refusal, cleaned, otherwise."""
    if not isinstance(doc, dict):
        raise CertificateError(f"answer {status}: not a JSON object")
    if status != 200:
        error, hint = clean(doc.get("error", "")), clean(doc.get("hint", ""))
        raise CertificateError(f"refused ({status}): {error}", hint or None)
    cert = doc.get("cert_pem")
    if not isinstance(cert, str) or "-----BEGIN CERTIFICATE-----" not in cert:
        raise CertificateError("answer 200 without a PEM cert_pem")
    return cert
