"""The live tap and the access log on a real pair A -> B (real meshd processes, real TLS).

A tap client on A's admin API sees the requests sent through A (path without
its query, status, direction), filtered by service; a fifth client gets a 503.
A tap client that stops reading while thousands of requests flow costs meshd
no memory and the traffic no speed: it loses lines, counted in
``meshd_tap_dropped_total``. The access log writes a JSON line per request
(and per TCP connection) with ``sample = 1.0``, and none with the default.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.meshd.harness import EchoServer, Meshd, MeshNet, QuietHandler, ServedApp
from tests.poll import until


class StatusApp(ServedApp):
    """Keep-alive HTTP/1.1 answering ``GET /.../NNN?...`` with status NNN."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            disable_nagle_algorithm = True  # head and body are two writes: no 40 ms wait

            def do_GET(self) -> None:
                status = int(self.path.split("?")[0].rsplit("/", 1)[1])
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        super().__init__(Handler)


@dataclass
class Pair:
    net: MeshNet
    a: Meshd
    b: Meshd


def start(net: MeshNet, app: StatusApp, echo: EchoServer, b_extra: str = "") -> Pair:
    b = net.start("b", services={"api": app.port, "db": echo.port}, extra=b_extra)
    net.add_service("api", app.port, "b", b.ports["mesh"])
    net.add_service("db", echo.port, "b", b.ports["mesh"])
    a = net.start("a", upstreams={"api": 0, "db": 0})
    return Pair(net, a, b)


@pytest.fixture
def apps() -> Iterator[tuple[StatusApp, EchoServer]]:
    app, echo = StatusApp(), EchoServer()
    try:
        yield app, echo
    finally:
        app.close()
        echo.close()


class Tap:
    """A GET /tap reader over operator mTLS."""

    def __init__(self, net: MeshNet, meshd: Meshd, query: str = "") -> None:
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", meshd.ports["admin"], timeout=10, context=net.operator_context()
        )
        self.conn.request("GET", "/tap" + query)
        self.sock = self.conn.sock  # the response reads it; the connection lets go (close)
        self.response = self.conn.getresponse()

    def read(self, n: int) -> list[dict[str, Any]]:
        lines = [json.loads(self.response.readline()) for _ in range(n)]
        return [line for line in lines if "dropped" not in line]

    def close(self) -> None:
        self.conn.close()


def send(
    a: Meshd, paths: list[str], service: str = "api", headers: dict[str, str] | None = None
) -> float:
    """GET each path on one kept-alive connection through A; the seconds it took."""
    conn = http.client.HTTPConnection("127.0.0.1", a.ports[f"upstream:{service}"], timeout=10)
    began = time.monotonic()
    try:
        for path in paths:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            response.read()
            assert response.status == int(path.split("?")[0].rsplit("/", 1)[1])
    finally:
        conn.close()
    return time.monotonic() - began


def test_a_tap_client_sees_the_requests(net: MeshNet, apps: tuple[StatusApp, EchoServer]) -> None:
    pair = start(net, *apps)
    everything, only_db = Tap(net, pair.a), Tap(net, pair.a, "?service=db")
    on_b = Tap(net, pair.b, "?service=api&sample=1")
    try:
        send(pair.a, ["/status/200?secret=1", "/status/404", "/status/503?x"])
        seen = everything.read(3)
        assert [(e["method"], e["path"], e["status"], e["direction"]) for e in seen] == [
            ("GET", "/status/200", 200, "outbound"),
            ("GET", "/status/404", 404, "outbound"),
            ("GET", "/status/503", 503, "outbound"),
        ]
        assert {e["destination"] for e in seen} == {"api"}
        assert all(e["latency_ms"] > 0 and e["bytes_in"] > 0 for e in seen)
        inbound = on_b.read(3)
        assert [(e["path"], e["direction"]) for e in inbound] == [
            ("/status/200", "inbound"),
            ("/status/404", "inbound"),
            ("/status/503", "inbound"),
        ]
        only_db.sock.settimeout(1.5)
        with pytest.raises((TimeoutError, socket.timeout)):
            only_db.response.readline()  # nothing to db: nothing for it
    finally:
        for tap in (everything, only_db, on_b):
            tap.close()


def test_at_most_four_tap_clients(net: MeshNet, apps: tuple[StatusApp, EchoServer]) -> None:
    pair = start(net, *apps)
    taps = [Tap(net, pair.a) for _ in range(4)]
    try:
        assert [t.response.status for t in taps] == [200] * 4
        status, text = net.admin(pair.a, "GET", "/tap")
        assert status == 503, text
        taps.pop().close()
        until(lambda: net.admin(pair.a, "GET", "/tap?sample=x")[0] == 400, 5, "a slot freed")
        fifth = Tap(net, pair.a)  # the closed one's slot is free again
        taps.append(fifth)
        assert fifth.response.status == 200
    finally:
        for tap in taps:
            tap.close()


def stuck_tap(net: MeshNet, meshd: Meshd) -> ssl.SSLSocket:
    """A tap client that reads the response head and then nothing: a tiny receive window."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", meshd.ports["admin"]))
    sock = net.operator_context().wrap_socket(raw)
    sock.sendall(b"GET /tap HTTP/1.1\r\nHost: meshd\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    return sock


def test_a_stuck_tap_client_loses_lines_not_memory_or_speed(
    net: MeshNet, apps: tuple[StatusApp, EchoServer]
) -> None:
    pair = start(net, *apps)
    long = "/x" * 100  # long paths: long lines, so the socket's buffers fill sooner
    paths = [f"{long}/status/200"] * 1000
    baseline = min(send(pair.a, paths) for _ in range(2))  # nobody listening
    sock = stuck_tap(net, pair.a)
    try:
        process = psutil.Process(pair.a.proc.pid)
        times = [send(pair.a, paths) for _ in range(2)]  # the socket's buffers fill
        rss = process.memory_info().rss
        for _ in range(10):  # until lines are lost: the kernel's buffers hold a few MB
            times.append(send(pair.a, paths))
            if net.metric(pair.a, "meshd_tap_dropped_total") > 0:
                break
        times += [send(pair.a, paths) for _ in range(2)]  # and on while they are
        grown = process.memory_info().rss - rss
        assert grown < 16 * 1024 * 1024, f"meshd grew by {grown} bytes for a stuck tap"
        # listening costs some CPU per request (paths noted): far from a stall
        assert max(times) < 3 * baseline + 1.0, (baseline, times)
        assert net.metric(pair.a, "meshd_tap_dropped_total") >= 1000
    finally:
        sock.close()


def access_lines(meshd: Meshd) -> list[dict[str, Any]]:
    return [
        json.loads(line.split(": ", 1)[1])
        for line in meshd.log_text().splitlines()
        if line.startswith("INFO meshd.access: ")
    ]


def test_the_access_log_samples_requests_and_connections(
    net: MeshNet, apps: tuple[StatusApp, EchoServer]
) -> None:
    pair = start(net, *apps, b_extra="[access_log]\nsample = 1.0")  # A: the default, 0
    send(pair.a, ["/status/201?q=1", "/status/500"], headers={"X-Request-Id": "req-\xe91"})
    with socket.create_connection(("127.0.0.1", pair.a.ports["upstream:db"]), timeout=5) as c:
        c.sendall(b"opaque\x00bytes")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(100) == b"opaque\x00bytes"

    def logged() -> list[dict[str, Any]]:
        return access_lines(pair.b)

    until(lambda: len([x for x in logged() if x["kind"] == "connection"]) >= 2, 10, "B's lines")
    requests = [x for x in logged() if x["kind"] == "request"]
    assert [(r["path"], r["status"], r["request_id"], r["direction"]) for r in requests] == [
        ("/status/201", 201, "req-\\xe91", "inbound"),
        ("/status/500", 500, "req-\\xe91", "inbound"),
    ]
    assert {r["destination_id"] for r in requests} == {f"spiffe://{net.pki.trust_domain}/svc/api"}
    db = [x for x in logged() if x["kind"] == "connection" and x["destination"] == "db"]
    assert len(db) == 1 and db[0]["bytes_in"] == len(b"opaque\x00bytes")
    assert access_lines(pair.a) == []  # sample 0: not a line


BODY = b"b" * 3000  # a response body in more than one read on the way


def fixed_response(status: int) -> bytes:
    """What ``SizedApp`` sends for ``status``: its exact bytes, head and body."""
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(BODY), BODY)


class SizedApp(ServedApp):
    """Keep-alive HTTP/1.1 answering ``GET /.../NNN?...`` with ``fixed_response(NNN)``."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.wfile.write(fixed_response(int(self.path.split("?")[0].rsplit("/", 1)[1])))

        super().__init__(Handler)


def judged_policy(app_port: int) -> dict[str, Any]:
    """api on B: A may GET /status/** (an L7 rule: B's exchange judges each request)."""
    return {
        "version": 1,
        "name": "t",
        "mtls": {"mode": "strict"},
        "authz": {"default": "deny"},
        "allow": [
            {"name": "a-to-api", "from": ["host/a"], "to": "api", "ports": [app_port],
             "methods": ["GET"], "paths": ["/status/**"]},
        ],
    }  # fmt: skip


def test_bytes_out_is_the_size_of_each_response(net: MeshNet) -> None:
    """The observer (A outbound, B inbound): each request's response bytes, head and body."""
    app, echo = SizedApp(), EchoServer()
    try:
        b = net.start("b", services={"api": app.port}, extra="[access_log]\nsample = 1.0")
        net.add_service("api", app.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"api": 0})
        on_a, on_b = Tap(net, a), Tap(net, b)
        try:
            send(a, ["/status/200?q", "/status/404"])
            sizes = [len(fixed_response(200)), len(fixed_response(404))]
            for tap in (on_a, on_b):
                seen = tap.read(2)
                assert [(e["path"], e["bytes_out"]) for e in seen] == [
                    ("/status/200", sizes[0]),
                    ("/status/404", sizes[1]),
                ]
        finally:
            on_a.close()
            on_b.close()
        until(lambda: len(access_lines(b)) >= 2, 10, "B's request lines")
        assert [x["bytes_out"] for x in access_lines(b) if x["kind"] == "request"] == sizes
    finally:
        app.close()
        echo.close()


def test_requests_judged_by_a_policy_reach_the_tap_and_the_access_log(net: MeshNet) -> None:
    """B's api has an L7 rule: its exchange (not the observer) follows the requests, and
    they show as observed ones do, the 403s it answers itself included."""
    app = SizedApp()
    try:
        b = net.start("b", services={"api": app.port}, extra="[access_log]\nsample = 1.0")
        net.add_service("api", app.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"api": 0})
        body = {"version": 1, "documents": [judged_policy(app.port)]}
        assert net.admin(b, "PUT", "/policy", body)[0] == 200
        tap = Tap(net, b, "?service=api")
        try:
            headers = {"X-Request-Id": "Judged-1"}
            send(a, ["/status/200?secret=1", "/status/503"], headers=headers)
            send(a, ["/denied/403?x=1"], headers=headers)
            seen = tap.read(3)
        finally:
            tap.close()
        expected = [
            ("GET", "/status/200", 200, "inbound", len(fixed_response(200))),
            ("GET", "/status/503", 503, "inbound", len(fixed_response(503))),
            ("GET", "/denied/403", 403, "inbound"),
        ]
        got = [(e["method"], e["path"], e["status"], e["direction"], e["bytes_out"]) for e in seen]
        assert got[:2] == expected[:2]
        assert got[2][:4] == expected[2] and got[2][4] > 0  # the answer B sent
        assert all(e["latency_ms"] > 0 for e in seen)
        head = len(b"GET /status/200?secret=1 HTTP/1.1\r\n")
        assert all(e["bytes_in"] > head for e in seen)
        until(lambda: len([x for x in access_lines(b) if x["kind"] == "request"]) >= 3, 10, "lines")
        requests = [x for x in access_lines(b) if x["kind"] == "request"]
        assert [(r["path"], r["status"], r["request_id"]) for r in requests] == [
            ("/status/200", 200, "Judged-1"),
            ("/status/503", 503, "Judged-1"),
            ("/denied/403", 403, "Judged-1"),
        ]
    finally:
        app.close()
