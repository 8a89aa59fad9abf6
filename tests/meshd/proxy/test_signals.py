"""Golden signals on both sides of a real pair A -> B: /metrics and /traffic agree, exactly.

A client sends known requests through A's upstream listener to B's status app
(each answers the status its path names); A counts them outbound, B inbound,
each once, with the same source and destination names. Opaque TCP is counted
as connections and bytes, never as requests; a service under a policy reports
its requests from the exchange that judges them (403s it answers included).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from meshd.telemetry.metrics import REQUEST_BUCKETS
from meshd.traffic import HttpEdge, TcpEdge, Traffic
from tests.meshd.harness import EchoServer, Meshd, MeshNet, QuietHandler, ServedApp
from tests.meshd.tlsfixtures import TD
from tests.poll import until

SOURCE = f"spiffe://{TD}/host/a"  # what A's connections claim: A runs no service
# status -> how many requests get it, on two kept-alive connections
PLAN = {200: 7, 201: 1, 404: 2, 500: 3, 503: 1}
CLASSES = {"2xx": 8, "4xx": 2, "5xx": 4}
OPAQUE = bytes(range(256)) * 40  # no request line: a plain relay


class StatusApp(ServedApp):
    """Keep-alive HTTP/1.1 answering ``GET /status/NNN`` with NNN (and a short body)."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                status = int(self.path.rsplit("/", 1)[1])
                body = f"status {status}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


@dataclass
class Setup:
    net: MeshNet
    a: Meshd
    b: Meshd
    app: StatusApp
    echo: EchoServer

    def traffic(self, meshd: Meshd) -> Traffic:
        status, text = self.net.admin(meshd, "GET", "/traffic")
        assert status == 200, text
        return Traffic.from_json(json.loads(text))

    def metrics(self, meshd: Meshd) -> dict[str, float]:
        status, text = self.net.admin(meshd, "GET", "/metrics")
        assert status == 200, text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("meshd_")
        }


@pytest.fixture
def setup(net: MeshNet) -> Iterator[Setup]:
    app, echo = StatusApp(), EchoServer()
    try:
        b = net.start("b", services={"api": app.port, "db": echo.port})
        net.add_service("api", app.port, "b", b.ports["mesh"])
        net.add_service("db", echo.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"api": 0, "db": 0})
        yield Setup(net, a, b, app, echo)
    finally:
        net.stop_all()
        app.close()
        echo.close()


def drive(a: Meshd, plan: dict[int, int], prefix: str = "/status") -> None:
    """Send ``plan``'s requests, alternating over two kept-alive connections."""
    conns = [
        http.client.HTTPConnection("127.0.0.1", a.ports["upstream:api"], timeout=10)
        for _ in range(2)
    ]
    try:
        n = 0
        for status, count in plan.items():
            for _ in range(count):
                conn = conns[n % 2]
                conn.request("GET", f"{prefix}/{status}")
                response = conn.getresponse()
                response.read()
                assert response.status == status
                n += 1
    finally:
        for conn in conns:
            conn.close()


def http_edge(traffic: Traffic, direction: str, destination: str) -> HttpEdge:
    found = [e for e in traffic.http if (e.direction, e.destination) == (direction, destination)]
    assert len(found) == 1, traffic.http
    return found[0]


def tcp_edge(traffic: Traffic, direction: str, destination: str) -> TcpEdge:
    found = [e for e in traffic.tcp if (e.direction, e.destination) == (direction, destination)]
    assert len(found) == 1, traffic.tcp
    return found[0]


def closed(setup: Setup, meshd: Meshd, direction: str, destination: str) -> None:
    """Wait until ``meshd`` counts no connection to ``destination`` open (closes come later)."""
    until(
        lambda: tcp_edge(setup.traffic(meshd), direction, destination).open == 0,
        5,
        f"{meshd.name}'s {direction} connections to {destination} closed",
    )


def check_side(setup: Setup, meshd: Meshd, direction: str, classes: dict[str, int]) -> None:
    """One side's /traffic and /metrics say ``classes`` for A -> api, to the request."""
    traffic = setup.traffic(meshd)
    samples = setup.metrics(meshd)
    edge = http_edge(traffic, direction, "api")
    assert (edge.source, edge.classes) == (SOURCE, classes)
    total = sum(classes.values())
    assert sum(edge.latency) == total  # each request in exactly one bucket
    assert len(edge.latency) == len(REQUEST_BUCKETS) + 1
    assert traffic.buckets == tuple(float(b) for b in REQUEST_BUCKETS)
    labels = f'direction="{direction}",source="{SOURCE}",destination="api"'
    for cls, count in classes.items():
        assert samples[f'meshd_requests_total{{{labels},status_class="{cls}"}}'] == count
    assert samples[f"meshd_request_duration_seconds_count{{{labels}}}"] == total
    assert samples[f'meshd_request_duration_seconds_bucket{{{labels},le="+Inf"}}'] == total
    assert 0 < edge.latency_sum == samples[f"meshd_request_duration_seconds_sum{{{labels}}}"]


def test_requests_are_counted_once_outbound_on_a_and_once_inbound_on_b(setup: Setup) -> None:
    drive(setup.a, PLAN)
    for meshd, direction in ((setup.a, "outbound"), (setup.b, "inbound")):
        check_side(setup, meshd, direction, CLASSES)
        wrong = "inbound" if direction == "outbound" else "outbound"
        assert not [e for e in setup.traffic(meshd).http if e.direction == wrong]
    # both connections closed: counted as TCP on both sides, open again 0
    for meshd, direction in ((setup.a, "outbound"), (setup.b, "inbound")):
        closed(setup, meshd, direction, "api")
        tcp = tcp_edge(setup.traffic(meshd), direction, "api")
        assert (tcp.source, tcp.opened) == (SOURCE, 2)
        assert tcp.bytes_in > 0 and tcp.bytes_out > 0


def test_opaque_tcp_is_counted_as_connections_and_bytes_not_requests(setup: Setup) -> None:
    with socket.create_connection(("127.0.0.1", setup.a.ports["upstream:db"]), timeout=10) as s:
        s.sendall(OPAQUE)
        got = b""
        while len(got) < len(OPAQUE):
            got += s.recv(65536)
        assert got == OPAQUE
        for meshd, direction in ((setup.a, "outbound"), (setup.b, "inbound")):
            tcp = tcp_edge(setup.traffic(meshd), direction, "db")
            assert (tcp.source, tcp.opened, tcp.open) == (SOURCE, 1, 1)
            labels = f'direction="{direction}",source="{SOURCE}",destination="db"'
            samples = setup.metrics(meshd)
            assert samples[f"meshd_active_connections{{{labels}}}"] == 1
            assert samples[f"meshd_connections_opened_total{{{labels}}}"] == 1
    for meshd, direction in ((setup.a, "outbound"), (setup.b, "inbound")):
        closed(setup, meshd, direction, "db")
        tcp = tcp_edge(setup.traffic(meshd), direction, "db")
        assert (tcp.opened, tcp.bytes_in, tcp.bytes_out) == (1, len(OPAQUE), len(OPAQUE))
        assert not setup.traffic(meshd).http  # no request was counted
        assert "meshd_requests_total{" not in "\n".join(setup.metrics(meshd))


def policy(app_port: int) -> dict[str, Any]:
    """api: A may GET /status/**, nothing else (403 answered by B)."""
    return {
        "version": 1,
        "name": "t",
        "mtls": {"mode": "strict"},
        "authz": {"default": "deny"},
        "allow": [
            {"name": "a-to-api", "from": ["host/a"], "to": "api", "ports": [app_port],
             "methods": ["GET"], "paths": ["/status/**"]},
            {"name": "a-to-db", "from": ["host/a"], "to": "db"},
        ],
    }  # fmt: skip


def test_a_service_under_policy_reports_its_requests_from_its_exchange(setup: Setup) -> None:
    body = {"version": 1, "documents": [policy(setup.app.port)]}
    assert setup.net.admin(setup.b, "PUT", "/policy", body)[0] == 200
    drive(setup.a, PLAN)
    drive(setup.a, {403: 3}, prefix="/denied")  # answered by B's exchange, not the app
    classes = {**CLASSES, "4xx": CLASSES["4xx"] + 3}
    check_side(setup, setup.b, "inbound", classes)
    check_side(setup, setup.a, "outbound", classes)
    decisions = setup.net.metric_sum(setup.b, "meshd_authz_decisions_total", decision="deny")
    assert decisions == 3


def test_requests_are_counted_as_they_complete(setup: Setup) -> None:
    """/traffic is read live: counts grow between two snapshots, ``started`` stays."""
    before = setup.traffic(setup.b)
    drive(setup.a, {200: 2})
    middle = setup.traffic(setup.b)
    drive(setup.a, {500: 1})
    after = setup.traffic(setup.b)
    assert before.started == middle.started == after.started
    assert before.taken < middle.taken < after.taken <= time.time()
    assert http_edge(middle, "inbound", "api").classes == {"2xx": 2}
    assert http_edge(after, "inbound", "api").classes == {"2xx": 2, "5xx": 1}


def bytes_flows(setup: Setup, meshd: Meshd, direction: str) -> tuple[int, int, int, int]:
    """db's bytes on ``meshd``: /traffic's bytes_in and bytes_out, /metrics' sent, received."""
    tcp = tcp_edge(setup.traffic(meshd), direction, "db")
    samples = setup.metrics(meshd)
    labels = f'direction="{direction}",source="{SOURCE}",destination="db"'
    name = "meshd_connection_bytes_total"
    sent = samples.get(f'{name}{{{labels},flow="sent"}}', 0)
    received = samples.get(f'{name}{{{labels},flow="received"}}', 0)
    return tcp.bytes_in, tcp.bytes_out, int(sent), int(received)


def test_bytes_of_a_connection_are_counted_while_it_stays_open(setup: Setup) -> None:
    """A long connection's bytes show as they pass (``top``'s bytes/s), not when it closes;
    once closed, each byte is still counted once."""
    sides = ((setup.a, "outbound"), (setup.b, "inbound"))
    with socket.create_connection(("127.0.0.1", setup.a.ports["upstream:db"]), timeout=10) as s:
        total = 0
        for size in (len(OPAQUE), 3 * len(OPAQUE)):
            s.sendall(OPAQUE * (size // len(OPAQUE)))
            got = 0
            while got < size:
                got += len(s.recv(65536))
            total += size
            for meshd, direction in sides:  # the echo came back: both sides moved it all
                assert bytes_flows(setup, meshd, direction) == (total,) * 4, meshd.name
                assert tcp_edge(setup.traffic(meshd), direction, "db").open == 1
    for meshd, direction in sides:
        closed(setup, meshd, direction, "db")
        assert bytes_flows(setup, meshd, direction) == (total,) * 4, meshd.name
