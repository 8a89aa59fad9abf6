"""Outbound: the host's intercepted (or explicitly addressed) connections, sent over links.

An accepted connection's original destination is mapped to a service through
the registry; an endpoint is picked (least outstanding streams among the
endpoints not recently failed); the stream goes over the persistent link to
that endpoint's meshd, after checking that the peer holds the service's
identity. Links are dialled on demand and shared by all streams to that peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import cast

import anyio

from meshd.netfacts import fmt, original_dst
from meshd.proxy.frames import OpenRequest
from meshd.proxy.http.install import exchange_for
from meshd.proxy.http.observe import looks_like_http
from meshd.proxy.link import Link
from meshd.proxy.stream import AppProtocol, Stream
from meshd.registry import Endpoint, Service
from meshd.runtime import Runtime
from meshd.telemetry.events import (
    OUTBOUND,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    HandshakeFailed,
)
from meshd.telemetry.logs import clean, peer_lines

log = logging.getLogger("meshd.outbound")

FAIL_BACKOFF = (1.0, 30.0)  # seconds: first and longest pause after an endpoint failed
MAX_ATTEMPTS = 3


@dataclass
class _Waiting:
    """An app connection on its way to an endpoint (possibly waiting for the link)."""

    stream: Stream
    service: Service
    source: str
    target: str  # the original destination, for the far side's logs
    pinned: bool = False  # addressed to one endpoint directly: no other will do
    endpoint: Endpoint | None = None
    tried: set[tuple[str, int]] = field(default_factory=set)


class LinkPool:
    """Links to peers, dialled on demand; endpoint health for the balancer."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.links: dict[tuple[str, int], Link] = {}
        # links replaced by a fresh one (full, or out of stream ids): they drain, then close
        self.retiring: set[Link] = set()
        self.waiting: dict[tuple[str, int], list[_Waiting]] = {}
        self.failed_until: dict[tuple[str, int], tuple[float, float]] = {}
        self.outstanding: dict[tuple[str, int], int] = {}
        self._ids: dict[str, str] = {}  # service name -> its SPIFFE ID, as the links hold them
        self._turn: dict[str, int] = {}  # service name -> round-robin position

    def pick(self, service: Service, avoid: set[tuple[str, int]]) -> Endpoint | None:
        """The healthy endpoint with the fewest open streams (failed ones as a last resort)."""
        endpoints = service.endpoints
        if len(endpoints) == 1 and not avoid:  # the common case, without the bookkeeping
            return endpoints[0]
        now = time.monotonic()
        candidates = [e for e in endpoints if e.link_key not in avoid]
        healthy = [e for e in candidates if self.failed_until.get(e.link_key, (0.0, 0.0))[0] <= now]
        pool = healthy or candidates
        if not pool:
            return None
        # least outstanding streams; ties go round robin so idle endpoints share the load
        turn = self._turn[service.name] = self._turn.get(service.name, -1) + 1
        start = turn % len(pool)
        rotated = pool[start:] + pool[:start]
        return min(rotated, key=lambda e: self.outstanding.get(e.link_key, 0))

    def send(self, waiting: _Waiting, endpoint: Endpoint) -> None:
        key = endpoint.link_key
        waiting.endpoint = endpoint
        waiting.tried.add(key)
        link = self.links.get(key)
        if link is not None and link.usable:
            self._open(link, waiting)
            return
        queue = self.waiting.setdefault(key, [])
        queue.append(waiting)
        if len(queue) == 1:
            assert self.rt.tg is not None
            self.rt.tg.start_soon(self._dial, endpoint)

    def _open(self, link: Link, waiting: _Waiting) -> None:
        name = waiting.service.name
        wanted = self._ids.get(name)
        if wanted is None:
            wanted = self._ids[name] = str(self.rt.service_id(name))
        if wanted not in link.peer_names:
            self._refuse(
                waiting,
                link.peer_address,
                "wrong_identity",
                f"peer {link.peer_address} does not hold {wanted}",
            )
            return
        self.outstanding[link.key] = self.outstanding.get(link.key, 0) + 1
        port = waiting.endpoint.port if waiting.endpoint else waiting.service.port
        request = OpenRequest(name, port, waiting.source, waiting.target)
        link.open_stream(waiting.stream, request)

    def stream_done(self, stream: Stream) -> None:
        if stream.link is not None:
            key = stream.link.key
            self.outstanding[key] = max(0, self.outstanding.get(key, 1) - 1)

    async def _dial(self, endpoint: Endpoint) -> None:
        try:
            await self._dial_once(endpoint)
        except Exception as e:  # one endpoint's trouble is a failed dial, never the daemon's
            log.debug("dial to %s failed", fmt(endpoint.link_key), exc_info=True)
            self._dial_failed(endpoint, f"{type(e).__name__}: {e}")

    async def _dial_once(self, endpoint: Endpoint) -> None:
        key = endpoint.link_key
        rt = self.rt
        expected = rt.host_id(endpoint.host)  # before connecting: nothing to clean up if it fails
        timeouts, limits = rt.config.timeouts, rt.config.limits
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(timeouts.connect + timeouts.handshake):
                _, link = await loop.create_connection(
                    lambda: Link(
                        dialer=True,
                        max_frame=limits.max_frame,
                        max_streams=limits.max_streams_per_link,
                        ping_interval=timeouts.ping_interval,
                        link_window=limits.link_window,
                        on_lost=self._lost,
                    ),
                    endpoint.address,
                    endpoint.mesh_port,
                    ssl=rt.tls.client,
                    ssl_handshake_timeout=timeouts.handshake,
                )
        except (OSError, TimeoutError) as e:
            self._dial_failed(endpoint, f"{type(e).__name__}: {e}")
            return
        if link.refused:  # aborted by the link itself: no ALPN, a CA leaf, ...
            rt.bus.publish(HandshakeFailed("link", fmt(key), "refused"))
            self._dial_failed(endpoint, f"peer refused: {link.refused}")
            return
        if expected not in link.peer_ids:
            link.abort(f"peer is not {expected}")
            rt.bus.publish(HandshakeFailed("link", fmt(key), "wrong_identity"))
            self._dial_failed(endpoint, f"peer does not hold {expected}")
            return
        self.failed_until.pop(key, None)
        link.key = key
        old = self.links.get(key)
        if old is not None and not old.closed:
            self.retiring.add(old)
        self.links[key] = link
        peer_lines.log(log, logging.INFO, "links up", "link to %s (%s) up", endpoint.host, fmt(key))
        for waiting in self.waiting.pop(key, []):
            if not waiting.stream.closed:
                self._open(link, waiting)

    def _dial_failed(self, endpoint: Endpoint, reason: str) -> None:
        key = endpoint.link_key
        previous = self.failed_until.get(key, (0.0, 0.0))[1]
        backoff = min(FAIL_BACKOFF[1], previous * 2) if previous else FAIL_BACKOFF[0]
        self.failed_until[key] = (time.monotonic() + backoff, backoff)
        log.warning(
            "cannot link to %s (%s): %s; retrying after %.0fs",
            endpoint.host,
            fmt(key),
            reason,
            backoff,
        )
        self.rt.bus.publish(HandshakeFailed("link", fmt(key), "connect_failed"))
        for waiting in self.waiting.pop(key, []):
            if waiting.stream.closed:
                continue
            retry = None if waiting.pinned else self.pick(waiting.service, waiting.tried)
            if retry is not None and len(waiting.tried) < MAX_ATTEMPTS:
                self.send(waiting, retry)
            else:
                waiting.stream.reset(f"no reachable endpoint for {waiting.service.name}: {reason}")

    def _lost(self, link: Link, reason: str) -> None:
        self.retiring.discard(link)
        for key, current in list(self.links.items()):
            if current is link:
                del self.links[key]
                log.info("link to %s closed: %s", fmt(key), reason)

    def _refuse(self, waiting: _Waiting, peer: str, code: str, message: str) -> None:
        peer_lines.log(
            log,
            logging.WARNING,
            "refused outbound streams",
            "refused outbound stream to %s: %s",
            waiting.service.name,
            message,
        )
        self.rt.bus.publish(ConnectionRefused("outbound", peer, code))
        waiting.stream.reset(message)

    def goaway_all(self) -> None:
        for link in (*self.links.values(), *self.retiring):
            link.draining = True


class OutboundConn(AppProtocol):
    """An app's connection accepted by an outbound listener."""

    def __init__(self, rt: Runtime, pool: LinkPool, source: str, fixed: str | None) -> None:
        super().__init__(Stream(rt.config.limits.stream_window, on_close=self._closed))
        self.rt = rt
        self.pool = pool
        self.source = source
        self.fixed = fixed
        self.service = ""
        self.sniffed = not rt.config.http
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.stream.transport = transport
        if not self.rt.admit():
            self._refuse(transport, "limit", "connection limit reached")
            return
        self.admitted = True
        service, pinned, target = self._resolve(transport)
        if service is None:
            what = f"{target} is not a mesh service" if target else "it was not redirected"
            self._refuse(transport, "unknown_destination", what)
            return
        self.service = service.name
        self.rt.bus.publish(ConnectionOpened(OUTBOUND, self.source, service.name))
        endpoint = pinned or self.pool.pick(service, set())
        if endpoint is None:
            self.stream.reset(f"service {service.name} has no endpoints")
            return
        waiting = _Waiting(self.stream, service, self.source, target, pinned=pinned is not None)
        self.pool.send(waiting, endpoint)

    def _resolve(self, transport: asyncio.Transport) -> tuple[Service | None, Endpoint | None, str]:
        """The service, the endpoint if one was addressed directly, and the original destination."""
        registry = self.rt.registry
        if self.fixed is not None:  # an upstream listener: there is no original destination
            return registry.service(self.fixed), None, ""
        dst = original_dst(transport.get_extra_info("socket"))
        if dst is None:
            return None, None, ""
        route = registry.route(*dst)
        if route is None:
            return None, None, fmt(dst)
        return route.service, route.endpoint, fmt(dst)

    def _refuse(self, transport: asyncio.Transport, code: str, message: str) -> None:
        peer = fmt(transport.get_extra_info("peername"))
        peer_lines.log(
            log,
            logging.WARNING,
            "refused outbound connections",
            "refused outbound connection from %s: %s",
            peer,
            message,
        )
        self.rt.bus.publish(ConnectionRefused("outbound", peer, code))
        self.stream.closed = True
        if self.admitted:
            self.admitted = False
            self.rt.release()
        transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.sniffed:
            self.sniffed = True
            if looks_like_http(data):
                self.stream.http = exchange_for(
                    self.rt.http_rules.outbound_plan(self.service),
                    self.rt.bus.publish,
                    OUTBOUND,
                    self.source,
                    self.service,
                    self.rt.config.limits.max_header_bytes,
                )
        self.stream.send(data)

    def _closed(self, stream: Stream, error: str) -> None:
        self.pool.stream_done(stream)
        if self.admitted:
            self.admitted = False
            self.rt.release()
        if self.service:
            self.rt.bus.publish(
                ConnectionClosed(
                    OUTBOUND,
                    self.source,
                    self.service,
                    stream.sent,
                    stream.received,
                    time.monotonic() - stream.opened_at,
                    error,
                )
            )
        if error:  # may quote the peer's reset reason
            log.debug("outbound stream to %s ended: %s", self.service, clean(error))
