"""What the admin API answers: a request, routed over the daemon's backend, to a response.

No sockets here: ``meshd.admin.server.AdminServer`` decides who is calling,
``meshd.admin.http`` reads the requests, ``answer`` serves one of them. The
backend it serves from and the limits it keeps are declared here too.

Routes: GET /healthz, /ready, /metrics, /stats, /traffic (``meshd.traffic``), /tap
(a stream: ``meshd.admin.tapstream``); GET and PUT /registry,
/config, /policy, /certs, /trust, /issuer (PUT goes through
``DocumentStore.put``: 200 ``{"status", "version"}``, 400 invalid, 409 older
or conflicting, 500 not applied); POST /renew (202: meshd renews its
certificate now); POST /issuer/csr (a fresh issuer key, ``meshd.issuer``);
404 for other paths, 405 (with ``Allow``) for other methods. The local
socket serves only /healthz, /ready and /stats. Errors are JSON
``{"error": ..., "hint": ...}``.

A host identity may ask one thing, on a connection of its own: ``issue``
answers its POST /issue (200 with the signed chain, 403 refused, 503 when
this host is no issuer). A monitor identity (``spiffe://<td>/monitor/NAME``,
a scraper such as Prometheus) may ``GET /metrics`` on a kept-alive session and
nothing else (``monitor_forbidden``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

import anyio

from meshd.admin.tapstream import tap_answer
from meshd.admin.wire import Request, Response, error_response, json_response
from meshd.errors import MeshError
from meshd.issuer.decide import Caller, Refusal
from meshd.issuer.service import Issuer
from meshd.stats import KINDS, Stats
from meshd.store import ApplyError, DocumentStore, VersionConflictError
from meshd.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from meshd.telemetry.tap import TapHub
from meshd.tls.context import TlsMaterial
from meshd.traffic import Traffic

log = logging.getLogger("meshd.admin")

LOCAL_PATHS = frozenset({"/healthz", "/ready", "/stats"})
TAP = "/tap"
READ_PATHS = frozenset({"/healthz", "/ready", "/metrics", "/stats", "/traffic", TAP})
DOCUMENT_PATHS = {f"/{kind}": kind for kind in KINDS}
ISSUER_CSR = "/issuer/csr"
ISSUE = "/issue"  # the one path a host identity may use
METRICS = "/metrics"  # the one path a monitor identity may use (GET)
POSTS = frozenset({ISSUER_CSR, ISSUE})
RENEW_PATH = "/renew"
TEXT = "text/plain; charset=utf-8"


class AdminBackend(Protocol):
    """What the admin API needs from the daemon.

    ``store``: the DocumentStore behind GET/PUT of documents (``put`` runs in a
    worker thread). ``trust_domain``: whose operators are authorized.
    ``issuer``: this host's issuer component (idle unless it is an issuer).
    ``is_ready()``: for /ready. ``stats()``: the /stats payload (``meshd.stats``).
    ``metrics_text()``: the Prometheus exposition for /metrics (e.g.
    ``metrics.collect(); return metrics.render()``). ``traffic()``: the /traffic
    snapshot of the same counters (``metrics.collect(); return
    metrics.traffic(host)``). ``tap``: the hub GET /tap clients join. ``current_tls()``: the TLS
    material to use for the next accepted connection. ``renew_now()``: start a
    renewal round of meshd's certificate (POST /renew). All but ``store.put``
    are called on the event loop and must not block.
    """

    @property
    def store(self) -> DocumentStore: ...

    @property
    def trust_domain(self) -> str: ...

    @property
    def issuer(self) -> Issuer | None: ...

    def is_ready(self) -> bool: ...

    def stats(self) -> Stats: ...

    def metrics_text(self) -> str: ...

    def traffic(self) -> Traffic: ...

    @property
    def tap(self) -> TapHub: ...

    def current_tls(self) -> TlsMaterial: ...

    def renew_now(self) -> None: ...


@dataclass(frozen=True)
class AdminLimits:
    """What the admin API spends at most, per connection and in all (``meshd.admin.server``)."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 4 * 1024 * 1024
    max_connections: int = 64  # operator sessions at once
    max_local_connections: int = 16  # on the unix socket
    max_silent: int = 256  # accepted sockets whose peer has sent nothing yet
    max_silent_per_source: int = 16
    max_handshakes: int = 32  # TLS handshakes in flight
    max_handshakes_per_source: int = 8
    max_lingering: int = 64  # answered connections whose late bytes are being dropped
    max_monitor_sessions: int = 8  # monitor identities' sessions at once (scrapers keep one)
    max_issue_sessions: int = 8  # host identities' POST /issue connections at once
    max_issue_sessions_per_host: int = 2  # ... of one host: a renewal needs one
    max_issue_body_bytes: int = 16 * 1024  # a CSR is about 500 bytes
    handshake_timeout: float = 5.0  # from accept to an authenticated peer
    read_timeout: float = 10.0  # one request's header block, and its body
    issue_read_timeout: float = 2.0  # a POST /issue (<= 16 KiB), sent at once by a renewing meshd
    idle_timeout: float = 60.0  # between requests on a kept-alive connection
    write_timeout: float = 10.0
    linger: float = 1.0  # dropping what a client still sends after our last answer


def forbidden(trust_domain: str) -> Response:
    """The answer to any identity but our operators, given before reading what it asks."""
    return error_response(
        403,
        f"only operator identities of {trust_domain} may use the admin API",
        "connect with an operator certificate (meshctl uses the workspace's)",
        close=True,
    )


def host_forbidden(trust_domain: str, path: str) -> Response:
    """The answer to a host identity asking for anything but POST /issue (its body unread)."""
    return error_response(
        403,
        f"only operator identities of {trust_domain} may use {path}; a host may only POST {ISSUE}",
        "connect with an operator certificate (meshctl uses the workspace's)",
        close=True,
    )


def monitor_forbidden(trust_domain: str, method: str, path: str) -> Response:
    """The answer to a monitor identity asking for anything but GET /metrics (body unread)."""
    return error_response(
        403,
        f"a monitor identity may only GET {METRICS}, not {method} {path}; only operator"
        f" identities of {trust_domain} may use the rest of the admin API",
        f"scrape GET {METRICS}; for anything else connect with an operator certificate",
        close=True,
    )


def busy(limit: int, where: str) -> Response:
    return error_response(
        503,
        f"{where} already serves {limit} connections, its limit",
        "retry in a moment, and close connections you keep idle",
        close=True,
        headers=(("Retry-After", "1"),),
    )


async def answer(backend: AdminBackend, request: Request, local: bool) -> Response:
    """The response to ``request`` from an operator, or on the local socket when ``local``."""
    if local and request.path not in LOCAL_PATHS:
        if request.path in (*READ_PATHS, *DOCUMENT_PATHS, *POSTS, RENEW_PATH):
            return error_response(
                403,
                f"{request.path} is not served on the local socket",
                "use the admin API over mutual TLS",
            )
        return error_response(404, f"no such path {request.path}")
    if request.path == RENEW_PATH:
        return _renew(backend, request)
    kind = DOCUMENT_PATHS.get(request.path)
    if kind is not None and kind not in backend.store.kinds:
        return error_response(404, f"this meshd does not take {kind} documents")
    allowed = _allowed(request.path, kind)
    if allowed is None:
        return error_response(404, f"no such path {request.path}")
    if request.method not in allowed:
        message = f"{request.method} is not allowed on {request.path}"
        return error_response(405, message, headers=(("Allow", ", ".join(allowed)),))
    if request.path in POSTS:
        return await _post(backend, request.path)
    if request.path == TAP:
        return tap_answer(backend.tap, request.query)
    if kind is None:
        return _read_only(backend, request.path)
    if request.method == "GET":
        return _get_document(backend, kind)
    return await _put_document(backend, kind, request.body)


def _allowed(path: str, kind: str | None) -> tuple[str, ...] | None:
    if kind is not None:
        return ("GET", "PUT")
    if path in POSTS:
        return ("POST",)
    return ("GET",) if path in READ_PATHS else None


async def _post(backend: AdminBackend, path: str) -> Response:
    issuer = backend.issuer
    if issuer is None:
        return error_response(404, f"this meshd has no issuer component for {path}")
    if path == ISSUE:  # an operator: leaves for operators come from meshctl, never an issuer
        return error_response(
            403,
            f"an issuer signs leaves for host identities only, not for operators ({path})",
            "get an operator certificate from meshctl (meshctl ca operator renew)",
        )
    return await _issuer_csr(backend, issuer)


async def _issuer_csr(backend: AdminBackend, issuer: Issuer) -> Response:
    """A fresh pending issuer key; held with the store, so no issuer push lands in between."""

    def make() -> str:
        with backend.store.transaction():
            return issuer.new_pending()

    try:
        csr = await anyio.to_thread.run_sync(make)
    except MeshError as e:
        return error_response(409, e.message, e.hint)
    except OSError as e:
        return error_response(500, f"cannot make an issuer key: {e}", "check meshd's state_dir")
    return json_response(200, {"csr_pem": csr})


async def issue(backend: AdminBackend, request: Request, caller: Caller, peer: str) -> Response:
    """A host identity's POST /issue: the signed chain, a refusal (403), or 503."""
    issuer = backend.issuer
    outcome = None if issuer is None else await issuer.issue(caller, peer, request.body)
    if outcome is None:
        return error_response(
            503,
            "this meshd holds no issuer CA",
            "renew from an issuer the registry lists",
            close=True,
        )
    if isinstance(outcome, Refusal):
        return issue_refused(outcome)
    body = {"cert_pem": outcome.chain_pem, "not_after": outcome.not_after.isoformat()}
    return json_response(200, body, close=True)


def issue_refused(refusal: Refusal) -> Response:
    """The issuer's 403: after the request was read, or before, for a revoked caller."""
    return error_response(403, f"issuer refused: {refusal.reason}", _REFUSED_HINT, close=True)


_REFUSED_HINT = "ask only for identities your certificate holds and the registry assigns you"


def _read_only(backend: AdminBackend, path: str) -> Response:
    if path == "/healthz":
        return Response(200, b"ok\n", TEXT)
    if path == "/ready":
        ready = backend.is_ready()
        return Response(200 if ready else 503, b"ready\n" if ready else b"not ready\n", TEXT)
    if path == "/metrics":
        return Response(200, backend.metrics_text().encode(), METRICS_CONTENT_TYPE)
    if path == "/traffic":  # compact: top reads it from every host every second
        body = json.dumps(backend.traffic().to_json(), separators=(",", ":")).encode()
        return Response(200, body + b"\n")
    return json_response(200, backend.stats().to_json())


def _renew(backend: AdminBackend, request: Request) -> Response:
    if request.method != "POST":
        message = f"{request.method} is not allowed on {request.path}"
        return error_response(405, message, headers=(("Allow", "POST"),))
    backend.renew_now()
    log.info("admin: renewal of meshd's certificate asked for")
    return json_response(202, {"renewing": True})


def _get_document(backend: AdminBackend, kind: str) -> Response:
    doc = backend.store.get(kind)
    if doc is None:
        return error_response(
            404, f"no {kind} document has been applied", f"push one with PUT /{kind}"
        )
    return json_response(200, doc)


async def _put_document(backend: AdminBackend, kind: str, body: bytes) -> Response:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        return error_response(400, f"{kind}: request body is not JSON: {e}")
    try:
        result = await anyio.to_thread.run_sync(backend.store.put, kind, doc)
    except VersionConflictError as e:
        return error_response(409, e.message, e.hint)
    except ApplyError as e:
        return error_response(500, e.message, e.hint)
    except MeshError as e:
        return error_response(400, e.message, e.hint or "fix the document and push it again")
    log.info("admin: %s version %d %s", kind, result.version, result.status)
    return json_response(200, {"status": result.status, "version": result.version})
