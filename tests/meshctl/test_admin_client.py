"""The admin client against real meshd processes on loopback, over real mutual TLS.

Failures are provoked for real too: a meshd with another CA's certificate, a
meshd answering for another host, a closed port, a port that never answers, a
plain HTTP server, and a TLS server that drips its answer past the deadline.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.ca import Authority, MeshCa
from meshctl.config import MeshConfig
from meshctl.workspace import init_workspace
from meshd.errors import ConnectError, ProvisionError
from meshd.stats import Stats
from tests.meshctl.topmesh import model, top_mesh
from tests.meshctl.trafficserver import TrafficServer
from tests.meshd.harness import HttpApp, Meshd, MeshNet
from tests.meshd.test_stats import WIRE
from tests.meshd.tlsfixtures import TD, Identity, TestPki


def client_for(identity: Identity, bundle: Path | None = None, timeout: float = 5.0) -> AdminClient:
    return AdminClient(identity.cert, identity.key, bundle or identity.bundle, TD, timeout)


def endpoint(meshd: Meshd, host: str | None = None) -> AdminEndpoint:
    return AdminEndpoint(host or meshd.name, "127.0.0.1", meshd.ports["admin"])


def registry(version: int, port: int = 8080) -> dict[str, Any]:
    return {"version": version, "services": {"api": {"vip": "10.255.0.2", "port": port}}}


def leaf(identity: Identity) -> x509.Certificate:
    return x509.load_pem_x509_certificates(identity.cert.read_bytes())[0]


def test_registry_round_trip_with_version(net: MeshNet) -> None:
    web1 = endpoint(net.start("web1"))
    client = client_for(net.operator)
    assert client.get_document(web1, "registry") == {"version": 1, "services": {}}
    assert client.put_document(web1, "registry", registry(2)) == {
        "status": "applied",
        "version": 2,
    }
    assert client.get_document(web1, "registry") == registry(2)
    again = client.put_document(web1, "registry", registry(2))
    assert again == {"status": "unchanged", "version": 2}
    stats = client.stats(web1)
    assert (stats.host, stats.registry_version) == ("web1", 2)
    assert client.get_document(web1, "policy") is None  # 404: nothing applied yet


def test_everything_a_running_meshd_puts_on_stats_reads_back(net: MeshNet) -> None:
    """No field of the real payload is lost, misnamed or mistyped by meshctl's reader."""
    web1 = endpoint(net.start("web1"))
    served = client_for(net.operator).request(web1, "GET", "/stats").body
    assert Stats.from_json(served).to_json() == served
    assert sorted(served) == sorted(WIRE)
    for nested in ("certificate", "reload", "events", "handshakes", "heap"):
        assert sorted(served[nested]) == sorted(WIRE[nested])


def test_older_version_is_refused_with_the_servers_message(net: MeshNet) -> None:
    web1 = endpoint(net.start("web1"))
    client = client_for(net.operator)
    client.put_document(web1, "registry", registry(3))
    with pytest.raises(ProvisionError) as older:
        client.put_document(web1, "registry", registry(2))
    assert older.value.message == (
        "web1: pushing registry failed (409): "
        "registry version 2 is older than the current version 3"
    )
    assert older.value.hint == "push a version above 3, or roll back on purpose"
    with pytest.raises(ProvisionError, match=r"\(409\): registry version 3 is already applied"):
        client.put_document(web1, "registry", registry(3, port=9090))
    assert client.get_document(web1, "registry") == registry(3)


def test_invalid_document_names_the_field(net: MeshNet) -> None:
    web1 = endpoint(net.start("web1"))
    with pytest.raises(ProvisionError, match=r"web1: pushing registry failed \(400\): .*port"):
        client_for(net.operator).put_document(web1, "registry", registry(2, port=70000))


def test_wrong_host_identity_is_refused_before_anything_is_sent(net: MeshNet) -> None:
    web1 = net.start("web1")
    client = client_for(net.operator)
    impostor = endpoint(web1, host="web2")  # the inventory says web2 lives there
    with pytest.raises(ConnectError) as info:
        client.put_document(impostor, "registry", registry(5))
    assert info.value.message == (
        f"meshd on web2 (127.0.0.1:{web1.ports['admin']}) presented "
        f"spiffe://{TD}/host/web1, expected spiffe://{TD}/host/web2"
    )
    assert info.value.hint and "hosts.toml" in info.value.hint
    assert client.get_document(endpoint(web1), "registry") == {"version": 1, "services": {}}


def test_untrusted_server_certificate(net: MeshNet, tmp_path: Path) -> None:
    other = TestPki(tmp_path / "other")  # same trust domain, another CA
    web1 = net.start("web1", identity=other.issue("web1", "host/web1"))
    client = client_for(net.operator)
    with pytest.raises(ConnectError, match="trust bundle does not accept") as info:
        client.stats(endpoint(web1))
    assert f"meshd on web1 (127.0.0.1:{web1.ports['admin']})" in info.value.message
    assert info.value.hint and str(net.operator.bundle) in info.value.hint


def test_operator_certificate_from_another_ca_is_refused(net: MeshNet, tmp_path: Path) -> None:
    web1 = net.start("web1")
    stranger = TestPki(tmp_path / "other").issue("mallory", "operator/mallory")
    client = client_for(stranger, bundle=net.pki.bundle)  # trusts the mesh, not trusted by it
    with pytest.raises(ConnectError) as info:
        client.stats(endpoint(web1))
    assert info.value.message == (
        f"meshd on web1 (127.0.0.1:{web1.ports['admin']}) closed the connection before answering"
    )
    assert info.value.hint and str(stranger.cert) in info.value.hint
    web1.wait_log(r"admin: TLS handshake with 127\.0\.0\.1:\d+ failed")


def test_non_operator_identity_gets_403(net: MeshNet) -> None:
    web1 = net.start("web1")
    client = client_for(net.pki.issue("web9", "host/web9"))
    with pytest.raises(ProvisionError, match=r"web1: reading stats failed \(403\): only operator"):
        client.stats(endpoint(web1))


@pytest.fixture
def operator(tmp_path: Path) -> Identity:
    """Client files for the tests that need no meshd."""
    return TestPki(tmp_path / "pki").issue("alice", "operator/alice")


def test_nothing_listening(operator: Identity) -> None:
    with socket.socket() as held:  # bound, never listening: refused, and nobody else gets it
        held.bind(("127.0.0.1", 0))
        port = int(held.getsockname()[1])
        with pytest.raises(ConnectError) as info:
            client_for(operator).stats(AdminEndpoint("web1", "127.0.0.1", port))
    assert info.value.message == f"meshd on web1 (127.0.0.1:{port}): connection refused"
    assert info.value.hint == "is meshd running? check systemctl status meshd on the host"


def test_silent_port_times_out(operator: Identity) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(
            ConnectError, match=r"web1 \(127\.0\.0\.1:\d+\): no answer within 0\.5s"
        ):
            client_for(operator, timeout=0.5).stats(AdminEndpoint("web1", "127.0.0.1", port))
    assert time.monotonic() - started < 5  # 0.5 s, with room for a loaded machine


def test_plain_http_on_the_port(operator: Identity) -> None:
    app = HttpApp("not-meshd")
    try:
        with pytest.raises(ConnectError, match="does not speak TLS") as info:
            client_for(operator).stats(AdminEndpoint("web1", "127.0.0.1", app.port))
    finally:
        app.close()
    assert info.value.hint and "admin port" in info.value.hint


class DrippingServer:
    """A TLS server with a valid host certificate that sends its answer a byte at a time."""

    def __init__(self, identity: Identity) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(identity.bundle)
        self.context.load_cert_chain(identity.cert, identity.key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with self.context.wrap_socket(conn, server_side=True) as tls:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" * 100:
                    if self.stop.wait(0.05):
                        return
                    tls.sendall(bytes([byte]))
        except OSError:  # the client gave up and closed: what the test wants
            return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_deadline_covers_the_whole_exchange(tmp_path: Path) -> None:
    pki = TestPki(tmp_path / "pki")
    server = DrippingServer(pki.issue("web1", "host/web1"))
    client = client_for(pki.issue("alice", "operator/alice"), timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectError, match="no answer within 1s"):
            client.stats(AdminEndpoint("web1", "127.0.0.1", server.port))
    finally:
        server.close()
    assert 0.9 < time.monotonic() - started < 5  # 1 s, with room for a loaded machine


def test_peer_not_after_matches_the_certificate(net: MeshNet) -> None:
    ident = net.pki.issue("web1", "host/web1", lifetime=dt.timedelta(hours=3))
    web1 = net.start("web1", identity=ident)
    reply = client_for(net.operator).request(endpoint(web1), "GET", "/healthz")
    assert (reply.status, reply.body) == (200, "ok\n")
    assert reply.peer_not_after == leaf(ident).not_valid_after_utc
    assert reply.peer_not_after.tzinfo is not None


def test_for_workspace(tmp_path: Path) -> None:
    config = MeshConfig("t", TD, "alice", ca_key_encrypted=False)
    ws = init_workspace(tmp_path / "ws", config, None, dt.datetime.now(dt.UTC))
    root_key = serialization.load_pem_private_key(ws.root_ca_key.read_bytes(), None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    root = Authority(x509.load_pem_x509_certificate(ws.root_ca_cert.read_bytes()), root_key)
    mesh = MeshNet(
        tmp_path / "net", pki=TestPki(tmp_path / "net" / "pki", TD, MeshCa(root, ws.issuer(None)))
    )
    try:
        web1 = mesh.start("web1")
        stats = AdminClient.for_workspace(ws).stats(endpoint(web1))
    finally:
        mesh.stop_all()
    assert stats.host == "web1"


class CannedServer:
    """A TLS server with a valid host certificate that answers one request with ``answer``."""

    def __init__(self, identity: Identity, answer: bytes) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(identity.bundle)
        self.context.load_cert_chain(identity.cert, identity.key)
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(65536)
                tls.sendall(self.answer)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def test_a_json_answer_nested_too_deeply_is_a_broken_answer(tmp_path: Path) -> None:
    """A compromised host's meshd must not get a traceback out of meshctl."""
    pki = TestPki(tmp_path / "pki")
    body = b"[" * 100_000 + b"]" * 100_000
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    server = CannedServer(pki.issue("web1", "host/web1"), head.encode() + b"\r\n\r\n" + body)
    try:
        with pytest.raises(ConnectError, match="JSON body that does not parse"):
            client_for(pki.issue("ops", "operator/ops")).stats(
                AdminEndpoint("web1", "127.0.0.1", server.port)
            )
    finally:
        server.close()


def test_trusting_one_root_alone_tells_which_root_a_meshd_serves(
    net: MeshNet, tmp_path: Path
) -> None:
    """What ``ca rotate finish`` checks: a real handshake trusting only the new root."""
    web1 = endpoint(net.start("web1"))
    client = client_for(net.operator)
    other = TestPki(tmp_path / "other")
    with pytest.raises(ConnectError, match="trust bundle does not accept"):
        client.trusting(other.bundle).stats(web1)
    assert client.trusting(net.pki.bundle).stats(web1).host == "web1"
    assert client.stats(web1).host == "web1"  # the original keeps its own bundle


def test_call_reaches_any_route_and_reports_refusals(net: MeshNet) -> None:
    web1 = endpoint(net.start("web1"))
    client = client_for(net.operator)
    assert client.call(web1, "GET", "/registry") == {"version": 1, "services": {}}
    assert client.call(web1, "GET", "/nothing-here") is None
    with pytest.raises(ProvisionError, match=r"web1: POST /nothing-here failed \(404\)"):
        client.call(web1, "POST", "/nothing-here", {})


def test_session_keeps_one_connection_to_a_real_meshd(net: MeshNet) -> None:
    web1 = endpoint(net.start("web1"))
    session = client_for(net.operator).session(web1)
    try:
        stats = session.get("/stats")
        first = session.tls
        assert stats is not None and stats["host"] == "web1"
        assert session.get("/nosuch") is None  # 404: still the same connection
        again = session.get("/stats")
        assert again is not None and again["host"] == "web1"
        assert session.tls is first and first is not None
    finally:
        session.close()
    assert session.tls is None


def test_session_checks_the_host_identity_first(net: MeshNet) -> None:
    web1 = net.start("web1")
    session = client_for(net.operator).session(endpoint(web1, host="web2"))
    with pytest.raises(ConnectError) as info:
        session.get("/stats")
    assert info.value.message == (
        f"meshd on web2 (127.0.0.1:{web1.ports['admin']}) presented "
        f"spiffe://{TD}/host/web1, expected spiffe://{TD}/host/web2"
    )
    assert session.tls is None


def test_session_replaces_a_connection_closed_in_between(tmp_path: Path) -> None:
    mesh = top_mesh(tmp_path, {"web1": "127.0.0.61"})
    web1 = model(mesh, "web1", "127.0.0.61")
    session = AdminClient.for_workspace(mesh.ws, 2.0).session(
        AdminEndpoint("web1", "127.0.0.61", mesh.port)
    )
    server = TrafficServer([web1], mesh.port, mesh.pki.bundle).start()
    try:
        assert (session.get("/traffic") or {})["host"] == "web1"
        first = session.tls
        server.stop()  # closes what it accepted: the session's connection too
        server = TrafficServer([web1], mesh.port, mesh.pki.bundle).start()
        assert (session.get("/traffic") or {})["host"] == "web1"
        assert session.tls is not first and server.requests == 1
        server.stop()
        with pytest.raises(
            ConnectError, match=r"meshd on web1 \(127\.0\.0\.61:\d+\): connection refused"
        ):
            session.get("/traffic")
    finally:
        server.stop()
        session.close()
