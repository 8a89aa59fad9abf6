"""Inbound: sidecar links accepted on the mesh port, and plaintext from outside the mesh.

Each link and each stream a peer opens over it is admitted by
``meshd.policy.decide`` (the peer's certificate must hold the source identity
it claims and be revoked by nothing in the registry; the service must be one
of ours on its port; the peer's share of links and streams) and delivered to
the app on loopback. A swap that revokes a peer tears its links down; a swap
of our own certificate or trust bundle sends GOAWAY on the links made with
the old one (the dialler moves its streams to a fresh link) and aborts them
after a grace if the peer keeps them; each link is closed at the earlier
expiry of both certificates (``meshd.proxy.link``). Connections that
reach a meshed port from outside the mesh arrive redirected on the inbound
listener: refused in ``strict`` mode, relayed to the app as an unauthenticated
peer in ``permissive``.

Under a policy (``meshd.policy.guard``) the mTLS mode is the policy's, per
service (a strict one resets plaintext at accept), and a stream or plaintext
connection the policy does not allow wholesale waits for its first bytes
(``meshd.proxy.enforce.FirstBytes``) before the app is connected: HTTP gets
an exchange that judges every request, opaque TCP is judged once and reset
(RST) when denied or over a connection rate limit. A peer allowed wholesale
is connected at once, and its first bytes still looked at: its HTTP requests
are normalised (§2.3), its opaque TCP relayed. A push that changes the policy
re-judges every connection relayed as L4 (opened before it, or opaque TCP)
on its L4 fields and resets (RST) those it no longer allows; HTTP under an
exchange meets the new policy at its next request. With no policy in force
none of this runs: a delivery is what it always was, its HTTP observed for
the metrics as the outbound side observes it (``[mesh] http``: the
observer is installed when the client's first bytes start a request,
``install.FirstRequest``); under a policy the exchange that judges the
requests reports them too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from meshd.netfacts import fmt, original_dst
from meshd.policy import decide
from meshd.policy.decisions import (
    MAX_CONNECTIONS,
    MAX_LINKS_PER_PEER,
    REGISTRY_REVOKED,
    Deliver,
    Refuse,
)
from meshd.policy.guard import Guard
from meshd.proxy.connect import Connector
from meshd.proxy.enforce import (
    SNIFF_WAIT,
    FirstBytes,
    Kind,
    RequestJudge,
    allowed_wholesale,
    answer_for,
    judge_tcp,
    rejudge,
    request_id,
    reset_hard,
)
from meshd.proxy.frames import RST_CONNECT_FAILED, RST_REFUSED, OpenRequest
from meshd.proxy.http.actions import DROP, Verdict
from meshd.proxy.http.install import Carrier, FirstRequest, exchange_for, exchange_with
from meshd.proxy.http.observe import HttpObserver
from meshd.proxy.http.plan import OBSERVE, HttpPlan, RequestHook
from meshd.proxy.link import Link
from meshd.proxy.relay import PipeEnd
from meshd.proxy.stream import AppProtocol, Stream
from meshd.runtime import Runtime
from meshd.telemetry.events import (
    INBOUND,
    AuthzDecided,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    HandshakeFailed,
    LinkRetired,
)
from meshd.telemetry.logs import peer_lines
from meshd.tls.failures import HandshakeFailure

log = logging.getLogger("meshd.inbound")

UNAUTHENTICATED = "unauthenticated"
LOCAL_APP_HOST = "127.0.0.1"


class MeshPort:
    """Accepts sidecar links and the streams opened over them."""

    def __init__(self, rt: Runtime, connector: Connector) -> None:
        self.rt = rt
        self.connector = connector
        self.links: set[Link] = set()
        self.per_peer: Counter[str] = Counter()  # links up per peer host identity
        self.peer_streams: Counter[str] = Counter()  # streams relayed per peer host identity
        # what a policy push re-judges: streams and plaintext relayed with no request judged
        self.relayed: dict[Stream, tuple[Link, OpenRequest]] = {}
        self.plain: set[PlainInbound] = set()
        self.policy_version = rt.bundle.policy_version
        rt.swapped.append(self.after_swap)

    def make_link(self) -> Link:
        limits, timeouts = self.rt.config.limits, self.rt.config.timeouts
        return Link(
            dialer=False,
            max_frame=limits.max_frame,
            max_streams=limits.max_streams_per_link,
            ping_interval=timeouts.ping_interval,
            link_window=limits.link_window,
            own_expiry=self.rt.tls.not_after.timestamp(),  # what the handshake presents
            generation=self.rt.tls.generation,  # and verifies the peer with
            trust=self.rt.tls.trust,
            on_open=self.on_open,
            on_ready=self.on_ready,
            on_lost=self.on_lost,
        )

    def on_ready(self, link: Link) -> None:
        decision = decide.link(
            self.rt.bundle, link.peer_ids, self.per_peer, link.peer_serial, link.peer_not_before
        )
        if isinstance(decision, Refuse):  # a failed handshake, in the words every port uses
            if decision.rule == MAX_LINKS_PER_PEER:
                self._refuse_link(link, decision, HandshakeFailure.TOO_MANY_LINKS)
            elif decision.rule == REGISTRY_REVOKED:  # the handshake was fine: its peer is not
                self._refuse_revoked(link, decision)
            else:
                self._refuse_link(link, decision, HandshakeFailure.WRONG_IDENTITY)
            return
        link.peer, link.peer_key = decision.peer, decision.key
        self.per_peer[decision.key] += 1
        self.links.add(link)
        peer_lines.log(
            log, logging.INFO, "links up", "link from %s (%s) up", link.peer, link.peer_address
        )
        if link.generation != self.rt.tls.generation:  # swapped during its handshake
            link.outlived("renewed", self.rt.tls.trust)

    def _refuse_link(self, link: Link, refusal: Refuse, failure: HandshakeFailure) -> None:
        self.rt.bus.publish(HandshakeFailed("mesh", link.peer_address, failure))
        _refused(link, refusal)

    def _refuse_revoked(self, link: Link, refusal: Refuse) -> None:
        self.rt.bus.publish(
            ConnectionRefused("mesh", link.peer_address, refusal.code, refusal.rule)
        )
        _refused(link, refusal)

    def on_lost(self, link: Link, reason: str) -> None:
        if link in self.links:
            self.links.discard(link)
            peer = link.peer_key
            self.per_peer[peer] -= 1
            if self.per_peer[peer] <= 0:
                del self.per_peer[peer]

    def on_open(self, link: Link, sid: int, request: OpenRequest) -> Stream | None:
        peer, rt = link.peer_key, self.rt
        decision = decide.stream(
            rt.bundle, request, peer, link.peer_names, self.peer_streams[peer], rt.active
        )
        if isinstance(decision, Refuse):
            self._refuse(link, request, decision)
            return None
        return self._accept(link, request, decision)

    def _refuse(self, link: Link, request: OpenRequest, refusal: Refuse) -> None:
        # at the connection limit every peer's streams are refused: counted, not logged
        if refusal.rule != MAX_CONNECTIONS:
            peer_lines.log(
                log,
                logging.WARNING,
                "refused streams",
                "refused stream from %s to %s:%d: %s",
                link.peer,
                request.service,
                request.port,
                refusal.reason,
            )
        self.rt.bus.publish(
            ConnectionRefused("mesh", link.peer_address, refusal.code, refusal.rule)
        )

    def _accept(self, link: Link, request: OpenRequest, decision: Deliver) -> Stream:
        peer = link.peer_key
        self.rt.active += 1  # released when the stream closes
        self.peer_streams[peer] += 1
        pending: list[Callable[[], None]] = []  # the app connect, cancelled if the stream ends
        stream = Stream(
            self.rt.config.limits.stream_window,
            on_close=lambda s, error: self._closed(s, request, error, peer, pending),
        )
        self.rt.bus.publish(
            ConnectionOpened(INBOUND, request.source, request.service, decision.rule)
        )
        # its bytes, while open; the peer is the client: what it sent, the stream received
        self.rt.bus.open.add(stream, (INBOUND, request.source, request.service), flipped=True)
        guard = decision.guard
        if guard is not None:  # under a policy: look first
            wholesale = decision.decided is not None
            stream.http = FirstBytes(
                partial(self._first, link, stream, request, guard, pending, wholesale),
                sniff_wait(self.rt),
            )
            if decision.decided is not None:  # allowed whatever comes: counted once
                allowed_wholesale(self.rt, request.service, decision.decided)
                self._connect(stream, decision.port, pending)  # server-first need not wait
            return stream
        if decision.http is not None:  # L7 for this service (an L4 stream skips even the call)
            stream.http = self._exchange(decision.http, request)
        elif rt_observes(self.rt):  # HTTP is observed once its first bytes say it is HTTP
            stream.http = first_request(self.rt, stream, request.source, request.service)
        self.relayed[stream] = (link, request)  # no policy yet: a push re-judges it
        self._connect(stream, decision.port, pending)
        return stream

    def _exchange(self, plan: HttpPlan, request: OpenRequest) -> Any:
        return exchange_for(
            plan,
            self.rt.bus.publish,
            INBOUND,
            request.source,
            request.service,
            self.rt.config.limits.max_header_bytes,
            self.rt.listening,
        )

    def _connect(self, stream: Stream, port: int, pending: list[Callable[[], None]]) -> None:
        cancel = self.connector.connect(
            LOCAL_APP_HOST,
            port,
            lambda: AppProtocol(stream),
            lambda error: self._unreachable(stream, port, error),
        )
        pending.append(cancel)

    def _first(
        self,
        link: Link,
        stream: Stream,
        request: OpenRequest,
        guard: Guard,
        pending: list[Callable[[], None]],
        wholesale: bool,
        kind: Kind,
        first: bytes,
        replay: bool,
    ) -> Verdict:
        """The stream's first bytes said what it is (``FirstBytes``): judge it, connect the
        app (a peer allowed wholesale is connected already: only its HTTP requests are
        normalised), and answer for ``first`` as what is installed now does."""
        if stream.closed:
            return DROP
        if kind == "http":
            judge = RequestJudge(self.rt, guard, request.source, request.port, wholesale)
            stream.http = judging(self.rt, guard, judge, request.source, request.service)
        else:
            why = judge_tcp(self.rt, guard, request.source, request.port, wholesale)
            if why is not None:  # the caller's meshd resets its app's connection (RST)
                link.reset(stream, RST_REFUSED, why)
                return DROP
            stream.http = self._exchange(guard.http, request) if guard.http else None
            self.relayed[stream] = (link, request)
        if not wholesale:
            self._connect(stream, guard.port, pending)
        http = stream.http
        return answer_for(first, replay, stream.replay, None if http is None else http.incoming)

    def _unreachable(self, stream: Stream, port: int, error: BaseException) -> None:
        if stream.closed:  # reset meanwhile: its connect was cancelled
            return
        log.debug("cannot reach the app on port %d: %s", port, error)
        if stream.link is not None:  # the peer hears a short reason of ours, as a reply
            stream.link.refuse(stream, RST_CONNECT_FAILED, f"cannot reach the app on port {port}")
        else:
            stream.reset(f"cannot reach the app on port {port}: {error}")

    def _closed(
        self,
        stream: Stream,
        request: OpenRequest,
        error: str,
        peer: str,
        pending: list[Callable[[], None]],
    ) -> None:
        for cancel in pending:  # still connecting to the app: give its descriptor back now
            cancel()
        self.relayed.pop(stream, None)
        self.peer_streams[peer] -= 1
        if self.peer_streams[peer] <= 0:
            del self.peer_streams[peer]
        self.rt.release()
        counted_sent, counted_received = self.rt.bus.open.remove(stream)
        self.rt.bus.publish(
            ConnectionClosed(
                INBOUND,
                request.source,
                request.service,
                stream.received,
                stream.sent,
                time.monotonic() - stream.opened_at,
                error,
                counted_sent,
                counted_received,
            )
        )

    def goaway_all(self) -> None:
        for link in list(self.links):
            link.goaway()

    def after_swap(self) -> None:
        """The running state was swapped (``Runtime.recompile``): follow what changed."""
        self.tear_down_revoked()
        self.goaway_renewed()
        self.rejudge_relayed()

    def rejudge_relayed(self) -> None:
        """A swap that changed the policy: every stream and plaintext connection relayed
        with no request judged meets it now, and is reset (RST) if it no longer may go on."""
        version = self.rt.bundle.policy_version
        if version == self.policy_version:
            return
        self.policy_version = version
        rt = self.rt
        for stream, (link, request) in list(self.relayed.items()):
            why = rejudge(rt, request.service, request.source, request.port)
            if why is not None and not stream.closed:  # the caller's app sees an RST
                link.reset(stream, RST_REFUSED, why)
        for plain in list(self.plain):
            plain.rejudge()

    def goaway_renewed(self) -> None:
        """GOAWAY on every link made with TLS material other than what meshd runs now.

        Called after every swap; each link hears it once, and when the trust bundle
        changed it is aborted after a grace if its peer keeps it (``Link.outlived``);
        a swap that changed neither certificate nor bundle does nothing.
        """
        if not self.links:
            return
        current = self.rt.tls
        for link in list(self.links):
            if link.generation != current.generation:
                link.outlived("renewed", current.trust)

    def tear_down_revoked(self) -> None:
        """Abort every link from a peer the bundle's revocations name, and its streams."""
        bundle = self.rt.bundle
        if not (bundle.revoked_ids or bundle.revoked_serials):
            return
        for link in list(self.links):
            refusal = decide.revoked(
                bundle, link.peer_names, link.peer_serial, link.peer_not_before
            )
            if refusal is not None:
                self.rt.bus.publish(LinkRetired("revoked"))
                link.abort(f"revoked: {refusal.reason}")


class PlainInbound(PipeEnd):
    """A connection from outside the mesh, redirected to the inbound listener."""

    client_side = True  # requests arrive here; the peer is the app

    def __init__(
        self, rt: Runtime, connector: Connector, relayed: set[PlainInbound] | None = None
    ) -> None:
        super().__init__()
        self.rt = rt
        self.connector = connector
        self.service = ""
        self.port = 0
        self.opened_at = 0.0
        # the open relays a policy push re-judges (``MeshPort.plain``); None: not tracked
        self.relayed = relayed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        super().connection_made(transport)
        dst = original_dst(transport.get_extra_info("socket"))
        decision = decide.plaintext(self.rt.bundle, dst, self.rt.active)
        if isinstance(decision, Refuse):
            self._refuse(transport, dst, decision)
            return
        self.rt.active += 1  # released in _closed
        self.service, self.port = decision.service, decision.port
        self.opened_at = time.monotonic()
        self.on_lost = self._closed
        self.rt.bus.publish(
            ConnectionOpened(INBOUND, UNAUTHENTICATED, decision.service, decision.rule)
        )
        self.rt.bus.open.add(self, (INBOUND, UNAUTHENTICATED, decision.service))
        guard = decision.guard
        if guard is not None:  # under a policy: look first
            wholesale = decision.decided is not None
            self.http = FirstBytes(partial(self._first, guard, wholesale), sniff_wait(self.rt))
            if decision.decided is not None:  # allowed whatever comes: counted once
                allowed_wholesale(self.rt, decision.service, decision.decided)
                self._connect(decision.port)  # a server-first protocol need not wait
            return
        if decision.http is not None:  # L7 for this service; an L4 relay skips even the call
            self.http = self._exchange(decision.http)
        elif rt_observes(self.rt):  # HTTP is observed once its first bytes say it is HTTP
            self.http = first_request(self.rt, self, UNAUTHENTICATED, self.service)
        self._track()  # no policy yet: a push re-judges it
        self._connect(decision.port)

    def _exchange(self, plan: HttpPlan) -> Any:
        return exchange_for(
            plan,
            self.rt.bus.publish,
            INBOUND,
            UNAUTHENTICATED,
            self.service,
            self.rt.config.limits.max_header_bytes,
            self.rt.listening,
        )

    def _connect(self, port: int) -> None:
        self.connector.connect(
            LOCAL_APP_HOST,
            port,
            lambda: _AppEnd(self),
            lambda error: self._unreachable(port, error),
        )

    def _first(
        self, guard: Guard, wholesale: bool, kind: Kind, first: bytes, replay: bool
    ) -> Verdict:
        """The first bytes said what the connection is (``FirstBytes``): judge it, connect
        the app (a peer allowed wholesale is connected already: only its HTTP requests are
        normalised), and answer for ``first`` as what is installed now does. Both ends
        follow the connection with it (the app's end may have joined already)."""
        if self.closed or self.transport is None:
            return DROP
        if kind == "http":
            judge = RequestJudge(self.rt, guard, None, guard.port, wholesale)
            self.use_http(judging(self.rt, guard, judge, UNAUTHENTICATED, self.service))
        else:
            why = judge_tcp(self.rt, guard, None, guard.port, wholesale)
            if why is not None:
                reset_hard(self.transport)
                return DROP
            self.use_http(self._exchange(guard.http) if guard.http else None)
            self._track()
        if not wholesale:
            self._connect(guard.port)
        http = self.http
        return answer_for(first, replay, self.replay, None if http is None else http.request_bytes)

    def _refuse(
        self, transport: asyncio.Transport, dst: tuple[str, int] | None, refusal: Refuse
    ) -> None:
        peer = fmt(transport.get_extra_info("peername"))
        if refusal.rule != MAX_CONNECTIONS:  # full: counted, not logged (as on the mesh port)
            peer_lines.log(
                log,
                logging.WARNING,
                "refused plaintext connections",
                "refused plaintext connection from %s to %s: %s",
                peer,
                fmt(dst),
                refusal.reason,
            )
        self.rt.bus.publish(ConnectionRefused("inbound", peer, refusal.code, refusal.rule))
        if self.rt.bundle.policy is not None and refusal.code == "plaintext" and dst is not None:
            self._strict(dst[1], refusal)  # the policy's strict mode: RST at accept
            reset_hard(transport)
            return
        transport.abort()

    def _strict(self, port: int, refusal: Refuse) -> None:
        service = next((s.name for s in self.rt.config.services if s.port == port), "")
        self.rt.bus.publish(
            AuthzDecided(service, "reset", refusal.rule, port=port, request_id=request_id())
        )

    def _track(self) -> None:
        if self.relayed is not None:
            self.relayed.add(self)

    def rejudge(self) -> None:
        """The policy changed (``MeshPort.rejudge_relayed``): reset (RST) if it denies us now."""
        if self.closed or self.transport is None:
            return
        if rejudge(self.rt, self.service, None, self.port) is not None:
            reset_hard(self.transport)

    def _closed(self) -> None:
        if self.relayed is not None:
            self.relayed.discard(self)
        self.rt.release()
        counted_sent, counted_received = self.rt.bus.open.remove(self)
        self.rt.bus.publish(
            ConnectionClosed(
                INBOUND,
                UNAUTHENTICATED,
                self.service,
                self.bytes_in,
                self.received,
                time.monotonic() - self.opened_at,
                "",
                counted_sent,
                counted_received,
            )
        )

    # what the byte counters read while it is open (``meshd.telemetry.live``)
    @property
    def sent(self) -> int:
        """Bytes from the client."""
        return self.bytes_in

    @property
    def received(self) -> int:
        """Bytes from the app."""
        return self.peer.bytes_in if self.peer is not None else 0

    def _unreachable(self, port: int, error: BaseException) -> None:
        log.warning("cannot reach the app on port %d: %s", port, error)
        if self.transport is not None:
            self.transport.abort()


class _AppEnd(PipeEnd):
    """The app side of a permissive-mode relay: joins its client once connected."""

    def __init__(self, client: PlainInbound) -> None:
        super().__init__()
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.client.closed:
            cast(asyncio.Transport, transport).close()
        else:
            self.client.join(self)


def sniff_wait(rt: Runtime) -> float:
    """How long an inspected connection may stay silent before it is judged as opaque TCP."""
    return min(SNIFF_WAIT, rt.config.timeouts.header_read)


def judging(
    rt: Runtime, guard: Guard, judge: RequestJudge, source: str, service: str
) -> HttpObserver:
    """The exchange of an inspected HTTP connection: the judge first, then any hooks its
    service had (``guard.http``); made by ``install.exchange_with``, with no ``HttpPlan``
    per connection.

    It parses every request anyway: where meshd observes HTTP (``[mesh] http``), it
    reports them too (no second parser), the ones it answers itself (403, 429)
    included; a plan of the service's own keeps its say.
    """
    base = guard.http
    hooks: tuple[RequestHook, ...]
    if base is None:
        observe, hooks = rt_observes(rt), (judge,)
    else:
        observe, hooks = base.observe, (judge, *base.hooks)
    limit = rt.config.limits.max_header_bytes
    return exchange_with(
        observe, hooks, rt.bus.publish, INBOUND, source, service, limit, rt.listening
    )


def rt_observes(rt: Runtime) -> bool:
    """Does this meshd observe HTTP (``[mesh] http``, as its outbound side does)?"""
    return rt.config.http


def first_request(rt: Runtime, carrier: Carrier, source: str, service: str) -> FirstRequest:
    """The exchange of an inbound connection to ``service`` until its first bytes."""
    limit = rt.config.limits.max_header_bytes
    return FirstRequest(carrier, OBSERVE, rt.bus.publish, source, service, limit, rt.listening)


def _refused(link: Link, refusal: Refuse) -> None:
    """Log (throttled) and abort a link admission refused."""
    peer_lines.log(
        log,
        logging.WARNING,
        "refused links",
        "refused link from %s: %s",
        link.peer_address,
        refusal.reason,
    )
    link.abort(f"refused: {refusal.reason}")
