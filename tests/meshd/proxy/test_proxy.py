"""Two real meshd processes on loopback: relaying, identity checks, refusals, metrics."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import json
import random
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.proxy.frames import HEADER, OPEN, RST, OpenRequest, frame
from tests.meshd.harness import EchoServer, HttpApp, Meshd, MeshNet
from tests.meshd.pairs import mesh_client
from tests.meshd.tlsfixtures import TestPki


@pytest.fixture
def apps() -> Iterator[tuple[HttpApp, EchoServer]]:
    web, echo = HttpApp("web"), EchoServer()
    yield web, echo
    web.close()
    echo.close()


def _pair(net: MeshNet, web: HttpApp, echo: EchoServer, **b_options: object) -> tuple[Meshd, Meshd]:
    b = net.start("b", services={"web": web.port, "echo": echo.port}, **b_options)  # type: ignore[arg-type]
    net.add_service("web", web.port, "b", b.ports["mesh"])
    net.add_service("echo", echo.port, "b", b.ports["mesh"])
    a = net.start("a", upstreams={"web": 0, "echo": 0})
    return a, b


def _get(port: int, path: str = "/", body: bytes | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST" if body is not None else "GET", path, body=body)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, text


def test_http_and_tcp_through_both_meshd(net: MeshNet, apps: tuple[HttpApp, EchoServer]) -> None:
    web, echo = apps
    a, b = _pair(net, web, echo)
    marker = b"marker-" + hashlib.sha256(str(time.time()).encode()).hexdigest().encode()
    status, text = _get(a.ports["upstream:web"], body=marker)
    assert status == 200
    assert text == f"web got {len(marker)} bytes from 127.0.0.1"
    assert web.seen[-1] == marker

    with socket.create_connection(("127.0.0.1", a.ports["upstream:echo"]), timeout=10) as s:
        payload = b"not http at all\x00\x01" * 1000
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close: the reply must still come back whole
        got = b"".join(iter(lambda: s.recv(65536), b""))
    assert got == payload

    assert (
        net.metric(
            a, "meshd_requests_total", direction="outbound", destination="web", status_class="2xx"
        )
        == 1
    )
    assert net.metric(b, "meshd_connections_total", direction="inbound", destination="echo") >= 1
    stats = net.admin(b, "GET", "/stats")[1]
    assert '"peer": "spiffe://t.mesh/host/a"' in stats


def test_bulk_transfer_keeps_every_byte(net: MeshNet, apps: tuple[HttpApp, EchoServer]) -> None:
    web, echo = apps
    a, _ = _pair(net, web, echo)
    # 16 MiB that never repeats, echoed back whole. The client reads nothing for a while,
    # so every socket and window on the way fills up: meshd's app sockets then queue
    # views of the link's read buffer, which must not be overwritten by the next read.
    blob = random.Random(7).randbytes(16 << 20)
    with socket.create_connection(("127.0.0.1", a.ports["upstream:echo"]), timeout=30) as s:

        def send() -> None:
            s.sendall(blob)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(1.0)
        digest, size = hashlib.sha256(), 0
        while chunk := s.recv(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        sender.join()
    assert size == len(blob)
    assert digest.digest() == hashlib.sha256(blob).digest()


def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    """Does the server drop us? (TLS 1.3: a client learns of it on its first read.)"""
    try:
        with _handshake(port, ctx) as tls:
            return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def _handshake(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        tls = ctx.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise
    try:
        tls.sendall(frame(7, 0))  # a PONG nobody asked for: harmless, forces the server's verdict
    except BaseException:
        tls.close()  # refused: do not leave the socket to the garbage collector
        raise
    return tls


@pytest.mark.parametrize("case", ["untrusted", "expired"])
def test_bad_peer_certificates_are_refused(
    net: MeshNet, apps: tuple[HttpApp, EchoServer], tmp_path: Path, case: str
) -> None:
    web, echo = apps
    _, b = _pair(net, web, echo)
    if case == "untrusted":
        intruder = TestPki(tmp_path / "other").issue("x", "host/x")
    else:
        intruder = net.pki.issue(
            "old",
            "host/old",
            lifetime=dt.timedelta(hours=1),
            now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3),
        )
    assert _refused(b.ports["mesh"], mesh_client(net, intruder))
    b.wait_log(rf"TLS handshake with 127\.0\.0\.1:\d+ failed \({case}\)")
    assert net.metric(b, "meshd_handshake_failures_total", listener="mesh", reason=case) == 1


def test_a_dialled_peer_with_a_ca_leaf_is_a_failed_dial(
    net: MeshNet, apps: tuple[HttpApp, EchoServer]
) -> None:
    """meshd checks the leaf of the peers it dials too, and keeps no link it refused."""
    web, _ = apps
    odd = net.pki.issue_odd("b-odd", "host/b", "svc/web", ca=True, key_usage=True)
    b = net.start("b", services={"web": web.port}, identity=odd)
    net.add_service("web", web.port, "b", b.ports["mesh"])
    a = net.start("a", upstreams={"web": 0})
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        _get(a.ports["upstream:web"])
    a.wait_log(r"cannot link to b \(.*\): peer refused: its certificate is a CA certificate")
    status, text = net.admin(a, "GET", "/stats")
    assert status == 200, text
    assert json.loads(text)["links_out"] == []
    assert web.seen == []


def test_plaintext_on_the_mesh_port_is_refused(
    net: MeshNet, apps: tuple[HttpApp, EchoServer]
) -> None:
    web, echo = apps
    _, b = _pair(net, web, echo)
    with socket.create_connection(("127.0.0.1", b.ports["mesh"]), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):  # closed, with or without a reset
            assert s.recv(100) == b""
    b.wait_log(r"failed \(not_tls\)")
    assert net.metric(b, "meshd_handshake_failures_total", listener="mesh", reason="not_tls") == 1


def test_plaintext_to_the_inbound_listener_is_refused_in_strict_mode(
    net: MeshNet, apps: tuple[HttpApp, EchoServer]
) -> None:
    web, echo = apps
    _, b = _pair(net, web, echo)
    with socket.create_connection(("127.0.0.1", b.ports["inbound"]), timeout=5) as s:
        # closed without an answer: a reset if "hello" arrived before the abort, else a plain EOF
        with contextlib.suppress(BrokenPipeError):
            s.sendall(b"hello")
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
    b.wait_log(r"refused plaintext connection from 127\.0\.0\.1:\d+")
    assert (
        net.metric(b, "meshd_connections_refused_total", listener="inbound", reason="plaintext")
        == 1
    )


def test_peer_without_the_service_identity_is_refused(
    net: MeshNet, apps: tuple[HttpApp, EchoServer]
) -> None:
    web, echo = apps
    # b's certificate names only the host, not the services it claims to serve
    bare = net.pki.issue("b-bare", "host/b")
    a, _ = _pair(net, web, echo, identity=bare)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        _get(a.ports["upstream:web"])
    a.wait_log(r"does not hold spiffe://t\.mesh/svc/web")
    assert (
        net.metric(
            a, "meshd_connections_refused_total", listener="outbound", reason="wrong_identity"
        )
        == 1
    )
    assert web.seen == []


def test_peer_with_another_host_identity_is_refused(
    net: MeshNet, apps: tuple[HttpApp, EchoServer]
) -> None:
    web, echo = apps
    impostor = net.pki.issue("c", "host/c", "svc/web", "svc/echo")
    # the registry says the endpoint is host "b"; the process there holds host/c
    c = net.start("c", services={"web": web.port, "echo": echo.port}, identity=impostor)
    net.add_service("web", web.port, "b", c.ports["mesh"])
    a = net.start("a", upstreams={"web": 0})
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        _get(a.ports["upstream:web"])
    a.wait_log(r"peer does not hold spiffe://t\.mesh/host/b")
    assert (
        net.metric(a, "meshd_handshake_failures_total", listener="link", reason="wrong_identity")
        == 1
    )
    assert web.seen == []


def test_source_identity_must_be_in_the_peer_certificate(
    net: MeshNet, apps: tuple[HttpApp, EchoServer]
) -> None:
    web, echo = apps
    _, b = _pair(net, web, echo)
    liar = net.pki.issue("liar", "host/liar")  # a real mesh host, claiming a service it is not
    tls = _handshake(b.ports["mesh"], mesh_client(net, liar))
    with tls:
        request = OpenRequest("echo", echo.port, "spiffe://t.mesh/svc/web")
        tls.sendall(frame(OPEN, 1, request.encode()))
        header = tls.recv(HEADER.size)
        kind, sid, _ = HEADER.unpack(header)
    assert (kind, sid) == (RST, 1)
    b.wait_log(
        r"refused stream from spiffe://t\.mesh/host/liar .*does not hold spiffe://t\.mesh/svc/web"
    )
    assert (
        net.metric(
            b,
            "meshd_connections_refused_total",
            listener="mesh",
            reason="source_not_in_certificate",
        )
        == 1
    )
    assert echo.received == []


def _tls_app(tmp_path: Path) -> tuple[socket.socket, threading.Thread, list[str]]:
    """An app that speaks TLS itself, with its own certificate from outside the mesh."""
    own = TestPki(tmp_path / "app-ca").issue("app", "svc/app")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(own.cert, own.key)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            seen.append(tls.recv(100).decode())
            tls.sendall(b"tls app says hi")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, seen


def test_tls_spoken_by_the_app_passes_untouched(net: MeshNet, tmp_path: Path) -> None:
    listener, thread, seen = _tls_app(tmp_path)
    port = listener.getsockname()[1]
    b = net.start("b", services={"secure": port})
    net.add_service("secure", port, "b", b.ports["mesh"])
    a = net.start("a", upstreams={"secure": 0})
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # the app's own PKI is none of the mesh's business
    raw = socket.create_connection(("127.0.0.1", a.ports["upstream:secure"]), timeout=10)
    with client.wrap_socket(raw) as tls:
        tls.sendall(b"hello app")
        assert tls.recv(100) == b"tls app says hi"
    thread.join(5)
    listener.close()
    assert seen == ["hello app"]


def test_sigterm_drains_in_flight_connections(
    net: MeshNet, apps: tuple[HttpApp, EchoServer]
) -> None:
    web, echo = apps
    a, _ = _pair(net, web, echo)
    with socket.create_connection(("127.0.0.1", a.ports["upstream:echo"]), timeout=10) as s:
        s.sendall(b"before")
        assert s.recv(100) == b"before"
        a.proc.send_signal(signal.SIGTERM)
        a.wait_log("received SIGTERM: draining")
        s.sendall(b"during the drain")  # the open connection keeps working
        assert s.recv(100) == b"during the drain"
        with pytest.raises(OSError):  # but no new connection is taken
            socket.create_connection(("127.0.0.1", a.ports["upstream:echo"]), timeout=2).close()
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
    assert a.proc.wait(10) == 0


def test_load_balancing_skips_a_failing_endpoint(net: MeshNet, tmp_path: Path) -> None:
    first, second = HttpApp("first"), HttpApp("second")
    try:
        b1 = net.start("b1", services={"web": first.port})
        b2 = net.start("b2", services={"web": second.port})
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # a port nobody listens on: that endpoint's meshd is down
        dead_port = dead.getsockname()[1]
        net.add_service("web", first.port, "b1", b1.ports["mesh"])
        net.add_service("web", second.port, "b2", b2.ports["mesh"])
        net.registry["services"]["web"]["endpoints"].append(
            {"host": "b3", "address": "127.0.0.1", "port": first.port, "mesh_port": dead_port}
        )
        a = net.start("a", upstreams={"web": 0})
        answers = [_get(a.ports["upstream:web"])[1].split()[0] for _ in range(30)]
        dead.close()
    finally:
        first.close()
        second.close()
    assert set(answers) == {"first", "second"}  # both live endpoints served
    a.wait_log(r"cannot link to b3 \(127\.0\.0\.1:\d+\)")  # the dead one was tried, then skipped
    assert (
        net.metric(a, "meshd_handshake_failures_total", listener="link", reason="connect_failed")
        >= 1
    )
