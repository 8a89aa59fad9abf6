"""meshd's admin API server: who is calling, how much room each caller gets, its sessions.

HTTPS with mutual TLS for operators on a TCP port, plus a local unix socket
for health checks. What each path answers lives in ``meshd.admin.api`` (with
``AdminLimits``), the HTTP/1.1 of a session in ``meshd.admin.http``; this
module decides who may talk at all, and how much room each kind of caller gets.

Nothing is spent on a peer before it is known:

- An accepted TCP socket costs a descriptor and a few objects until its peer
  sends something: it waits in the *silent* gate (``max_silent``, and
  ``max_silent_per_source`` from one address or IPv6 /64). Once readable it
  moves to the *handshake* gate (``max_handshakes``, ``..._per_source``) for
  its TLS handshake. A full gate evicts the oldest entry in the way
  (``meshd.tls.gate``), and one deadline, ``handshake_timeout``, covers both.
  Silent sockets churn only their own gate, so they never cut a handshake short.
- After the handshake the verified SPIFFE ID decides; operator IDs count
  only from a leaf that no issuer CA signed (``vouched_ids``: an issuer key
  signs host and service IDs, never an operator). An operator of our
  trust domain gets a session if fewer than ``max_connections`` operator
  sessions are open, else a 503 with a hint. A host identity of our trust
  domain may ask for one thing, a renewed leaf (``POST /issue``, answered by
  ``meshd.issuer``): one request per connection, its head read under the
  usual limits but within ``issue_read_timeout``, its body only if it is
  that request and at most ``max_issue_body_bytes``, with room for
  ``max_issue_sessions`` of them at once and ``max_issue_sessions_per_host``
  of one host; anything else it asks is a 403 before its body is read. A
  revoked host gets its 403 before it takes a slot (``Issuer.admit``). A monitor
  identity of our trust domain (a scraper) gets a kept-alive session, one of
  ``max_monitor_sessions``, in which it may ``GET /metrics`` and nothing else:
  any other request gets a 403 on its head, unread body, and the session ends.
  Monitor IDs count only from meshctl's CA, as operator IDs do. Any other
  identity gets its 403 at once, before its request is read; what it still
  sends is dropped unread for ``linger`` seconds, so that closing does not
  reset the answer away.
- A session serves no request after its operator's certificate has expired,
  and TLS sessions are never resumed (``meshd.tls.context``): each connection proves
  a current certificate.

The unix socket has room of its own (``max_local_connections``).

The daemon starts it in its task group once its backend exists::

    admin = AdminServer(backend, events=bus)
    address = await tg.start(admin.serve, config.listen.admin, config.listen.admin_socket)

``serve`` reports started (with the bound TCP address) only after both
sockets are bound. Every TLS handshake uses ``backend.current_tls()`` of that
moment, so a certificate reload needs no listener restart.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSAttribute, TLSStream

from meshd.admin import api as adminapi
from meshd.admin.api import AdminBackend, AdminLimits
from meshd.admin.http import Answer, Conn, Exchange
from meshd.admin.rawstream import RawSocketStream
from meshd.admin.wire import Request, Response, error_response
from meshd.errors import ConfigError, ConnectError
from meshd.issuer.decide import Caller, Refusal, caller_host
from meshd.netfacts import fmt
from meshd.telemetry.events import ConnectionRefused, EventBus, HandshakeFailed
from meshd.telemetry.logs import peer_lines
from meshd.tls.context import peer_ids, peer_problem, started, vouched_ids
from meshd.tls.failures import HandshakeFailure, classify
from meshd.tls.gate import HANDSHAKE_GRACE, HandshakeGate
from meshd.tls.handshake import client_hello

__all__ = ["AdminBackend", "AdminLimits", "AdminServer"]

log = logging.getLogger("meshd.admin")
REFUSALS = "refused admin peers"  # the log throttle's kind for them

NETWORK_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    TimeoutError,
    OSError,  # ssl.SSLError is one
)
COUNTERS = (
    "connections",  # operator sessions opened
    "monitor_sessions",  # monitor identities' sessions opened
    "issue_sessions",  # host identities' POST /issue connections admitted
    "requests",
    "handshake_failures",
    "forbidden",  # authenticated identities that are not our operators
    "over_capacity",
    "evicted",  # unauthenticated sockets pushed out of a full gate
    "expired",  # sessions closed because the operator's certificate expired
    "errors",
    "accept_errors",
)

_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # accept() may recover
Handler = Callable[[RawSocketStream, str, str], Awaitable[None]]  # stream, source, peer


@dataclass(frozen=True)
class Issuing:
    """A host admitted to an issue session: who it is, and the host it counts against."""

    caller: Caller
    host: str


Role = Literal["operator", "monitor"] | Issuing  # who gets more than a refusal


class AdminServer:
    """The admin API's listeners, admission and sessions; see the module docstring."""

    def __init__(
        self,
        backend: AdminBackend,
        *,
        events: EventBus | None = None,
        limits: AdminLimits | None = None,
    ) -> None:
        self.backend = backend
        self.events = events
        self.limits = lim = limits or AdminLimits()
        self.silent = HandshakeGate(lim.max_silent, lim.max_silent_per_source)
        self.handshakes = HandshakeGate(
            lim.max_handshakes, lim.max_handshakes_per_source, grace=HANDSHAKE_GRACE
        )
        self.http = Exchange(lim)
        self.sessions = 0  # operator sessions open
        self.monitors = 0  # monitor sessions open
        self.issuing = 0  # host identities' POST /issue connections open
        self.issuing_by: dict[str, int] = {}  # ... of each host
        self.local = 0  # unix socket connections open
        self.counters = dict.fromkeys(COUNTERS, 0)

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
            handlers: list[tuple[socket.socket, Handler]] = [
                (listener.extra(SocketAttribute.raw_socket), self._tcp)  # noqa: S610
                for listener in tcp.listeners
            ]
            if socket_path is not None:
                local = await stack.enter_async_context(await _bind_unix(socket_path))
                stack.callback(socket_path.unlink, missing_ok=True)
                handlers.append((local.extra(SocketAttribute.raw_socket), self._local))  # noqa: S610
            tg = await stack.enter_async_context(anyio.create_task_group())
            for listener, handler in handlers:
                tg.start_soon(self._accept_loop, listener, handler, tg)
            bound = tcp.extra(SocketAttribute.local_address)  # noqa: S610 (not Django)
            task_status.started((str(bound[0]), int(bound[1])))

    async def _accept_loop(self, listener: socket.socket, handler: Handler, tg: TaskGroup) -> None:
        while True:
            await anyio.wait_readable(listener)
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                continue
            except OSError as e:
                self.counters["accept_errors"] += 1
                if e.errno in _EXHAUSTED:  # back off, keep serving; others need no pause
                    log.warning("admin: accept failed: %s", e)
                    await anyio.sleep(0.1)
                continue
            tg.start_soon(self._guarded, RawSocketStream(sock), address, handler)

    async def _guarded(self, stream: RawSocketStream, address: Any, handler: Handler) -> None:
        """Run one connection; whatever happens stays inside it."""
        tcp = isinstance(address, tuple)
        source, peer = (str(address[0]), fmt(address)) if tcp else ("local", "local")
        try:
            async with stream:
                await handler(stream, source, peer)
        except NETWORK_ERRORS as e:
            log.debug("admin: connection from %s ended: %r", peer, e)
        except Exception:
            self.counters["errors"] += 1
            log.exception("admin: connection from %s failed", peer)

    # --- who is calling -----------------------------------------------------------------
    async def _tcp(self, stream: RawSocketStream, source: str, peer: str) -> None:
        stream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = await self._authenticate(stream, source, peer)
        if tls is None:
            return
        ssl_object = tls.extra(TLSAttribute.ssl_object)  # noqa: S610
        verdict = self._admit(peer, ssl_object)
        if verdict == "operator":
            await self._operator(Conn(tls, stream, peer), _expiry(tls))
            return
        if verdict == "monitor":
            await self._monitor(Conn(tls, stream, peer), _expiry(tls))
            return
        if isinstance(verdict, Issuing):
            await self._host(Conn(tls, stream, peer), verdict, _expiry(tls))
            return
        await self.http.send(tls, verdict, keep_alive=False)  # its request is never read
        del tls  # its TLS state (OpenSSL's buffers) goes before the linger
        await self.http.linger(stream)

    async def _authenticate(
        self, stream: RawSocketStream, source: str, peer: str
    ) -> TLSStream | None:
        """The peer's TLS stream once its handshake is done; None if it failed or was cut short."""
        deadline = anyio.current_time() + self.limits.handshake_timeout
        with _admitted(self.silent, source, deadline) as waiting:
            said = await client_hello(stream.sock)  # nothing is spent on TLS before this
        if waiting.cut_short:
            self._cut_short(peer, waiting)
            return None
        if not said:
            self._handshake_failed(peer, HandshakeFailure.CLOSED, None)  # no TLS for silence
            return None
        context = self.backend.current_tls().admin
        try:
            with _admitted(self.handshakes, source, deadline) as handshake:
                return await TLSStream.wrap(
                    stream, server_side=True, ssl_context=context, standard_compatible=False
                )
        except NETWORK_ERRORS as e:
            self._handshake_failed(peer, classify(e), e)
            return None
        self._cut_short(peer, handshake)
        return None

    def _cut_short(self, peer: str, admission: _Admission) -> None:
        if admission.evicted:
            self._refused(peer, "evicted", "evicted")  # counted, not logged: floods do this
        else:
            self._handshake_failed(peer, HandshakeFailure.TIMEOUT, None)

    def _admit(self, peer: str, ssl_object: ssl.SSLObject) -> Response | Role:
        """Who an authenticated peer is (operator, monitor or host), or the answer that turns
        it away."""
        domain = self.backend.trust_domain
        ids = vouched_ids(ssl_object)  # an issuer CA vouches for no operator
        problem = peer_problem(ssl_object)  # a leaf that is a CA, or may not sign
        if problem is not None:
            self._refused(peer, "bad_leaf", "forbidden")
            peer_lines.log(log, logging.INFO, REFUSALS, "admin: refused %s: %s", peer, problem)
            return adminapi.forbidden(domain)
        if not any(i.kind == "operator" and i.trust_domain == domain for i in ids):
            if any(i.kind == "monitor" and i.trust_domain == domain for i in ids):
                return self._monitor_room(peer)
            if any(i.kind == "host" and i.trust_domain == domain for i in ids):
                return self._host_room(peer, _caller(ssl_object))
            self._refused(peer, "not_operator", "forbidden")
            shown = sorted(str(i) for i in peer_ids(ssl_object)) or "no SPIFFE ID"
            vouched = "" if ids == peer_ids(ssl_object) else " (an issuer CA signed it)"
            peer_lines.log(
                log,
                logging.INFO,
                REFUSALS,
                "admin: refused %s (%s): not an operator%s",
                peer,
                shown,
                vouched,
            )
            return adminapi.forbidden(domain)
        if self.sessions >= self.limits.max_connections:
            self._refused(peer, "over_capacity", "over_capacity")
            return adminapi.busy(self.limits.max_connections, "the admin API")
        return "operator"

    def _monitor_room(self, peer: str) -> Response | Role:
        if self.monitors >= self.limits.max_monitor_sessions:
            self._refused(peer, "over_capacity", "over_capacity")
            return adminapi.busy(self.limits.max_monitor_sessions, "monitor sessions")
        return "monitor"

    def _host_room(self, peer: str, caller: Caller) -> Response | Issuing:
        """A host's issue session, unless it is refused or out of room: a revoked host, or
        one holding ``max_issue_sessions_per_host`` already, never takes another's room."""
        issuer, domain = self.backend.issuer, self.backend.trust_domain
        host = issuer.admit(caller, peer) if issuer is not None else caller_host(caller, domain)
        if isinstance(host, Refusal):  # revoked, or not one host: before it takes a slot
            self._refused(peer, "issuer_refused", "forbidden")
            return adminapi.issue_refused(host)
        per_host = self.limits.max_issue_sessions_per_host
        if self.issuing_by.get(host, 0) >= per_host:
            self._refused(peer, "over_capacity", "over_capacity")
            return adminapi.busy(per_host, f"POST {adminapi.ISSUE} for host {host}")
        if self.issuing >= self.limits.max_issue_sessions:
            self._refused(peer, "over_capacity", "over_capacity")
            return adminapi.busy(self.limits.max_issue_sessions, f"POST {adminapi.ISSUE}")
        return Issuing(caller, host)

    # --- sessions ---------------------------------------------------------------------------
    async def _operator(self, conn: Conn, expires: float) -> None:
        self.sessions += 1
        self.counters["connections"] += 1
        try:
            expired = await self.http.session(conn, self._answerer(local=False), expires)
        finally:
            self.sessions -= 1
        if expired:
            self._refused(conn.peer, "expired", "expired")
            log.info("admin: closed the session of %s: its certificate expired", conn.peer)

    def _only(
        self,
        conn: Conn,
        method: str,
        path: str,
        who: str,
        forbidden: Callable[[Request], Response],
    ) -> Callable[[Request], Response | None]:
        """A session's admission of each request head: ``method path`` and nothing else;
        anything else is counted, logged and answered with ``forbidden`` (before its body)."""

        def admit(request: Request) -> Response | None:
            if (request.method, request.path) == (method, path):
                return None
            self._refused(conn.peer, "not_operator", "forbidden")
            peer_lines.log(
                log,
                logging.INFO,
                REFUSALS,
                f"admin: refused %s: {who} may only {method} {path}",
                conn.peer,
            )
            return forbidden(request)

        return admit

    async def _monitor(self, conn: Conn, expires: float) -> None:
        """A monitor identity's session: GET /metrics, again and again; anything else ends it
        with a 403 before its body is read."""

        def forbidden(request: Request) -> Response:
            return adminapi.monitor_forbidden(
                self.backend.trust_domain, request.method, request.path
            )

        admit = self._only(conn, "GET", adminapi.METRICS, "a monitor", forbidden)
        self.monitors += 1
        self.counters["monitor_sessions"] += 1
        try:
            answer = self._answerer(local=False)
            if await self.http.session(conn, answer, expires, admit):
                self._refused(conn.peer, "expired", "expired")
        finally:
            self.monitors -= 1

    async def _host(self, conn: Conn, issuing: Issuing, expires: float) -> None:
        """A host identity's one request: POST /issue, or a 403 before its body is read."""

        def forbidden(request: Request) -> Response:
            return adminapi.host_forbidden(self.backend.trust_domain, request.path)

        admit = self._only(conn, "POST", adminapi.ISSUE, "a host", forbidden)

        async def answer(request: Request) -> Response:
            self.counters["requests"] += 1
            return await adminapi.issue(self.backend, request, issuing.caller, conn.peer)

        host, lim = issuing.host, self.limits
        self.issuing += 1
        self.issuing_by[host] = self.issuing_by.get(host, 0) + 1
        self.counters["issue_sessions"] += 1
        try:
            timeout = lim.issue_read_timeout  # a slot is not for holding: its request comes at once
            await self.http.one(
                conn, admit, self._guard(answer), lim.max_issue_body_bytes, expires, timeout
            )
        finally:
            self.issuing -= 1
            self.issuing_by[host] -= 1
            if not self.issuing_by[host]:
                del self.issuing_by[host]

    async def _local(self, stream: RawSocketStream, _source: str, peer: str) -> None:
        conn = Conn(stream, stream, peer)
        if self.local >= self.limits.max_local_connections:
            self._refused(peer, "over_capacity", "over_capacity")
            limit = self.limits.max_local_connections
            await self.http.finish(conn, adminapi.busy(limit, "the local admin socket"))
            return
        self.local += 1
        try:
            await self.http.session(conn, self._answerer(local=True), math.inf)
        finally:
            self.local -= 1

    def _answerer(self, local: bool) -> Callable[[Request], Awaitable[Response]]:
        async def answer(request: Request) -> Response:
            self.counters["requests"] += 1
            return await adminapi.answer(self.backend, request, local)

        return self._guard(answer)

    def _guard(self, answer: Answer) -> Answer:
        """``answer``, with a bug in it turned into a 500 (and a traceback in the log)."""

        async def guarded(request: Request) -> Response:
            try:
                return await answer(request)
            except Exception:
                self.counters["errors"] += 1
                log.exception("admin: %s %s failed", request.method, request.path)
                return error_response(500, "internal error", "see meshd's log", close=True)

        return guarded

    # --- what happened ----------------------------------------------------------------------
    def _handshake_failed(
        self, peer: str, reason: HandshakeFailure, error: BaseException | None
    ) -> None:
        self.counters["handshake_failures"] += 1
        why = f"{error!r}" if error is not None else reason
        peer_lines.log(
            log,
            logging.INFO,
            "failed handshakes on the admin port",
            "admin: TLS handshake with %s failed (%s): %s",
            peer,
            reason,
            why,
        )
        self._publish(HandshakeFailed("admin", peer, reason))

    def _refused(self, peer: str, reason: str, counter: str) -> None:
        self.counters[counter] += 1
        self._publish(ConnectionRefused("admin", peer, reason))

    def _publish(self, event: HandshakeFailed | ConnectionRefused) -> None:
        if self.events is not None:
            self.events.publish(event)


@dataclass
class _Admission:
    """A connection's place in a gate; its scope is cancelled when evicted or past the deadline."""

    scope: anyio.CancelScope
    evicted: bool = False

    def evict(self) -> None:
        self.evicted = True
        self.scope.cancel()

    @property
    def cut_short(self) -> bool:
        return self.scope.cancelled_caught


@contextmanager
def _admitted(gate: HandshakeGate, source: str, deadline: float) -> Iterator[_Admission]:
    """Hold a place in ``gate`` for the body of the ``with``; it ends early when cut short."""
    admission = _Admission(anyio.CancelScope(deadline=deadline))
    ticket = gate.admit(source, admission.evict)
    if ticket is None:  # turned away by a full gate: cut short at once
        admission.evict()
    try:
        with admission.scope:
            yield admission
    finally:
        gate.release(ticket)


def _caller(ssl_object: ssl.SSLObject) -> Caller:
    """A host identity as the issuer sees it: the IDs its certificate vouches for, its serial."""
    cert = ssl_object.getpeercert()
    serial = str(cert.get("serialNumber", "")) if cert else ""
    return Caller(vouched_ids(ssl_object), serial, started(ssl_object))


def _expiry(tls: TLSStream) -> float:
    """When the peer's (verified) certificate expires, in epoch seconds."""
    cert = tls.extra(TLSAttribute.peer_certificate)  # noqa: S610
    not_after = cert.get("notAfter") if cert else None
    if not isinstance(not_after, str):
        return 0.0  # cannot happen with CERT_REQUIRED; if it did, no request is served
    return ssl.cert_time_to_seconds(not_after)


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
