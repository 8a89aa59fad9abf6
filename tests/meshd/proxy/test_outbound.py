"""An app's outbound connection, in process: admitted by decide, counted, picked, or refused.

The decisions themselves are tested in tests/meshd/policy; these check what
OutboundConn does with them: what it publishes (the rule that decided rides
on the event), what it counts, where it sends the stream, what it aborts.
"""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest

from meshd.netfacts import SOCKADDR_IN
from meshd.proxy.outbound import OutboundConn
from meshd.proxy.pool import LinkPool, Waiting
from meshd.registry import Endpoint
from meshd.runtime import Runtime
from meshd.telemetry.events import ConnectionClosed, ConnectionOpened, ConnectionRefused, Event
from meshd.tls.context import TlsMaterial
from tests.meshd.policy.sample import B1, B2, MAX_CONNS, REGISTRY, config
from tests.meshd.proxy.test_frames import FakeTransport

SOURCE = "spiffe://t.mesh/host/b"
CLIENT = "127.0.0.1:1"  # FakeTransport's peer
OUTBOUND_PORT = 15001


class RedirectedSocket:
    """What original_dst reads from a socket that iptables redirected on its way to ``dst``."""

    family = socket.AF_INET

    def __init__(self, dst: tuple[str, int] | None) -> None:
        self.dst = dst or ("127.0.0.1", OUTBOUND_PORT)  # None: it was not redirected

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return SOCKADDR_IN.pack(self.dst[1], socket.inet_aton(self.dst[0]))

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", OUTBOUND_PORT)


class AppTransport(FakeTransport):
    def __init__(self, sock: RedirectedSocket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else super().get_extra_info(name, default)


class Pool(LinkPool):
    """Records what it is given to send instead of dialling."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.sent: list[tuple[Waiting, Endpoint]] = []

    def send(self, waiting: Waiting, endpoint: Endpoint) -> None:
        self.sent.append((waiting, endpoint))


def _connect(
    upstream: str | None, dst: tuple[str, int] | None, active: int = 0
) -> tuple[Runtime, Pool, OutboundConn, AppTransport, list[Event]]:
    rt = Runtime(config(), cast(TlsMaterial, None), REGISTRY)
    rt.active = active
    events = rt.bus.subscribe(16).queue
    pool = Pool(rt)
    conn = OutboundConn(rt, pool, SOURCE, upstream)
    transport = AppTransport(RedirectedSocket(dst))
    conn.connection_made(transport)
    return rt, pool, conn, transport, list(events)


@pytest.mark.parametrize(
    ("upstream", "dst", "endpoints", "target"),
    [
        pytest.param("api", None, {B1, B2}, "", id="upstream-listener"),
        pytest.param(None, ("10.255.0.2", 80), {B1, B2}, "10.255.0.2:80", id="vip"),
        pytest.param(None, ("10.77.0.12", 8080), {B2}, "10.77.0.12:8080", id="endpoint"),
    ],
)
def test_an_admitted_connection_is_counted_published_and_sent(
    upstream: str | None, dst: tuple[str, int] | None, endpoints: set[Endpoint], target: str
) -> None:
    rt, pool, conn, _, events = _connect(upstream, dst, MAX_CONNS - 1)
    assert events == [ConnectionOpened("outbound", SOURCE, "api", "registry/services")]
    assert rt.active == MAX_CONNS
    [(waiting, endpoint)] = pool.sent
    assert endpoint in endpoints and set(waiting.forward.endpoints) == endpoints
    assert (waiting.source, waiting.target) == (SOURCE, target)
    conn.stream.reset("the test is done")
    assert rt.active == MAX_CONNS - 1


@pytest.mark.parametrize(
    ("upstream", "dst", "active", "code", "rule"),
    [
        pytest.param("api", None, MAX_CONNS, "limit", "config/limits.max_connections", id="full"),
        pytest.param(
            None,
            ("10.255.0.9", 80),
            0,
            "unknown_destination",
            "registry/services",
            id="unknown-destination",
        ),
        pytest.param(
            None, None, 0, "unknown_destination", "registry/services", id="not-redirected"
        ),
    ],
)
def test_a_refused_connection_is_aborted_published_and_not_counted(
    upstream: str | None, dst: tuple[str, int] | None, active: int, code: str, rule: str
) -> None:
    rt, pool, _, transport, events = _connect(upstream, dst, active)
    assert events == [ConnectionRefused("outbound", CLIENT, code, rule)]
    assert transport.aborted and pool.sent == []
    assert rt.active == active


def test_a_service_without_endpoints_ends_the_connection_it_admitted() -> None:
    rt, pool, _, _, events = _connect("lonely", None)
    assert pool.sent == []
    assert rt.active == 0
    opened, closed = events
    assert opened == ConnectionOpened("outbound", SOURCE, "lonely", "registry/services")
    assert isinstance(closed, ConnectionClosed)
    assert closed.error == "service lonely has no endpoints"
