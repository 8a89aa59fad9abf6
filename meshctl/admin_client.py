"""The operator's client for meshd's admin API: HTTPS with mutual TLS, synchronous.

meshctl presents the workspace's operator certificate, verifies meshd's
certificate against the workspace trust bundle (TLS 1.3 only, no hostname
check) and then insists that it carries ``spiffe://<trust domain>/host/<host>``
for the inventory host it meant to reach; nothing is sent before that check
passed. One request per connection, one deadline (``timeout``) over connect,
handshake, send and read together.

Socket and TLS errors become ConnectError here and nowhere else, naming the
host and address and saying what to check; an error status from meshd
becomes ProvisionError carrying meshd's own message and hint::

    client = AdminClient.for_workspace(ws)
    web1 = AdminEndpoint("web1", "10.0.0.5", ws.config.defaults.admin_port)
    client.put_document(web1, "registry", registry.to_dict())  # a meshd.registry.Registry
    client.stats(web1).registry_version  # /stats, typed: meshd.stats.Stats
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from meshctl.workspace import Workspace
from meshd.errors import CertificateError, ConfigError, ConnectError, ProvisionError
from meshd.identity import make_id
from meshd.stats import KINDS, Stats
from meshd.tls.context import ALPN_ADMIN, mutual_context

DEFAULT_TIMEOUT = 5.0
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
_METHOD = re.compile(r"[A-Z]{1,16}")
_PATH = re.compile(r"/[!-~]*")  # what meshd's request line accepts: no spaces, no CR/LF
_NOT_TLS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "PACKET_LENGTH")


@dataclass(frozen=True)
class AdminEndpoint:
    """One meshd's admin API: the inventory host name and where to connect."""

    host: str
    address: str
    port: int

    @property
    def where(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"meshd on {self.host} ({address}:{self.port})"


@dataclass(frozen=True)
class AdminReply:
    """meshd's answer: status, parsed body, and when the certificate it presented expires."""

    status: int
    body: Any
    peer_not_after: dt.datetime


class AdminClient:
    """Talks to meshd admin APIs as one operator; see the module docstring."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        bundle: Path,
        trust_domain: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.cert, self.key, self.bundle = cert, key, bundle
        self.trust_domain = trust_domain
        self.timeout = timeout
        self.context = _client_context(cert, key, bundle)

    @classmethod
    def for_workspace(cls, ws: Workspace, timeout: float = DEFAULT_TIMEOUT) -> AdminClient:
        """A client presenting the workspace's operator identity and trusting its bundle."""
        return cls(
            ws.operator_cert, ws.operator_key, ws.trust_bundle, ws.config.trust_domain, timeout
        )

    def request(
        self, endpoint: AdminEndpoint, method: str, path: str, doc: Any | None = None
    ) -> AdminReply:
        """One request; any status is returned, only failing to talk to meshd raises."""
        if not _METHOD.fullmatch(method) or not _PATH.fullmatch(path):
            raise ValueError(f"invalid request line {method!r} {path!r}")
        expected = str(make_id(self.trust_domain, "host", endpoint.host))
        payload = _encode(endpoint, method, path, doc)
        deadline = time.monotonic() + self.timeout
        try:
            with self._connect(endpoint, deadline) as tls:
                not_after = _check_peer(tls, expected, endpoint)
                _send(tls, payload, deadline)
                status, content_type, body = _read_reply(tls, deadline, endpoint)
        except OSError as e:
            raise self._connect_error(endpoint, e) from e
        return AdminReply(status, _decode(content_type, body, endpoint), not_after)

    def get_document(self, endpoint: AdminEndpoint, kind: str) -> dict[str, Any] | None:
        """The document of ``kind`` meshd runs with, or None when it has none."""
        reply = self.request(endpoint, "GET", _document_path(kind))
        if reply.status == 404:
            return None
        return _object(_checked(reply, endpoint, f"reading {kind}"), endpoint, kind)

    def put_document(
        self, endpoint: AdminEndpoint, kind: str, doc: dict[str, Any]
    ) -> dict[str, Any]:
        """Push ``doc``; meshd's ``{"status", "version"}``, ProvisionError if it refused."""
        reply = self.request(endpoint, "PUT", _document_path(kind), doc)
        return _object(_checked(reply, endpoint, f"pushing {kind}"), endpoint, kind)

    def call(
        self, endpoint: AdminEndpoint, method: str, path: str, doc: Any | None = None
    ) -> dict[str, Any] | None:
        """Any route (POST /renew, PUT /trust, ...): meshd's JSON object, None for 404 on a
        GET, ProvisionError with meshd's message when it refused."""
        reply = self.request(endpoint, method, path, doc)
        if reply.status == 404 and method == "GET":
            return None
        return _object(_checked(reply, endpoint, f"{method} {path}"), endpoint, path)

    def session(self, endpoint: AdminEndpoint) -> AdminSession:
        """A kept-alive connection to ``endpoint`` for requests repeated often."""
        return AdminSession(self, endpoint)

    def trusting(self, bundle: Path) -> AdminClient:
        """This operator, verifying meshd against ``bundle`` alone (a new root, say)."""
        clone = copy.copy(self)
        clone.bundle, clone.context = bundle, _client_context(self.cert, self.key, bundle)
        return clone

    def stats(self, endpoint: AdminEndpoint) -> Stats:
        """meshd's /stats: version, identities, documents, links, listeners (``meshd.stats``)."""
        reply = self.request(endpoint, "GET", "/stats")
        return Stats.from_json(
            _object(_checked(reply, endpoint, "reading stats"), endpoint, "stats")
        )

    def _connect(
        self,
        endpoint: AdminEndpoint,
        deadline: float,
        wrapped: Callable[[ssl.SSLSocket], None] | None = None,
    ) -> ssl.SSLSocket:
        """A TLS connection to ``endpoint``, handshake done (its peer not checked yet).
        ``wrapped`` is told the socket before the handshake (so that another thread may
        shut it down to wake it: ``meshctl.taps``)."""
        raw = socket.create_connection((endpoint.address, endpoint.port), _remaining(deadline))
        try:
            tls = self.context.wrap_socket(raw, do_handshake_on_connect=False)
        except BaseException:
            raw.close()
            raise
        try:
            if wrapped is not None:
                wrapped(tls)
            tls.settimeout(_remaining(deadline))
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls

    def _connect_error(self, endpoint: AdminEndpoint, e: OSError) -> ConnectError:
        """What went wrong talking to ``endpoint``, and what to check next."""
        where = endpoint.where
        if isinstance(e, ssl.SSLCertVerificationError):
            return ConnectError(
                f"{where} presented a certificate the trust bundle does not accept: "
                f"{e.verify_message or e.reason}",
                hint=f"check that {self.bundle} is this mesh's trust bundle and that the host's "
                "certificate was issued by the mesh CA and is current",
            )
        if isinstance(e, ssl.SSLError):
            return self._tls_error(endpoint, e)
        if isinstance(e, TimeoutError):
            return ConnectError(
                f"{where}: no answer within {self.timeout:g}s",
                hint="check that the host is up and that its admin port is reachable (firewall)",
            )
        if isinstance(e, ConnectionRefusedError):
            return ConnectError(
                f"{where}: connection refused",
                hint="is meshd running? check systemctl status meshd on the host",
            )
        if isinstance(e, socket.gaierror):
            return ConnectError(
                f"{where}: cannot resolve {endpoint.address}: {e.strerror or e}",
                hint="check the host's address in hosts.toml",
            )
        if isinstance(e, ConnectionResetError | BrokenPipeError):
            return ConnectError(
                f"{where} closed the connection before answering",
                hint=f"meshd may have refused the operator certificate {self.cert} (check that "
                "it is current and issued by this mesh's CA) or be at its connection limit; "
                "see journalctl -u meshd on the host",
            )
        return ConnectError(
            f"{where}: {e.strerror or e}", hint="check the host's address and the network to it"
        )

    def _tls_error(self, endpoint: AdminEndpoint, e: ssl.SSLError) -> ConnectError:
        reason = e.reason or str(e)
        if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
            return ConnectError(
                f"{endpoint.where} refused the operator certificate ({reason})",
                hint=f"check that {self.cert} is current and issued by this mesh's CA",
            )
        if any(marker in reason for marker in _NOT_TLS):
            return ConnectError(
                f"{endpoint.where} does not speak TLS ({reason})",
                hint="check that the port is meshd's admin port (admin_port in mesh.toml)",
            )
        return ConnectError(
            f"{endpoint.where}: TLS failed: {reason}",
            hint="meshd's admin API speaks only TLS 1.3 with client certificates; "
            "see journalctl -u meshd on the host",
        )


class AdminSession:
    """One meshd, asked again and again over one kept-alive connection (``meshctl top``
    polls every host each second: a handshake per poll would cost more CPU than the rest).

    Checked like ``AdminClient.request`` (the peer's host ID before anything is sent, one
    deadline per request), errors alike. A connection meshd closed in between (idle, or
    restarted) is replaced once within the same deadline. One caller at a time.
    """

    def __init__(self, client: AdminClient, endpoint: AdminEndpoint) -> None:
        self.client, self.endpoint = client, endpoint
        self.expected = str(make_id(client.trust_domain, "host", endpoint.host))
        self.tls: ssl.SSLSocket | None = None
        self.peer_not_after = dt.datetime.max.replace(tzinfo=dt.UTC)  # of the connection's peer

    def get(self, path: str) -> dict[str, Any] | None:
        """GET ``path``: meshd's JSON object, None for 404, ProvisionError if refused."""
        if not _PATH.fullmatch(path):
            raise ValueError(f"invalid path {path!r}")
        deadline = time.monotonic() + self.client.timeout
        payload = _encode(self.endpoint, "GET", path, None, keep_alive=True)
        try:
            status, content_type, body = self._exchange(payload, deadline)
        except OSError as e:
            self.close()
            raise self.client._connect_error(self.endpoint, e) from e
        except BaseException:
            self.close()
            raise
        reply = AdminReply(status, _decode(content_type, body, self.endpoint), self.peer_not_after)
        if status == 404:
            return None
        return _object(_checked(reply, self.endpoint, f"GET {path}"), self.endpoint, path)

    def _exchange(self, payload: bytes, deadline: float) -> tuple[int, str, bytes]:
        if self.tls is not None:
            try:
                _send(self.tls, payload, deadline)
                return _read_reply(self.tls, deadline, self.endpoint)
            except (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                self.close()  # closed by meshd since the last request: once more, afresh
        self.tls = self.client._connect(self.endpoint, deadline)
        self.peer_not_after = _check_peer(self.tls, self.expected, self.endpoint)
        _send(self.tls, payload, deadline)
        return _read_reply(self.tls, deadline, self.endpoint)

    def close(self) -> None:
        if self.tls is not None:
            self.tls.close()
            self.tls = None


def _client_context(cert: Path, key: Path, bundle: Path) -> ssl.SSLContext:
    """meshd's own mutual TLS 1.3 context, on the client side, speaking the admin API."""
    for path in (cert, key, bundle):
        if not path.is_file():
            raise CertificateError(f"{path}: no such file", hint="run meshctl init first")
    return mutual_context(ssl.Purpose.SERVER_AUTH, cert, key, bundle, [ALPN_ADMIN])


def _check_peer(tls: ssl.SSLSocket, expected: str, endpoint: AdminEndpoint) -> dt.datetime:
    """The peer certificate's expiry, once it has proved to be ``expected``."""
    der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ConnectError(f"{endpoint.where} presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError as e:
        raise ConnectError(f"{endpoint.where} presented an unreadable certificate: {e}") from e
    if expected not in uris:
        shown = ", ".join(u for u in uris if u.startswith("spiffe://")) or "no SPIFFE ID"
        raise ConnectError(
            f"{endpoint.where} presented {shown}, expected {expected}",
            hint=f"check the address of {endpoint.host} in hosts.toml: another meshd answers there",
        )
    return cert.not_valid_after_utc


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _send(tls: ssl.SSLSocket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        tls.settimeout(_remaining(deadline))
        view = view[tls.send(view) :]


def _recv(tls: ssl.SSLSocket, deadline: float) -> bytes:
    tls.settimeout(_remaining(deadline))
    return tls.recv(65536)


def _read_reply(
    tls: ssl.SSLSocket, deadline: float, endpoint: AdminEndpoint
) -> tuple[int, str, bytes]:
    """Status, content type and body of one response (Content-Length, or up to EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(tls, deadline)
        if not chunk and not data:
            # TLS 1.3: the client's handshake is done before meshd has checked our
            # certificate, and a refusal arrives as a bare close: say so like a reset.
            raise ConnectionResetError("closed without answering")
        if not chunk:
            raise _broken(endpoint, "closed the connection in the middle of its answer")
        data += chunk
        if len(data) > MAX_HEAD_BYTES + 4 and b"\r\n\r\n" not in data:
            raise _broken(endpoint, "sent a response header that is too large")
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = _parse_head(head, endpoint)
    length = headers.get("content-length")
    limit = int(length) if length is not None else MAX_BODY_BYTES
    while len(body) < limit:
        chunk = _recv(tls, deadline)
        if not chunk:
            if length is None:
                break
            raise _broken(endpoint, "closed the connection in the middle of its answer")
        body += chunk
    return status, headers.get("content-type", ""), body[:limit]


def _parse_head(head: bytes, endpoint: AdminEndpoint) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise _broken(endpoint, f"sent a malformed status line {status_line[:80]!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise _broken(endpoint, f"sent an unusable Content-Length {length[:20]!r}")
    return int(code), headers


def _broken(endpoint: AdminEndpoint, what: str) -> ConnectError:
    return ConnectError(
        f"{endpoint.where} {what}",
        hint="check that the port is meshd's admin API, and see journalctl -u meshd on the host",
    )


def _encode(
    endpoint: AdminEndpoint, method: str, path: str, doc: Any | None, keep_alive: bool = False
) -> bytes:
    body = b"" if doc is None else json.dumps(doc).encode()
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {endpoint.host}",
        "Accept: application/json",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if doc is not None:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _decode(content_type: str, body: bytes, endpoint: AdminEndpoint) -> Any:
    text = body.decode("utf-8", errors="replace")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return text
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise _broken(endpoint, f"sent a JSON body that does not parse: {e}") from e


def _document_path(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown document kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    return f"/{kind}"


def _checked(reply: AdminReply, endpoint: AdminEndpoint, doing: str) -> AdminReply:
    """``reply`` if it succeeded, else a ProvisionError with meshd's message and hint."""
    if 200 <= reply.status < 300:
        return reply
    body = reply.body
    message = body.get("error") if isinstance(body, dict) else None
    hint = body.get("hint") if isinstance(body, dict) else None
    detail = message or str(body).strip()[:200] or "no message"
    raise ProvisionError(
        f"{endpoint.host}: {doing} failed ({reply.status}): {detail}",
        hint=hint or "see journalctl -u meshd on the host",
    )


def _object(reply: AdminReply, endpoint: AdminEndpoint, what: str) -> dict[str, Any]:
    if not isinstance(reply.body, dict):
        raise _broken(endpoint, f"answered {what} with something that is not a JSON object")
    return reply.body
