"""The mesh port and the inbound listener, in process: decisions carried out, shares counted.

The decisions are tested in tests/meshd/policy; these check what MeshPort and
PlainInbound do with them: what they publish (with the rule), what they
count and give back when a stream or link ends, what they connect or abort.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import cast

import pytest

from meshd.identity import SpiffeId
from meshd.proxy.connect import Connector
from meshd.proxy.frames import OpenRequest
from meshd.proxy.inbound import MeshPort, PlainInbound
from meshd.proxy.link import Link
from meshd.proxy.stream import Stream
from meshd.runtime import Runtime
from meshd.telemetry.events import ConnectionOpened, ConnectionRefused, Event, HandshakeFailed
from meshd.tls.context import TlsMaterial
from meshd.tls.failures import HandshakeFailure
from tests.meshd.policy.sample import (
    HOST_A,
    MAX_CONNS,
    MAX_PEER_LINKS,
    MAX_PEER_STREAMS,
    REGISTRY,
    WEB,
    config,
)
from tests.meshd.proxy.test_outbound import AppTransport, RedirectedSocket

ADDRESS = "127.0.0.1:40000"
TO_API = OpenRequest("api", 8080, WEB)


class Connects(Connector):
    """Records the app connections asked for, and which were cancelled."""

    def __init__(self) -> None:
        super().__init__(timeout=1.0)
        self.ports: list[int] = []
        self.cancelled = 0

    def connect(
        self,
        host: str,
        port: int,
        factory: Callable[[], asyncio.Protocol],
        on_error: Callable[[BaseException], None],
    ) -> Callable[[], None]:
        self.ports.append(port)
        return self._cancel

    def _cancel(self) -> None:
        self.cancelled += 1


def _runtime(mtls: str = "strict") -> tuple[Runtime, list[Event]]:
    rt = Runtime(
        config(mtls), cast(TlsMaterial, SimpleNamespace(generation=b"g1", trust=b"t1")), REGISTRY
    )
    return rt, cast(list[Event], rt.bus.subscribe(64).queue)


class FakeLink:
    """What MeshPort reads of a link whose handshake is done, and the abort it may call."""

    def __init__(self, *names: str) -> None:
        self.peer: SpiffeId | None = None
        self.peer_key = ""
        self.peer_ids = frozenset(SpiffeId.parse(n) for n in names or (HOST_A, WEB))
        self.peer_names = frozenset(str(i) for i in self.peer_ids)
        self.peer_address = ADDRESS
        self.peer_serial = "1F2E"
        self.generation = b"g1"  # made with the TLS material the runtime runs
        self.peer_not_before = 1_800_000_000.0  # a certificate of any time: none is revoked here
        self.aborted = ""

    def abort(self, reason: str) -> None:
        self.aborted = reason


def _link(*names: str) -> Link:
    return cast(Link, FakeLink(*names))


def _aborted(link: Link) -> str:
    return cast(FakeLink, link).aborted


def _port() -> tuple[MeshPort, Connects, Link, list[Event]]:
    rt, events = _runtime()
    connects = Connects()
    port = MeshPort(rt, connects)
    link = _link()
    port.on_ready(link)
    return port, connects, link, events


def _open(port: MeshPort, link: Link, request: OpenRequest = TO_API) -> Stream | None:
    return port.on_open(link, 1, request)


def test_an_admitted_stream_is_published_counted_and_connected() -> None:
    port, connects, link, events = _port()
    assert _open(port, link) is not None
    assert list(events) == [ConnectionOpened("inbound", WEB, "api", "config/services")]
    assert connects.ports == [8080]
    assert (port.rt.active, port.peer_streams[HOST_A]) == (1, 1)


def test_a_closed_stream_gives_its_share_back() -> None:
    """The peer's streams and the connections are counted down as they end (then reused)."""
    port, connects, link, _ = _port()
    for _ in range(2):  # twice the share: each stream ends before the next round
        streams = [_open(port, link) for _ in range(MAX_PEER_STREAMS)]
        assert None not in streams
        for stream in streams:
            assert stream is not None
            stream.reset("the app is done")
        assert (port.rt.active, port.peer_streams[HOST_A]) == (0, 0)
    assert connects.cancelled == 2 * MAX_PEER_STREAMS  # a connect still pending is cancelled
    assert HOST_A not in port.peer_streams  # no entry kept per peer that has none


@pytest.mark.parametrize(
    ("request_", "streams", "active", "code", "rule"),
    [
        pytest.param(
            TO_API,
            MAX_PEER_STREAMS,
            0,
            "peer_limit",
            "config/limits.max_streams_per_peer",
            id="max_streams_per_peer",
        ),
        pytest.param(
            TO_API, 0, MAX_CONNS, "limit", "config/limits.max_connections", id="max_connections"
        ),
        pytest.param(
            OpenRequest("api", 8080, "spiffe://t.mesh/svc/db"),
            0,
            0,
            "source_not_in_certificate",
            "builtin/source-in-certificate",
            id="source",
        ),
        pytest.param(
            OpenRequest("db", 8080, WEB), 0, 0, "unknown_service", "config/services", id="service"
        ),
    ],
)
def test_a_refused_stream_is_published_and_not_counted(
    request_: OpenRequest, streams: int, active: int, code: str, rule: str
) -> None:
    port, connects, link, events = _port()
    for _ in range(streams):
        _open(port, link)
    port.rt.active = active
    events.clear()
    assert _open(port, link, request_) is None
    assert list(events) == [ConnectionRefused("mesh", ADDRESS, code, rule)]
    assert connects.ports == [8080] * streams
    assert (port.rt.active, port.peer_streams[HOST_A]) == (active, streams)


def test_links_per_peer_are_counted_and_given_back() -> None:
    port, _, first, events = _port()
    links = [first] + [_link() for _ in range(MAX_PEER_LINKS - 1)]
    for link in links[1:]:
        port.on_ready(link)
    assert port.per_peer[HOST_A] == MAX_PEER_LINKS
    one_too_many = _link()
    port.on_ready(one_too_many)
    assert _aborted(one_too_many) == f"refused: {HOST_A} already holds its links"
    assert list(events) == [HandshakeFailed("mesh", ADDRESS, HandshakeFailure.TOO_MANY_LINKS)]
    port.on_lost(links[0], "gone")
    again = _link()
    port.on_ready(again)
    assert not _aborted(again)
    assert str(again.peer) == HOST_A and port.per_peer[HOST_A] == MAX_PEER_LINKS


def test_a_link_without_a_host_identity_is_refused() -> None:
    port, _, _, events = _port()
    link = _link(WEB)
    port.on_ready(link)
    assert _aborted(link) == "refused: no host identity of our trust domain"
    assert list(events) == [HandshakeFailed("mesh", ADDRESS, HandshakeFailure.WRONG_IDENTITY)]


@pytest.mark.parametrize(
    ("mtls", "active", "expected", "connected"),
    [
        pytest.param(
            "strict",
            0,
            ConnectionRefused("inbound", "127.0.0.1:1", "plaintext", "config/mesh.mtls"),
            [],
            id="strict",
        ),
        pytest.param(
            "permissive",
            MAX_CONNS - 1,
            ConnectionOpened("inbound", "unauthenticated", "api", "config/mesh.mtls"),
            [8080],
            id="permissive",
        ),
        pytest.param(
            "permissive",
            MAX_CONNS,
            ConnectionRefused("inbound", "127.0.0.1:1", "limit", "config/limits.max_connections"),
            [],
            id="permissive-max_connections",
        ),
    ],
)
def test_plaintext(mtls: str, active: int, expected: Event, connected: list[int]) -> None:
    rt, events = _runtime(mtls)
    rt.active = active
    connects = Connects()
    transport = AppTransport(RedirectedSocket(("10.77.0.2", 8080)))
    PlainInbound(rt, connects).connection_made(transport)
    assert list(events) == [expected]
    assert connects.ports == connected
    assert transport.aborted == (not connected)
    assert rt.active == active + len(connected)
