"""meshd's admin API: HTTPS with mutual TLS for operators, plus a local unix socket.

A deliberately small HTTP/1.1 server (Content-Length bodies, keep-alive, size
limits, a deadline on every read). Over TLS the peer's verified SPIFFE ID
decides: an ``operator`` identity of our trust domain may do everything, any
other identity gets 403 on every request. The unix socket (no TLS) serves only
``/healthz``, ``/ready`` and ``/stats`` for local health checks.

The daemon starts it in its task group once its backend exists::

    admin = AdminServer(backend, events=bus)
    address = await tg.start(admin.serve, config.listen.admin, config.listen.admin_socket)

``serve`` reports started (with the bound TCP address) only after both
sockets are bound. Every accepted TLS connection uses ``backend.current_tls()``
of that moment, so a certificate reload needs no listener restart.

Routes: GET /healthz, /ready, /metrics, /stats; GET and PUT /registry,
/config, /policy, /certs (PUT goes through ``DocumentStore.put``: 200
``{"status", "version"}``, 400 invalid, 409 older or conflicting, 500 not
applied). Errors are JSON ``{"error": ..., "hint": ...}``.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import (
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSAttribute, TLSStream

from meshd.errors import ConfigError, ConnectError, MeshError
from meshd.events import ConnectionRefused, EventBus, HandshakeFailed
from meshd.httpwire import (
    HttpError,
    Request,
    Response,
    content_length,
    error_response,
    json_response,
    parse_head,
)
from meshd.identity import SpiffeId
from meshd.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from meshd.store import KINDS, ApplyError, DocumentStore, VersionConflictError
from meshd.tls import TlsMaterial, peer_ids

log = logging.getLogger("meshd.admin")

LOCAL_PATHS = frozenset({"/healthz", "/ready", "/stats"})
READ_PATHS = frozenset({"/healthz", "/ready", "/metrics", "/stats"})
DOCUMENT_PATHS = {f"/{kind}": kind for kind in KINDS}
NETWORK_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    TimeoutError,
    OSError,
)


COUNTERS = ("connections", "requests", "handshake_failures", "forbidden", "over_capacity")
COUNTERS_MORE = ("bad_requests", "errors", "accept_errors")

Scope = Literal["operator", "forbidden", "local"]
Handler = Callable[[SocketStream], Awaitable[None]]


class AdminBackend(Protocol):
    """What the admin API needs from the daemon.

    ``store``: the DocumentStore behind GET/PUT of documents (``put`` runs in a
    worker thread). ``trust_domain``: whose operators are authorized.
    ``is_ready()``: for /ready. ``stats()``: a JSON-serializable dict for /stats.
    ``metrics_text()``: the Prometheus exposition for /metrics (e.g.
    ``metrics.collect(); return metrics.render()``). ``current_tls()``: the TLS
    material to use for the next accepted connection. All but ``store.put``
    are called on the event loop and must not block.
    """

    @property
    def store(self) -> DocumentStore: ...

    @property
    def trust_domain(self) -> str: ...

    def is_ready(self) -> bool: ...

    def stats(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...

    def current_tls(self) -> TlsMaterial: ...


@dataclass(frozen=True)
class AdminLimits:
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 4 * 1024 * 1024
    max_connections: int = 64
    handshake_timeout: float = 5.0
    read_timeout: float = 10.0  # one request's header block, and its body
    idle_timeout: float = 60.0  # between requests on a kept-alive connection
    write_timeout: float = 10.0
    linger: float = 1.0  # reading what a refused client still sends, so it sees our answer


class AdminServer:
    """The admin API's listeners and request handling; see the module docstring."""

    def __init__(
        self,
        backend: AdminBackend,
        *,
        events: EventBus | None = None,
        limits: AdminLimits | None = None,
    ) -> None:
        self.backend = backend
        self.events = events
        self.limits = limits or AdminLimits()
        self.active = 0
        self.counters = dict.fromkeys((*COUNTERS, *COUNTERS_MORE), 0)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "active": self.active}

    async def serve(
        self,
        address: tuple[str, int],
        socket_path: Path | None = None,
        *,
        task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind both sockets, report started with the TCP address, serve until cancelled."""
        async with AsyncExitStack() as stack:
            tcp = await stack.enter_async_context(await _bind_tcp(address))
            local = None
            if socket_path is not None:
                local = await stack.enter_async_context(await _bind_unix(socket_path))
                stack.callback(socket_path.unlink, missing_ok=True)
            tg = await stack.enter_async_context(anyio.create_task_group())
            for listener in tcp.listeners:
                assert isinstance(listener, SocketListener)
                tg.start_soon(self._accept_loop, listener, self._handle_tls, tg)
            if local is not None:
                tg.start_soon(self._accept_loop, local, self._handle_local, tg)
            bound = tcp.extra(SocketAttribute.local_address)  # noqa: S610 (not Django)
            task_status.started((str(bound[0]), int(bound[1])))

    async def _accept_loop(self, listener: SocketListener, handler: Handler, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # e.g. out of file descriptors: back off, keep serving
                self.counters["accept_errors"] += 1
                log.warning("admin: accept failed: %s", e)
                await anyio.sleep(0.1)
                continue
            tg.start_soon(self._guarded, stream, handler)

    async def _guarded(self, stream: SocketStream, handler: Handler) -> None:
        """Run one connection; whatever happens stays inside it."""
        peer = _peer(stream)
        try:
            async with stream:
                await self._admit(stream, handler)
        except NETWORK_ERRORS as e:
            log.debug("admin: connection from %s ended: %r", peer, e)
        except Exception:
            self.counters["errors"] += 1
            log.exception("admin: connection from %s failed", peer)

    async def _admit(self, stream: SocketStream, handler: Handler) -> None:
        if self.active >= self.limits.max_connections:
            self._refused(stream, "over_capacity")
            return
        self.active += 1
        self.counters["connections"] += 1
        try:
            await handler(stream)
        finally:
            self.active -= 1

    async def _handle_local(self, stream: SocketStream) -> None:
        await self._session(stream, "local")

    async def _handle_tls(self, stream: SocketStream) -> None:
        context = self.backend.current_tls().admin
        try:
            with anyio.fail_after(self.limits.handshake_timeout):
                tls = await TLSStream.wrap(
                    stream, server_side=True, ssl_context=context, standard_compatible=False
                )
        except Exception as e:
            self._handshake_failed(stream, e)
            return
        ids = peer_ids(tls.extra(TLSAttribute.ssl_object))  # noqa: S610
        if self._is_operator(ids):
            await self._session(tls, "operator")
            return
        self._refused(stream, "not_operator")
        log.info("admin: refused %s (%s)", _peer(stream), ", ".join(map(str, ids)) or "no ID")
        await self._session(tls, "forbidden")

    def _is_operator(self, ids: frozenset[SpiffeId]) -> bool:
        domain = self.backend.trust_domain
        return any(i.kind == "operator" and i.trust_domain == domain for i in ids)

    async def _session(self, stream: TLSStream | SocketStream, scope: Scope) -> None:
        """Serve requests on one connection until either side closes it."""
        reader = BufferedByteReceiveStream(stream)
        while True:
            try:
                request = await self._read(reader)
            except HttpError as e:
                self.counters["bad_requests"] += 1
                await self._send(stream, e.response, keep_alive=False)
                await self._linger(reader)
                return
            if request is None:
                return
            response = await self._dispatch(request, scope)
            keep = request.keep_alive and not response.close
            await self._send(stream, response, keep)
            if not keep:
                await self._linger(reader)
                return

    async def _read(self, reader: BufferedByteReceiveStream) -> Request | None:
        """The next request, or None when the peer closed or idled out between requests."""
        if not reader.buffer:
            with anyio.move_on_after(self.limits.idle_timeout):
                try:
                    reader.feed_data(await reader.receive())
                except anyio.EndOfStream:
                    return None
            if not reader.buffer:
                return None
        try:
            with anyio.fail_after(self.limits.read_timeout):
                head = await reader.receive_until(b"\r\n\r\n", self.limits.max_header_bytes)
                method, path, version, headers = parse_head(head)
                length = content_length(headers, self.limits.max_body_bytes)
                body = await reader.receive_exactly(length) if length else b""
        except anyio.DelimiterNotFound:
            raise HttpError(431, "request header too large") from None
        except TimeoutError:
            raise HttpError(408, "request not received in time") from None
        except anyio.IncompleteRead:
            return None
        return Request(method, path, version, headers, body)

    async def _send(
        self, stream: TLSStream | SocketStream, response: Response, keep_alive: bool
    ) -> None:
        with anyio.fail_after(self.limits.write_timeout):
            await stream.send(response.encode(keep_alive))

    async def _linger(self, reader: BufferedByteReceiveStream) -> None:
        """Read (and drop) what the client still sends, so closing does not reset our answer."""
        with anyio.move_on_after(self.limits.linger):
            try:
                for _ in range(64):
                    await reader.receive()
            except NETWORK_ERRORS:  # ssl.SSLError is an OSError
                return

    async def _dispatch(self, request: Request, scope: Scope) -> Response:
        self.counters["requests"] += 1
        if scope == "forbidden":
            self.counters["forbidden"] += 1
            return error_response(
                403,
                f"only operator identities of {self.backend.trust_domain} may use the admin API",
                "connect with an operator certificate (meshctl uses the workspace's)",
                close=True,
            )
        if scope == "local" and request.path not in LOCAL_PATHS:
            known = request.path in READ_PATHS or request.path in DOCUMENT_PATHS
            if known:
                return error_response(
                    403,
                    f"{request.path} is not served on the local socket",
                    "use the admin API over mutual TLS",
                )
            return error_response(404, f"no such path {request.path}")
        try:
            return await self._route(request)
        except Exception:
            self.counters["errors"] += 1
            log.exception("admin: %s %s failed", request.method, request.path)
            return error_response(500, "internal error", "see meshd's log", close=True)

    async def _route(self, request: Request) -> Response:
        kind = DOCUMENT_PATHS.get(request.path)
        if kind is not None and kind not in self.backend.store.kinds:
            return error_response(404, f"this meshd does not take {kind} documents")
        allowed = ("GET", "PUT") if kind else ("GET",) if request.path in READ_PATHS else None
        if allowed is None:
            return error_response(404, f"no such path {request.path}")
        if request.method not in allowed:
            message = f"{request.method} is not allowed on {request.path}"
            return error_response(405, message, headers=(("Allow", ", ".join(allowed)),))
        if kind is None:
            return self._read_only(request.path)
        if request.method == "GET":
            return self._get_document(kind)
        return await self._put_document(kind, request.body)

    def _read_only(self, path: str) -> Response:
        backend = self.backend
        if path == "/healthz":
            return Response(200, b"ok\n", "text/plain; charset=utf-8")
        if path == "/ready":
            ready = backend.is_ready()
            return Response(
                200 if ready else 503,
                b"ready\n" if ready else b"not ready\n",
                "text/plain; charset=utf-8",
            )
        if path == "/metrics":
            return Response(200, backend.metrics_text().encode(), METRICS_CONTENT_TYPE)
        return json_response(200, backend.stats())

    def _get_document(self, kind: str) -> Response:
        doc = self.backend.store.get(kind)
        if doc is None:
            return error_response(
                404, f"no {kind} document has been applied", f"push one with PUT /{kind}"
            )
        return json_response(200, doc)

    async def _put_document(self, kind: str, body: bytes) -> Response:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:
            return error_response(400, f"{kind}: request body is not JSON: {e}")
        try:
            result = await anyio.to_thread.run_sync(self.backend.store.put, kind, doc)
        except VersionConflictError as e:
            return error_response(409, e.message, e.hint)
        except ApplyError as e:
            return error_response(500, e.message, e.hint)
        except MeshError as e:
            return error_response(400, e.message, e.hint or "fix the document and push it again")
        log.info("admin: %s version %d %s", kind, result.version, result.status)
        return json_response(200, {"status": result.status, "version": result.version})

    def _handshake_failed(self, stream: SocketStream, error: Exception) -> None:
        reason = _handshake_reason(error)
        self.counters["handshake_failures"] += 1
        log.info("admin: TLS handshake with %s failed: %s", _peer(stream), error or reason)
        if self.events is not None:
            self.events.publish(HandshakeFailed("admin", _peer(stream), reason))

    def _refused(self, stream: SocketStream, reason: str) -> None:
        if reason == "over_capacity":
            self.counters["over_capacity"] += 1
        if self.events is not None:
            self.events.publish(ConnectionRefused("admin", _peer(stream), reason))


def _handshake_reason(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ssl.SSLCertVerificationError):
        return "bad_certificate"
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        if "CERTIFICATE" in reason and "PEER_DID_NOT_RETURN" in reason:
            return "no_certificate"
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNSUPPORTED_PROTOCOL"):
            return "not_tls"
        return "bad_certificate" if "CERTIFICATE" in reason else "tls_error"
    return "eof" if isinstance(error, anyio.EndOfStream | anyio.BrokenResourceError) else "error"


def _peer(stream: SocketStream) -> str:
    try:
        address = stream.extra(SocketAttribute.remote_address, "")  # noqa: S610
    except OSError:  # getpeername() after the peer already reset
        return "unknown"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return "local"


async def _bind_tcp(address: tuple[str, int]) -> MultiListener[SocketStream]:
    host, port = address
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as e:
        raise ConnectError(
            f"admin API cannot listen on {host}:{port}: {e}",
            hint="free the port or change [listen] admin",
        ) from e


async def _bind_unix(path: Path) -> SocketListener:
    """Bind ``path`` (0660), replacing a stale socket but never another kind of file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_socket():
            raise ConfigError(
                f"{path} exists and is not a socket",
                hint="remove it or change [listen] admin_socket",
            )
        return await anyio.create_unix_listener(path, mode=0o660)
    except OSError as e:
        raise ConnectError(
            f"admin socket {path}: {e}", hint="check that meshd may write its directory"
        ) from e
