"""No link outlives its certificates, and none carries a revoked peer: real meshd processes.

A keep-alive HTTP client sends requests in a tight loop while meshd's
certificate is swapped again and again (new files, SIGHUP): every request
succeeds, and the server sees its connection closed and reopened as the
streams move to fresh links. An opaque TCP stream is cut when a certificate
of its link expires, and no link stays up past that. A registry that revokes
a peer (by SPIFFE ID or by serial) tears its links down at once, on either
side, and refuses the next one. A dial after a swap presents the new
certificate (in process, against a TLS server that records it). A trust
bundle pushed to one side that drops the peer's root ends every link with it
within the grace; one that keeps it moves the streams without a failed request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography import x509

from meshd.config import MeshdConfig
from meshd.proxy.link import SWAP_GRACE
from meshd.proxy.pool import LinkPool
from meshd.registry import Endpoint, serial_key
from meshd.runtime import Runtime
from meshd.tls.context import ALPN_LINK_2, TlsMaterial, mutual_context
from tests.meshd.harness import (
    EchoServer,
    Meshd,
    MeshNet,
    QuietHandler,
    ServedApp,
    admin_call,
)
from tests.meshd.tlsfixtures import TD, Identity, TestPki, joint_bundle, not_after
from tests.poll import until

RETIRED = "meshd_links_retired_total"


class CountingApp(ServedApp):
    """Keep-alive HTTP/1.1 answering "ok"; counts the connections it was given and lost."""

    def __init__(self) -> None:
        self.opened = self.closed = 0
        lock, app = threading.Lock(), self

        class Handler(QuietHandler):
            def setup(self) -> None:
                super().setup()
                with lock:
                    app.opened += 1

            def finish(self) -> None:
                super().finish()
                with lock:
                    app.closed += 1

            def do_GET(self) -> None:
                self.reply(b"ok")

        super().__init__(Handler)


def serial(identity: Identity) -> str:
    """As ``ssl``'s getpeercert spells it (and the registry's revocations)."""
    cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    return format(cert.serial_number, "X")


def links_in(net: MeshNet, meshd: Meshd) -> int:
    """The links ``meshd`` accepted (asked without checking its certificate: it may be expired)."""
    ctx = net.operator_context()
    ctx.verify_mode = ssl.CERT_NONE
    status, text = admin_call(("127.0.0.1", meshd.ports["admin"]), ctx, "GET", "/stats", None)
    assert status == 200, text
    return len(json.loads(text)["links_in"])


def renew(net: MeshNet, meshd: Meshd, identity: Identity, lifetime: float) -> None:
    """meshd's certificate swapped: a fresh one for the same key, in its files, then SIGHUP."""
    net.pki.reissue(identity, identity.cert.stem, dt.timedelta(seconds=lifetime))
    meshd.proc.send_signal(signal.SIGHUP)


# --- renewal under load -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("renewing", "reason"),
    [("a", "renewed"), ("b", "goaway")],
    ids=["the dialler's (retires)", "the acceptor's (GOAWAY)"],
)
def test_keep_alive_requests_survive_renewals_with_zero_failures(
    net: MeshNet, renewing: str, reason: str
) -> None:
    app = CountingApp()
    try:
        ident = {"a": net.pki.issue("a", "host/a"), "b": net.pki.issue("b", "host/b", "svc/web")}
        b = net.start("b", services={"web": app.port}, identity=ident["b"])
        net.add_service("web", app.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"web": 0}, identity=ident["a"])
        results: Counter[str] = Counter()
        stop = threading.Event()
        client = threading.Thread(target=_load, args=(a.ports["upstream:web"], stop, results))
        client.start()
        try:
            until(lambda: results["ok"] > 20, 10, "the first requests")
            for n in range(1, 4):
                time.sleep(1.1)  # a new not_after, to the second
                renew(net, b if renewing == "b" else a, ident[renewing], 60)
                _renewed(net, a, reason, app, n)
            time.sleep(0.5)
        finally:
            stop.set()
            client.join(30)
        assert set(results) == {"ok"}, results
        assert results["ok"] > 100
        assert app.opened >= 4 and app.closed >= 3  # closed and reopened under the client
    finally:
        app.close()


def test_keep_alive_requests_move_off_a_link_before_its_certificate_expires(
    net: MeshNet,
) -> None:
    """B's certificate is short: A's link retires before it expires, under load, and the
    fresh link carries the client's requests; then B renews and the next link lasts."""
    app = CountingApp()
    try:
        short = net.pki.issue("b", "host/b", "svc/web", lifetime=dt.timedelta(seconds=16))
        b = net.start("b", services={"web": app.port}, identity=short)
        net.add_service("web", app.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"web": 0})
        results: Counter[str] = Counter()
        stop = threading.Event()
        client = threading.Thread(target=_load, args=(a.ports["upstream:web"], stop, results))
        client.start()
        try:
            expiry = not_after(short).timestamp()
            until(lambda: net.metric(a, RETIRED, reason="expiring") >= 1, 20, "retirement")
            retired = time.time()
            until(lambda: app.opened >= 2, 5, "the stream's move")
            renew(net, b, short, 60)
            until(lambda: net.metric(a, RETIRED, reason="goaway") >= 1, 5, "the renewal")
            time.sleep(max(0.0, expiry + 1 - time.time()))  # past the first certificate
        finally:
            stop.set()
            client.join(30)
        assert retired < expiry - 1
        assert set(results) == {"ok"}, results
        assert app.opened >= 3 and app.closed >= 2
    finally:
        app.close()


def _renewed(net: MeshNet, a: Meshd, reason: str, app: CountingApp, n: int) -> None:
    """A's link retired for the ``n``th time, and the client's stream moved to a fresh one."""
    until(lambda: net.metric(a, RETIRED, reason=reason) >= n, 10, f"retirement {n}")
    until(lambda: app.opened > n, 10, f"the stream's move {n}")


def _load(port: int, stop: threading.Event, results: Counter[str]) -> None:
    """One keep-alive connection, requests in a tight loop; a failure reconnects."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read()
            results["ok" if (response.status, body) == (200, b"ok") else "wrong answer"] += 1
        except (OSError, http.client.HTTPException) as e:
            results[f"{type(e).__name__}: {e}"] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


# --- expiry -------------------------------------------------------------------------------
@pytest.mark.parametrize("short", ["a", "b"], ids=["ours (dialler's)", "the peer's"])
def test_an_opaque_stream_is_cut_when_a_certificate_of_its_link_expires(
    net: MeshNet, short: str
) -> None:
    echo = EchoServer()
    try:
        ids = {"a": ("host/a",), "b": ("host/b", "svc/echo")}[short]
        ident = net.pki.issue(short, *ids, lifetime=dt.timedelta(seconds=10))
        expiry = not_after(ident).timestamp()
        b = net.start("b", services={"echo": echo.port}, identity=ident if short == "b" else None)
        net.add_service("echo", echo.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"echo": 0}, identity=ident if short == "a" else None)
        with socket.create_connection(("127.0.0.1", a.ports["upstream:echo"]), timeout=5) as s:
            cut = _echo_until_cut(s, expiry + 5)
        assert expiry - 1.5 <= cut <= expiry + 1.5, (cut - expiry, b.log_text())
        until(lambda: links_in(net, b) == 0, max(0.1, expiry + 1.5 - time.time()), "no link")
    finally:
        echo.close()


def _echo_until_cut(sock: socket.socket, deadline: float) -> float:
    """Echo a byte every 0.1 s until the connection ends; when it did."""
    while time.time() < deadline:
        try:
            sock.sendall(b"x")
            if sock.recv(16) != b"x":
                return time.time()
        except OSError:
            return time.time()
        time.sleep(0.1)
    raise AssertionError("the stream was not cut by the deadline")


# --- revocation -----------------------------------------------------------------------------
@pytest.mark.parametrize("by", ["id", "serial"])
@pytest.mark.parametrize("side", ["b", "a"], ids=["accepting side", "dialling side"])
def test_a_revoked_peer_is_torn_down_and_refused(net: MeshNet, side: str, by: str) -> None:
    echo = EchoServer()
    try:
        ident = {"a": net.pki.issue("a", "host/a"), "b": net.pki.issue("b", "host/b", "svc/echo")}
        b = net.start("b", services={"echo": echo.port}, identity=ident["b"])
        net.add_service("echo", echo.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"echo": 0}, identity=ident["a"])
        meshd, peer = (b, "a") if side == "b" else (a, "b")
        with socket.create_connection(("127.0.0.1", a.ports["upstream:echo"]), timeout=5) as s:
            s.sendall(b"x")
            assert s.recv(16) == b"x"
            entry: dict[str, Any] = {"host": peer, "until": int(time.time()) + 3600}
            entry["ids" if by == "id" else "serials"] = (
                [f"spiffe://{TD}/host/{peer}"] if by == "id" else [serial(ident[peer])]
            )
            net.registry["revoked"] = [entry]
            net.registry["version"] += 1
            net.write_registry()
            swapped = time.time()
            meshd.proc.send_signal(signal.SIGHUP)
            cut = _echo_until_cut(s, swapped + 5)
        assert cut - swapped < 1.5, meshd.log_text()  # a reload's own time, then at once
        assert net.metric(meshd, RETIRED, reason="revoked") >= 1
        with socket.create_connection(("127.0.0.1", a.ports["upstream:echo"]), timeout=5) as s:
            s.settimeout(5)
            s.sendall(b"x")
            assert s.recv(16) == b""  # refused: no new link
        assert links_in(net, b) == 0
        refused = "meshd_connections_refused_total"
        until(lambda: net.metric_sum(meshd, refused, reason="revoked") >= 1, 5, "counted")
    finally:
        echo.close()


# --- a swap of the trust bundle -------------------------------------------------------------
def _two_roots(
    net: MeshNet, tmp_path: Path, b_app: int, a_app: int
) -> tuple[TestPki, Meshd, Meshd]:
    """A holds a certificate of a second root, B one of the net's; both trust both roots.

    A dials B for "web" (``b_app``), B dials A for "back" (``a_app``). The operator is of
    the second root, so that A still answers it under a bundle without the net's root.
    """
    other = TestPki(tmp_path / "other")
    both = joint_bundle(tmp_path / "both.pem", net.pki, other)
    net.operator = replace(other.issue("bob", "operator/bob"), bundle=both)
    ident_b = replace(net.pki.issue("b", "host/b", "svc/web"), bundle=both)
    b = net.start("b", services={"web": b_app}, upstreams={"back": 0}, identity=ident_b)
    net.add_service("web", b_app, "b", b.ports["mesh"])
    ident_a = replace(other.issue("a", "host/a", "svc/back"), bundle=both)
    a = net.start("a", services={"back": a_app}, upstreams={"web": 0}, identity=ident_a)
    net.add_service("back", a_app, "a", a.ports["mesh"])
    net.registry["version"] += 1
    for meshd in (a, b):
        status, text = net.admin(meshd, "PUT", "/registry", net.registry)
        assert status == 200, text
    return other, a, b


def _trust(net: MeshNet, meshd: Meshd, *pkis: TestPki) -> float:
    """Push a trust document of the roots of ``pkis`` to ``meshd``; when it was applied."""
    bundle = "".join(p.bundle.read_text() for p in pkis)
    status, text = net.admin(meshd, "PUT", "/trust", {"version": 1, "bundle_pem": bundle})
    assert status == 200, text
    return time.time()


def test_a_trust_swap_that_drops_a_peers_root_ends_its_links_within_the_grace(
    net: MeshNet, tmp_path: Path
) -> None:
    """Opaque streams both ways (A dialled one link, B the other) between A and B; A stops
    trusting B's root: neither link survives the grace, whatever the streams on it."""
    echo_a, echo_b = EchoServer(), EchoServer()
    try:
        other, a, b = _two_roots(net, tmp_path, echo_b.port, echo_a.port)
        out = socket.create_connection(("127.0.0.1", a.ports["upstream:web"]), timeout=5)
        back = socket.create_connection(("127.0.0.1", b.ports["upstream:back"]), timeout=5)
        with out, back:
            for s in (out, back):
                s.sendall(b"x")
                assert s.recv(16) == b"x"
            assert links_in(net, a) == links_in(net, b) == 1
            swapped = _trust(net, a, other)
            cuts = [_echo_until_cut(s, swapped + SWAP_GRACE + 5) - swapped for s in (out, back)]
        assert max(cuts) <= SWAP_GRACE + 1.5, (cuts, a.log_text())
        until(lambda: links_in(net, a) == links_in(net, b) == 0, 3, "no link left")
    finally:
        echo_a.close()
        echo_b.close()


def test_a_trust_swap_that_keeps_the_peers_root_moves_links_without_failed_requests(
    net: MeshNet, tmp_path: Path
) -> None:
    """Keep-alive clients both ways; A's trust bundle gains a root: the links made under the
    old bundle retire (A's dialled one) or hear GOAWAY (the one B dialled), every stream
    moves to a fresh link, and no request fails."""
    web, api = CountingApp(), CountingApp()
    try:
        other, a, b = _two_roots(net, tmp_path, web.port, api.port)
        results: dict[str, Counter[str]] = {"a": Counter(), "b": Counter()}
        stop = threading.Event()
        clients = [
            threading.Thread(target=_load, args=(a.ports["upstream:web"], stop, results["a"])),
            threading.Thread(target=_load, args=(b.ports["upstream:back"], stop, results["b"])),
        ]
        for client in clients:
            client.start()
        try:
            until(lambda: min(r["ok"] for r in results.values()) > 20, 10, "the first requests")
            _trust(net, a, net.pki, other, TestPki(tmp_path / "third"))
            until(lambda: net.metric(a, RETIRED, reason="renewed") >= 1, 5, "A's link retired")
            until(lambda: net.metric(b, RETIRED, reason="goaway") >= 1, 5, "B's link retired")
            until(lambda: web.opened >= 2 and api.opened >= 2, 5, "the streams' moves")
            until(lambda: links_in(net, a) == links_in(net, b) == 1, 5, "the old links closed")
            time.sleep(0.5)
        finally:
            stop.set()
            for client in clients:
                client.join(30)
        for side in results.values():
            assert set(side) == {"ok"}, results
    finally:
        web.close()
        api.close()


@pytest.mark.parametrize("rejoined", ["a", "b"], ids=["dialling peer", "accepting peer"])
def test_a_name_that_joined_again_links_only_with_its_certificates_since(
    net: MeshNet, rejoined: str
) -> None:
    """Its ID was revoked, then the name joined again 10 minutes ago (``before``): a
    certificate from before (a stolen copy) opens no link, on either side; the certificate
    it got since does."""
    echo = EchoServer()
    try:
        now = dt.datetime.now(dt.UTC)
        entry: dict[str, Any] = {"host": rejoined, "ids": [f"spiffe://{TD}/host/{rejoined}"]}
        entry |= {"until": int(time.time()) + 3600, "before": int(now.timestamp()) - 600}
        net.registry["revoked"] = [entry]
        paths = {"a": ("host/a",), "b": ("host/b", "svc/echo")}
        ident = {name: net.pki.issue(name, *p) for name, p in paths.items()}
        stolen = now - dt.timedelta(minutes=30)  # started 35 minutes ago: before the rejoin
        ident[rejoined] = net.pki.issue(rejoined, *paths[rejoined], now=stolen)
        b = net.start("b", services={"echo": echo.port}, identity=ident["b"])
        net.add_service("echo", echo.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"echo": 0}, identity=ident["a"])
        checker = a if rejoined == "b" else b
        with socket.create_connection(("127.0.0.1", a.ports["upstream:echo"]), timeout=5) as s:
            s.settimeout(5)
            s.sendall(b"x")
            assert s.recv(16) == b""  # refused: no link
        refused = "meshd_connections_refused_total"
        until(lambda: net.metric_sum(checker, refused, reason="revoked") >= 1, 5, "counted")
        # the certificate the rejoin got (started 5 minutes ago), then SIGHUP
        net.pki.issue(rejoined, *paths[rejoined])
        (a if rejoined == "a" else b).proc.send_signal(signal.SIGHUP)
        until(lambda: _echoes(a.ports["upstream:echo"]), 10, "a link with the new certificate")
    finally:
        echo.close()


def _echoes(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        s.sendall(b"x")
        return s.recv(16) == b"x"


# --- a swap and new links ---------------------------------------------------------------
@pytest.mark.parametrize("key", ["same key", "new key"])
def test_a_dial_after_a_certificate_swap_presents_the_new_certificate(
    tmp_path: Path, key: str
) -> None:
    pki = TestPki(tmp_path)
    ident, peer = pki.issue("a", "host/a"), pki.issue("b", "host/b")
    renewed = pki.reissue(ident, "a2") if key == "same key" else pki.issue("a3", "host/a")
    rt = Runtime.load(_config(ident))
    server_ctx = mutual_context(
        ssl.Purpose.CLIENT_AUTH, peer.cert, peer.key, peer.bundle, [ALPN_LINK_2]
    )
    presented: list[str] = []

    def connected(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        presented.append(writer.get_extra_info("ssl_object").getpeercert()["serialNumber"])

    async def main() -> None:
        server = await asyncio.start_server(connected, "127.0.0.1", 0, ssl=server_ctx)
        endpoint = Endpoint("b", "127.0.0.1", 80, server.sockets[0].getsockname()[1])
        try:
            async with anyio.create_task_group() as tg:
                rt.tg = tg
                pool = LinkPool(rt)
                await _dialled(pool, endpoint, presented, 1)
                rt.tls = TlsMaterial.load(renewed.cert, renewed.key, renewed.bundle)
                await _dialled(pool, endpoint, presented, 2)
                for link in (*pool.links.values(), *pool.retiring):
                    link.abort("the test is over")
        finally:
            server.close()

    anyio.run(main, backend="asyncio")
    assert [serial_key(s) for s in presented] == [serial(ident), serial(renewed)]


def test_a_dial_whose_handshake_straddles_a_swap_is_made_again(tmp_path: Path) -> None:
    """The swap lands while the peer reads our ClientHello: the link verified with the old
    material is dropped, and the dial made again presents the new certificate."""
    pki = TestPki(tmp_path)
    ident, peer = pki.issue("a", "host/a"), pki.issue("b", "host/b")
    renewed = pki.reissue(ident, "a2")
    rt = Runtime.load(_config(ident))
    server_ctx = mutual_context(
        ssl.Purpose.CLIENT_AUTH, peer.cert, peer.key, peer.bundle, [ALPN_LINK_2]
    )
    presented: list[str] = []

    def swap_now(*_: object) -> None:
        if not presented:  # the first handshake only
            rt.tls = TlsMaterial.load(renewed.cert, renewed.key, renewed.bundle)

    server_ctx.sni_callback = swap_now

    def connected(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        presented.append(writer.get_extra_info("ssl_object").getpeercert()["serialNumber"])

    async def main() -> None:
        server = await asyncio.start_server(connected, "127.0.0.1", 0, ssl=server_ctx)
        endpoint = Endpoint("b", "127.0.0.1", 80, server.sockets[0].getsockname()[1])
        try:
            async with anyio.create_task_group() as tg:
                rt.tg = tg
                pool = LinkPool(rt)
                pool.waiting[endpoint.link_key] = []  # as ``send`` leaves it while dialling
                await _dialled(pool, endpoint, presented, 2)
                with anyio.fail_after(5):
                    while not pool.links:
                        await anyio.sleep(0.01)
                assert [link.generation for link in pool.links.values()] == [rt.tls.generation]
                for link in (*pool.links.values(), *pool.retiring):
                    link.abort("the test is over")
        finally:
            server.close()

    anyio.run(main, backend="asyncio")
    assert [serial_key(s) for s in presented] == [serial(ident), serial(renewed)]


async def _dialled(pool: LinkPool, endpoint: Endpoint, presented: list[str], n: int) -> None:
    await pool._dial(endpoint)
    with anyio.fail_after(5):
        while len(presented) < n:
            await anyio.sleep(0.01)


def _config(ident: Identity) -> MeshdConfig:
    identity = {"host": "a", "trust_domain": TD, "cert": str(ident.cert)}
    identity |= {"key": str(ident.key), "bundle": str(ident.bundle)}
    return MeshdConfig.from_dict({"identity": identity}, "test")
