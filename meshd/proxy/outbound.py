"""Outbound: the host's intercepted (or explicitly addressed) connections, sent over links.

An accepted connection's original destination (or its upstream listener's
service) is admitted by ``meshd.policy.decide.outbound``, which maps it to a
service through the registry; the balancer picks an endpoint (least
outstanding streams among the endpoints not recently failed), and the pool
(``meshd.proxy.pool``) sends the stream over the persistent link to that
endpoint's meshd, after checking that the peer holds the service's identity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from meshd.netfacts import fmt, original_dst
from meshd.policy import decide
from meshd.policy.decisions import Refuse
from meshd.proxy.balancer import NOTHING_TRIED
from meshd.proxy.http.install import exchange_for
from meshd.proxy.http.observe import looks_like_http
from meshd.proxy.http.plan import HttpPlan
from meshd.proxy.link import Link
from meshd.proxy.pool import LinkPool, Waiting
from meshd.proxy.stream import AppProtocol, Stream
from meshd.runtime import Runtime
from meshd.telemetry.events import (
    OUTBOUND,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
)
from meshd.telemetry.logs import clean, peer_lines

log = logging.getLogger("meshd.outbound")


class OutboundConn(AppProtocol):
    """An app's connection accepted by an outbound listener."""

    def __init__(self, rt: Runtime, pool: LinkPool, source: str, fixed: str | None) -> None:
        super().__init__(Stream(rt.config.limits.stream_window, on_close=self._closed))
        self.rt = rt
        self.pool = pool
        self.source = source
        self.fixed = fixed
        self.service = ""
        self.http: HttpPlan | None = None  # what the admission decided, if HTTP is spoken
        self.sniffed = True  # until a decision with an HTTP plan asks to look at the first bytes
        self.admitted = False
        self.waiting: Waiting | None = None  # where the stream went (sent again by a move)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.stream.transport = transport
        rt, stream = self.rt, self.stream
        # an upstream listener's connections have no original destination
        dst = None if self.fixed is not None else original_dst(transport.get_extra_info("socket"))
        decision = decide.outbound(rt.bundle, rt.active, self.fixed, dst)
        if isinstance(decision, Refuse):
            self._refuse(transport, decision)
            return
        rt.active += 1  # released when the stream closes
        self.admitted = True
        service = self.service = decision.service.name
        if decision.http is not None:
            self.http, self.sniffed = decision.http, False
        rt.bus.publish(ConnectionOpened(OUTBOUND, self.source, service, decision.rule))
        rt.bus.open.add(stream, (OUTBOUND, self.source, service))  # its bytes, while open
        # "now" is when the connection was accepted, a moment ago: no clock read for it
        endpoint = self.pool.balancer.pick(
            service, decision.endpoints, NOTHING_TRIED, stream.opened_at
        )
        if endpoint is None:
            stream.reset(f"service {service} has no endpoints")
            return
        target = fmt(dst) if dst is not None else ""
        self.waiting = Waiting(stream, decision, self.source, target)
        self.pool.send(self.waiting, endpoint)

    def _refuse(self, transport: asyncio.Transport, refusal: Refuse) -> None:
        peer = fmt(transport.get_extra_info("peername"))
        peer_lines.log(
            log,
            logging.WARNING,
            "refused outbound connections",
            "refused outbound connection from %s: %s",
            peer,
            refusal.reason,
        )
        self.rt.bus.publish(ConnectionRefused("outbound", peer, refusal.code, refusal.rule))
        self.stream.closed = True
        transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.sniffed:
            self.sniffed = True
            if looks_like_http(data):
                self.stream.http = exchange_for(
                    self.http,
                    self.rt.bus.publish,
                    OUTBOUND,
                    self.source,
                    self.service,
                    self.rt.config.limits.max_header_bytes,
                    self.rt.listening,
                )
                if self.stream.http is not None:  # it may move to a fresh link between requests
                    self.stream.mover = self._move
        self.stream.send(data)

    def _move(self, stream: Stream, old: Link) -> None:
        if self.waiting is not None:
            self.pool.move(self.waiting, old)

    def _closed(self, stream: Stream, error: str) -> None:
        self.pool.stream_done(stream)
        if self.admitted:
            self.admitted = False
            self.rt.release()
        if self.service:
            counted_sent, counted_received = self.rt.bus.open.remove(stream)
            self.rt.bus.publish(
                ConnectionClosed(
                    OUTBOUND,
                    self.source,
                    self.service,
                    stream.sent,
                    stream.received,
                    time.monotonic() - stream.opened_at,
                    error,
                    counted_sent,
                    counted_received,
                )
            )
        if error:  # may quote the peer's reset reason
            log.debug("outbound stream to %s ended: %s", self.service, clean(error))
