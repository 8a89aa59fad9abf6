"""The links this meshd dials: one per peer endpoint, dialled on demand, shared by its streams.

``LinkPool`` takes an admitted outbound connection (``Waiting``) with the
endpoint the balancer picked, and opens its stream over the link to that
endpoint's meshd once the link is up and the peer holds the service's
identity. A link that cannot be dialled is reported to the balancer (which
holds that endpoint off) and the connections waiting for it try another
endpoint. A link that is full, out of stream ids, near the expiry of a
certificate it was made with, made with a certificate or trust bundle meshd
no longer runs, or asked by its peer to go, is replaced by a fresh one and
retires once its streams are done (HTTP streams move over: ``move``); one
made with TLS material swapped out is also cut after a grace
(``Link.outlived``). A link to a peer the registry revokes is torn down at
the swap that revokes it, and never dialled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import anyio

from meshd.netfacts import fmt
from meshd.policy import decide
from meshd.policy.decisions import SERVICE_IDENTITY, Forward
from meshd.proxy.balancer import Balancer, Key
from meshd.proxy.frames import OpenRequest
from meshd.proxy.link import Link
from meshd.proxy.stream import Stream
from meshd.registry import Endpoint
from meshd.runtime import Runtime
from meshd.telemetry.events import ConnectionRefused, HandshakeFailed, LinkRetired
from meshd.telemetry.logs import peer_lines
from meshd.tls.failures import HandshakeFailure

log = logging.getLogger("meshd.outbound")


@dataclass(slots=True)
class Waiting:
    """An admitted app connection on its way to an endpoint (possibly waiting for the link)."""

    stream: Stream
    forward: Forward  # the service, and the endpoints it may go to
    source: str
    target: str  # the original destination, for the far side's logs
    endpoint: Endpoint | None = None
    tried: set[Key] = field(default_factory=set)


class LinkPool:
    """Links to peers, dialled on demand; the balancer's view of how each endpoint does."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.balancer = Balancer()
        self.links: dict[Key, Link] = {}
        # links replaced by a fresh one (see the module docstring): they drain, then close
        self.retiring: set[Link] = set()
        self.waiting: dict[Key, list[Waiting]] = {}
        self._ids: dict[str, str] = {}  # service name -> its SPIFFE ID, as the links hold them
        rt.swapped.append(self.after_swap)

    def send(self, waiting: Waiting, endpoint: Endpoint) -> None:
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

    def _open(self, link: Link, waiting: Waiting) -> None:
        service = waiting.forward.service
        name = service.name
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
        self.balancer.opened(link.key)
        port = waiting.endpoint.port if waiting.endpoint else service.port
        request = OpenRequest(name, port, waiting.source, waiting.target)
        link.open_stream(waiting.stream, request)

    def stream_done(self, stream: Stream) -> None:
        if stream.link is not None:
            self.balancer.closed(stream.link.key)

    def move(self, waiting: Waiting, old: Link) -> None:
        """``waiting``'s stream left its retiring link ``old``: send it again, to the same peer."""
        self.balancer.closed(old.key)
        assert waiting.endpoint is not None  # it was sent before
        waiting.tried = set()
        self.send(waiting, waiting.endpoint)

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
        tls = rt.tls  # what this dial presents and verifies the peer with
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
                        on_retire=self._retired,
                        own_expiry=tls.not_after.timestamp(),
                        generation=tls.generation,
                        trust=tls.trust,
                    ),
                    endpoint.address,
                    endpoint.mesh_port,
                    ssl=tls.client,
                    ssl_handshake_timeout=timeouts.handshake,
                )
        except (OSError, TimeoutError) as e:
            self._dial_failed(endpoint, f"{type(e).__name__}: {e}")
            return
        if link.refused:  # aborted by the link itself: no ALPN, a CA leaf, ...
            rt.bus.publish(HandshakeFailed("link", fmt(key), HandshakeFailure.REFUSED))
            self._dial_failed(endpoint, f"peer refused: {link.refused}")
            return
        if expected not in link.peer_ids:
            link.abort(f"peer is not {expected}")
            rt.bus.publish(HandshakeFailed("link", fmt(key), HandshakeFailure.WRONG_IDENTITY))
            self._dial_failed(endpoint, f"peer does not hold {expected}")
            return
        revoked = decide.revoked(rt.bundle, link.peer_names, link.peer_serial, link.peer_not_before)
        if revoked is not None:  # the handshake was fine: its peer is not
            link.abort(revoked.reason)
            rt.bus.publish(ConnectionRefused("outbound", fmt(key), revoked.code, revoked.rule))
            self._dial_failed(endpoint, revoked.reason)
            return
        if tls is not rt.tls and tls.generation != rt.tls.generation:
            # swapped during the handshake (the swap's retire_all did not see this link):
            # the peer was verified with what meshd no longer runs, so dial again
            link.abort("made with a certificate or trust bundle swapped out meanwhile")
            assert rt.tg is not None
            rt.tg.start_soon(self._dial, endpoint)
            return
        self.balancer.recovered(key)
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
        now = time.monotonic()
        backoff = self.balancer.failed(key, now)
        log.warning(
            "cannot link to %s (%s): %s; retrying after %.0fs",
            endpoint.host,
            fmt(key),
            reason,
            backoff,
        )
        self.rt.bus.publish(HandshakeFailed("link", fmt(key), HandshakeFailure.CONNECT_FAILED))
        for waiting in self.waiting.pop(key, []):
            if waiting.stream.closed:
                continue
            service, endpoints = waiting.forward.service.name, waiting.forward.endpoints
            retry = self.balancer.retry(service, endpoints, waiting.tried, now)
            if retry is not None:
                self.send(waiting, retry)
            else:
                waiting.stream.reset(f"no reachable endpoint for {service}: {reason}")

    def _retired(self, link: Link, reason: str) -> None:
        """A link takes no new streams: the next stream to its peer dials a fresh one."""
        if self.links.get(link.key) is link:
            del self.links[link.key]
        self.retiring.add(link)
        log.info("link to %s retires (%s)", fmt(link.key), reason)
        self.rt.bus.publish(LinkRetired(reason))

    def _lost(self, link: Link, reason: str) -> None:
        self.retiring.discard(link)
        for key, current in list(self.links.items()):
            if current is link:
                del self.links[key]
                log.info("link to %s closed: %s", fmt(key), reason)

    def _refuse(self, waiting: Waiting, peer: str, code: str, message: str) -> None:
        peer_lines.log(
            log,
            logging.WARNING,
            "refused outbound streams",
            "refused outbound stream to %s: %s",
            waiting.forward.service.name,
            message,
        )
        self.rt.bus.publish(ConnectionRefused("outbound", peer, code, SERVICE_IDENTITY))
        waiting.stream.reset(message)

    def goaway_all(self) -> None:
        for link in (*self.links.values(), *self.retiring):
            link.draining = True

    def after_swap(self) -> None:
        """The running state was swapped (``Runtime.recompile``): follow what changed."""
        self.tear_down_revoked()
        self.retire_all("renewed")

    def retire_all(self, reason: str) -> None:
        """Retire every link made with TLS material other than what meshd runs now.

        Called after every swap (certificate, trust bundle, registry, ...): links
        made with the running certificate and bundle stay, so a swap that changed
        neither does nothing. The others retire and are cut after a grace
        (``Link.outlived``), those already retiring too.
        """
        if not (self.links or self.retiring):
            return
        current = self.rt.tls
        for link in (*self.links.values(), *self.retiring):
            if link.generation != current.generation:
                link.outlived(reason, current.trust)

    def tear_down_revoked(self) -> None:
        """Abort every link whose peer the bundle's revocations name, and its streams."""
        bundle = self.rt.bundle
        if not (bundle.revoked_ids or bundle.revoked_serials):
            return
        for link in (*self.links.values(), *self.retiring):
            refusal = decide.revoked(
                bundle, link.peer_names, link.peer_serial, link.peer_not_before
            )
            if refusal is not None and not link.closed:
                self.rt.bus.publish(LinkRetired("revoked"))
                link.abort(refusal.reason)
