"""A fake but real issuer for renewal tests: mutual TLS, POST /issue, signed by a test CA.

It stands in for an issuing meshd (built elsewhere): a threaded HTTPS
server on 127.0.0.1 whose certificate holds ``spiffe://<td>/host/<name>``,
that verifies the caller against the mesh bundle and signs the CSR it gets
with the test CA's issuing key, for ``lifetime``. ``stop``/``start`` take
it down and up on the same port; ``hold`` makes it keep a request
unanswered until ``release``.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshd.pki import build_csr, cert_pem, generate_key, spiffe_ids
from tests.meshd.tlsfixtures import Identity, TestPki


@dataclass
class Signed:
    """What one request asked for and got."""

    ids: tuple[str, ...]
    public_key: bytes
    serial: str  # upper-case hex, as meshd's /stats says it
    asked: tuple[str, ...] = ()  # the CSR's identities


@dataclass
class FakeIssuer:
    pki: TestPki
    name: str = "issuer1"
    lifetime: dt.timedelta = dt.timedelta(seconds=6)
    signed: list[Signed] = field(default_factory=list)
    requests: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    holding: bool = False
    port: int = 0
    # "other-key": signs a key it made itself; "huge": a 1 MiB answer; "ca": a CA certificate;
    # "short": one that expires in 5 s; "extra": with an ID nobody asked for; "host-only":
    # leaves the CSR's services out
    misbehave: str = ""

    def __post_init__(self) -> None:
        self.identity: Identity = self.pki.issue(self.name, f"host/{self.name}")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(self.identity.bundle)
        self.ctx.load_cert_chain(self.identity.cert, self.identity.key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.server: http.server.ThreadingHTTPServer | None = None
        self.start()

    def registry_entry(self) -> dict[str, Any]:
        return {"host": self.name, "address": "127.0.0.1", "port": self.port}

    def start(self) -> None:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                issuer.requests += 1
                if issuer.holding:
                    issuer.held.wait(30)
                answer = issuer.sign(json.loads(body)["csr_pem"].encode())
                if issuer.misbehave == "huge":
                    answer["padding"] = "x" * 1024 * 1024
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.socket = self.ctx.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: connections to its port are refused until ``start``."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def hold(self) -> None:
        self.holding = True
        self.held.clear()

    def release(self) -> None:
        self.holding = False
        self.held.set()

    def sign(self, csr_pem: bytes) -> dict[str, str]:
        csr = x509.load_pem_x509_csr(csr_pem)
        assert csr.is_signature_valid
        if self.misbehave == "other-key":
            csr = build_csr(generate_key(), spiffe_ids(csr))
        authority = self.pki.ca.issuing
        now = dt.datetime.now(dt.UTC)
        ids = spiffe_ids(csr)
        if self.misbehave == "host-only":  # as an issuer whose registry dropped the services
            ids = [i for i in ids if i.kind == "host"]
        uris = [x509.UniformResourceIdentifier(str(i)) for i in ids]
        if self.misbehave == "extra":
            uris.append(x509.UniformResourceIdentifier(f"spiffe://{self.pki.trust_domain}/svc/x"))
        ca = self.misbehave == "ca"
        lifetime = dt.timedelta(seconds=5) if self.misbehave == "short" else self.lifetime
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(authority.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=1))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), True
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(uris), critical=False)
            .sign(authority.key, hashes.SHA256())
        )
        public = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.signed.append(
            Signed(
                tuple(u.value for u in uris),
                public,
                format(cert.serial_number, "X"),
                tuple(str(i) for i in spiffe_ids(csr)),
            )
        )
        chain = cert_pem(cert, authority.cert).decode()
        return {"cert_pem": chain, "not_after": cert.not_valid_after_utc.isoformat()}


def refused_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
