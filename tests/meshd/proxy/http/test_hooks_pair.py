"""Request hooks carried out by two real meshd: a header added on A, paths denied on A and B.

A (outbound) answers 403 to paths under ``/private`` and adds ``X-Mesh-Test:
a`` to the others for ``web``; B (inbound) answers 403 to paths under
``/admin`` itself. Both run ``hooked_meshd.py``,
which installs the hooks through ``Runtime.http_rules``: the stream carries
out the exchange's actions on both sides, over real sockets and a real link.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.meshd.harness import Meshd, MeshNet
from tests.meshd.proxy.http.hooked_meshd import DENIED
from tests.meshd.proxy.http.recording import RecordingApp

LAUNCHER = str(Path(__file__).with_name("hooked_meshd.py"))


def _hooked(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, LAUNCHER, json.dumps(spec)]


@pytest.fixture
def hooked(net: MeshNet) -> Iterator[tuple[Meshd, Meshd, RecordingApp]]:
    app = RecordingApp()
    try:
        inbound = _hooked({"inbound": {"web": [{"deny": "/admin"}]}})
        b = net.start("b", services={"web": app.port}, command=inbound)
        net.add_service("web", app.port, "b", b.ports["mesh"])
        outbound = _hooked(
            {"outbound": {"web": [{"deny": "/private"}, {"add": ["X-Mesh-Test", "a"]}]}}
        )
        a = net.start("a", upstreams={"web": 0}, command=outbound)
        yield a, b, app
    finally:
        net.stop_all()
        app.close()


@pytest.fixture
def kept(net: MeshNet) -> Iterator[tuple[Meshd, RecordingApp]]:
    """A to B, B answering 403 to /admin and keeping the connection alive."""
    app = RecordingApp()
    try:
        inbound = _hooked({"inbound": {"web": [{"deny": "/admin", "keep": True}]}})
        b = net.start("b", services={"web": app.port}, command=inbound)
        net.add_service("web", app.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"web": 0})
        yield a, app
    finally:
        net.stop_all()
        app.close()


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, bool]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read(), response.will_close


def test_a_header_added_on_the_outbound_side_reaches_the_app(
    net: MeshNet, hooked: tuple[Meshd, Meshd, RecordingApp]
) -> None:
    a, _, app = hooked
    conn = http.client.HTTPConnection("127.0.0.1", a.ports["upstream:web"], timeout=10)
    try:
        assert [_get(conn, "/one"), _get(conn, "/two")] == [
            (200, b"hello /one", False),
            (200, b"hello /two", False),
        ]
    finally:
        conn.close()
    assert app.paths() == ["/one", "/two"]
    assert app.tags() == [["a"], ["a"]]  # once each, on the keep-alive connection's second too
    observed = net.metric_sum(a, "meshd_requests_total", direction="outbound", destination="web")
    assert observed == 2  # the hooked exchange still reports each request


def test_a_path_denied_on_the_inbound_side_is_answered_there(
    hooked: tuple[Meshd, Meshd, RecordingApp],
) -> None:
    a, _, app = hooked
    conn = http.client.HTTPConnection("127.0.0.1", a.ports["upstream:web"], timeout=10)
    try:
        assert _get(conn, "/before") == (200, b"hello /before", False)
        assert _get(conn, "/admin/users") == (403, DENIED, True)
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", a.ports["upstream:web"], timeout=10)
    try:
        assert _get(conn, "/after") == (200, b"hello /after", False)
    finally:
        conn.close()
    assert app.paths() == ["/before", "/after"]  # the app never saw the denied request


def test_pipelined_requests_are_each_tagged_and_the_denied_one_answered_in_turn(
    hooked: tuple[Meshd, Meshd, RecordingApp],
) -> None:
    a, _, app = hooked
    requests = b"".join(
        b"GET %s HTTP/1.1\r\nHost: web\r\n\r\n" % path
        for path in (b"/one", b"/two", b"/admin", b"/three")
    )
    with socket.create_connection(("127.0.0.1", a.ports["upstream:web"]), timeout=10) as s:
        s.sendall(requests)
        received = b"".join(iter(lambda: s.recv(65536), b""))  # B closes after its answer
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"200", b"200", b"403"], received
    assert received.endswith(DENIED)
    assert app.paths() == ["/one", "/two"]
    assert app.tags() == [["a"], ["a"]]


def test_a_path_denied_on_the_outbound_side_never_leaves_the_host(
    net: MeshNet, hooked: tuple[Meshd, Meshd, RecordingApp]
) -> None:
    a, b, app = hooked
    conn = http.client.HTTPConnection("127.0.0.1", a.ports["upstream:web"], timeout=10)
    try:
        assert _get(conn, "/first") == (200, b"hello /first", False)
        assert _get(conn, "/private/x") == (403, DENIED, True)
    finally:
        conn.close()
    assert app.paths() == ["/first"]
    answered = {"direction": "outbound", "destination": "web", "status_class": "4xx"}
    assert net.metric_sum(a, "meshd_requests_total", **answered) == 1  # A answered it
    assert net.metric_sum(b, "meshd_requests_total", status_class="4xx") == 0  # B never saw it


def test_a_request_that_cannot_be_followed_ends_the_connection(
    hooked: tuple[Meshd, Meshd, RecordingApp],
) -> None:
    """A chunked body the parser refuses: its head went on, nothing after it; no answer."""
    a, _, _ = hooked
    bad = b"GET /bad HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"
    with socket.create_connection(("127.0.0.1", a.ports["upstream:web"]), timeout=10) as s:
        s.sendall(bad)
        try:
            received = s.recv(65536)
        except ConnectionResetError:
            received = b""
    assert received == b""  # not the app's answer to the head that went on: A cut it off


def test_a_denial_that_keeps_the_connection_lets_the_next_request_through(
    kept: tuple[Meshd, RecordingApp],
) -> None:
    a, app = kept
    conn = http.client.HTTPConnection("127.0.0.1", a.ports["upstream:web"], timeout=10)
    try:
        conn.request("POST", "/admin/x", body=b"GET /smuggled HTTP/1.1\r\n\r\n")
        response = conn.getresponse()
        assert (response.status, response.read(), response.will_close) == (403, DENIED, False)
        assert _get(conn, "/after") == (200, b"hello /after", False)  # the same connection
        assert _get(conn, "/admin") == (403, DENIED, False)
        assert _get(conn, "/last") == (200, b"hello /last", False)
    finally:
        conn.close()
    assert app.paths() == ["/after", "/last"]  # neither the denied requests nor their bodies
