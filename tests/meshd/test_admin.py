"""Admin API over real mutual TLS on loopback, with real certificates, and its unix socket."""

from __future__ import annotations

import json
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSAttribute

from meshd.admin import AdminLimits, AdminServer
from meshd.errors import ConfigError, ConnectError
from meshd.events import ConnectionRefused, EventBus, HandshakeFailed
from meshd.httpwire import HttpError, parse_head
from meshd.metrics import Metrics
from meshd.registry import Registry
from meshd.store import DocumentStore
from meshd.tls import TlsMaterial
from tests.meshd.test_metrics import parse_exposition
from tests.meshd.tlsfixtures import TD, Identity, TestPki

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": True}  # as the daemon runs


@dataclass
class Pki:
    server: Identity
    server2: Identity
    alice: Identity
    host: Identity
    service: Identity
    stranger: Identity  # an operator ID, but from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    mesh = TestPki(tmp_path_factory.mktemp("pki"))
    other = TestPki(tmp_path_factory.mktemp("other"))
    return Pki(
        server=mesh.issue("h0", "host/h0"),
        server2=mesh.issue("h0-renewed", "host/h0-renewed"),
        alice=mesh.issue("alice", "operator/alice"),
        host=mesh.issue("h1", "host/h1"),
        service=mesh.issue("api", "svc/api"),
        stranger=other.issue("mallory", "operator/mallory"),
    )


def registry_doc(version: int, port: int = 8080) -> dict[str, Any]:
    return {"version": version, "services": {"api": {"vip": "10.255.0.2", "port": port}}}


@dataclass
class Backend:
    """What the daemon provides, with a real store and metrics."""

    tls: TlsMaterial
    bundle: Path
    bus: EventBus = field(default_factory=EventBus)
    store: DocumentStore = field(default_factory=DocumentStore)
    trust_domain: str = TD
    ready: bool = True
    registry: Registry = field(default_factory=Registry)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.bus, process_metrics=False)
        self.seen = self.bus.subscribe()
        self.store.register("registry", lambda d: Registry.from_dict(d, "registry"), self._swap)
        self.store.put("registry", registry_doc(1))

    def _swap(self, registry: Registry) -> None:
        self.registry = registry

    def is_ready(self) -> bool:
        return self.ready

    def stats(self) -> dict[str, Any]:
        return {"links": 0, "registry_version": self.registry.version}

    def metrics_text(self) -> str:
        self.metrics.collect()
        return self.metrics.render()

    def current_tls(self) -> TlsMaterial:
        return self.tls


@dataclass
class Server:
    admin: AdminServer
    backend: Backend
    port: int
    socket: Path


@pytest.fixture
def backend(pki: Pki) -> Backend:
    s = pki.server
    return Backend(TlsMaterial.load(s.cert, s.key, s.bundle), s.bundle)


@asynccontextmanager
async def running(backend: Backend, tmp_path: Path, **limits: Any) -> AsyncIterator[Server]:
    admin = AdminServer(backend, events=backend.bus, limits=AdminLimits(**limits))
    path = tmp_path / "run" / "admin.sock"
    async with anyio.create_task_group() as tg:
        _host, port = await tg.start(admin.serve, ("127.0.0.1", 0), path)
        yield Server(admin, backend, port, path)
        tg.cancel_scope.cancel()


def client_context(identity: Identity | None, bundle: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(bundle))
    if identity is not None:
        ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx


async def connect(server: Server, who: Identity | None, bundle: Path | None = None) -> ByteStream:
    ctx = client_context(who, bundle or server.backend.bundle)
    return await anyio.connect_tcp(
        "127.0.0.1", server.port, ssl_context=ctx, tls_standard_compatible=False
    )


def build(method: str, path: str, body: object = None, extra: str = "") -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    return head.encode() + data


async def read_response(stream: ByteStream) -> tuple[int, dict[str, str], bytes]:
    reader = BufferedByteReceiveStream(stream)
    with anyio.fail_after(5):
        head = (await reader.receive_until(b"\r\n\r\n", 65536)).decode()
        status_line, *lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        body = await reader.receive_exactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def call(
    server: Server, who: Identity | None, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    async with await connect(server, who) as stream:
        await stream.send(build(method, path, body))
        status, headers, data = await read_response(stream)
    is_json = headers["content-type"] == "application/json"
    return status, json.loads(data) if is_json else data.decode()


async def test_operator_reads_and_pushes_registry(
    backend: Backend, pki: Pki, tmp_path: Path
) -> None:
    async with running(backend, tmp_path) as server:
        assert await call(server, pki.alice, "GET", "/registry") == (200, registry_doc(1))
        status, body = await call(server, pki.alice, "PUT", "/registry", registry_doc(2, 9090))
        assert (status, body) == (200, {"status": "applied", "version": 2})
        assert backend.registry.version == 2
        assert await call(server, pki.alice, "GET", "/registry") == (200, registry_doc(2, 9090))
        status, body = await call(server, pki.alice, "PUT", "/registry", registry_doc(2, 9090))
        assert (status, body) == (200, {"status": "unchanged", "version": 2})


async def test_older_version_is_409_and_changes_nothing(
    backend: Backend, pki: Pki, tmp_path: Path
) -> None:
    backend.store.put("registry", registry_doc(5))
    async with running(backend, tmp_path) as server:
        status, body = await call(server, pki.alice, "PUT", "/registry", registry_doc(4))
        assert status == 409
        assert "4" in body["error"] and "5" in body["error"] and body["hint"]
        status, body = await call(server, pki.alice, "PUT", "/registry", registry_doc(5, 1))
        assert status == 409
    assert backend.store.get("registry") == registry_doc(5)
    assert backend.registry.version == 5


@pytest.mark.parametrize(
    ("doc", "field_name"),
    [
        (
            {"version": 3, "services": {"api": {"vip": "10.255.0.2", "port": 70000}}},
            "services.api.port",
        ),
        ({"version": 3, "services": {"api": {"vip": "ten", "port": 80}}}, "services.api.vip"),
        ({"version": 3, "servics": {}}, "servics"),
        ({"services": {}}, "version"),
    ],
)
async def test_invalid_document_is_400_naming_the_field(
    backend: Backend, pki: Pki, tmp_path: Path, doc: dict[str, Any], field_name: str
) -> None:
    async with running(backend, tmp_path) as server:
        status, body = await call(server, pki.alice, "PUT", "/registry", doc)
    assert status == 400
    assert field_name in body["error"]
    assert backend.store.get("registry") == registry_doc(1)


async def test_body_that_is_not_json_is_400(backend: Backend, pki: Pki, tmp_path: Path) -> None:
    async with running(backend, tmp_path) as server, await connect(server, pki.alice) as s:
        await s.send(b"PUT /registry HTTP/1.1\r\nContent-Length: 3\r\n\r\n{{{")
        status, _, data = await read_response(s)
    assert status == 400
    assert "not JSON" in json.loads(data)["error"]


@pytest.mark.parametrize("who", ["host", "service"])
async def test_other_mesh_identities_get_403_on_everything(
    backend: Backend, pki: Pki, tmp_path: Path, who: str
) -> None:
    identity = getattr(pki, who)
    async with running(backend, tmp_path) as server:
        for method, path, body in [
            ("GET", "/registry", None),
            ("GET", "/healthz", None),
            ("GET", "/metrics", None),
            ("GET", "/nowhere", None),
            ("PUT", "/registry", registry_doc(9)),
        ]:
            status, answer = await call(server, identity, method, path, body)
            assert status == 403, (method, path)
            assert "operator" in answer["error"]
        assert server.admin.counters["forbidden"] == 5
    assert backend.store.get("registry") == registry_doc(1)
    refused = [e for e in backend.seen.queue if isinstance(e, ConnectionRefused)]
    assert {e.reason for e in refused} == {"not_operator"}


async def test_operator_of_another_trust_domain_is_forbidden(
    backend: Backend, pki: Pki, tmp_path: Path
) -> None:
    backend.trust_domain = "other.mesh"
    async with running(backend, tmp_path) as server:
        status, _ = await call(server, pki.alice, "GET", "/stats")
    assert status == 403


@pytest.mark.parametrize("who", ["stranger", None])
async def test_untrusted_or_missing_client_certificate_fails_handshake(
    backend: Backend, pki: Pki, tmp_path: Path, who: str | None
) -> None:
    identity = getattr(pki, who) if who else None
    async with running(backend, tmp_path) as server:
        with pytest.raises((ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream, OSError)):
            async with await connect(server, identity) as stream:
                await stream.send(build("GET", "/healthz"))
                await read_response(stream)
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
        assert server.admin.counters["handshake_failures"] == 1
    failures = [e for e in backend.seen.queue if isinstance(e, HandshakeFailed)]
    assert [(e.listener, e.reason) for e in failures] == [
        ("admin", "bad_certificate" if who else "no_certificate")
    ]


async def test_metrics_stats_ready(backend: Backend, pki: Pki, tmp_path: Path) -> None:
    async with running(backend, tmp_path) as server, await connect(server, pki.alice) as s:
        await s.send(build("GET", "/metrics"))
        status, headers, data = await read_response(s)
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "meshd_info" in " ".join(parse_exposition(data.decode()))
        await s.send(build("GET", "/stats"))  # same connection: keep-alive
        status, _, data = await read_response(s)
        assert (status, json.loads(data)) == (200, {"links": 0, "registry_version": 1})
        backend.ready = False
        await s.send(build("GET", "/ready"))
        assert (await read_response(s))[0] == 503


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("POST", "/registry", 405), ("DELETE", "/healthz", 405),
     ("GET", "/policy", 404), ("GET", "/registry?x=1", 200)],
)  # fmt: skip
async def test_routing(
    backend: Backend, pki: Pki, tmp_path: Path, method: str, path: str, status: int
) -> None:
    async with running(backend, tmp_path) as server:
        got, body = await call(server, pki.alice, method, path)
    assert got == status
    if status != 200:
        assert set(body) == {"error", "hint"}


async def test_oversized_header_is_431_and_server_keeps_serving(
    backend: Backend, pki: Pki, tmp_path: Path
) -> None:
    async with running(backend, tmp_path) as server:
        async with await connect(server, pki.alice) as s:
            await s.send(build("GET", "/healthz", extra=f"X-Big: {'a' * 20000}\r\n"))
            status, headers, _ = await read_response(s)
        assert (status, headers["connection"]) == (431, "close")
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")


async def test_oversized_body_is_413(backend: Backend, pki: Pki, tmp_path: Path) -> None:
    async with running(backend, tmp_path, max_body_bytes=100) as server:
        status, _ = await call(
            server, pki.alice, "PUT", "/registry", {"version": 2, "pad": "x" * 200}
        )
    assert status == 413


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xff\x13garbage\r\n\r\n", b"GET /healthz\r\n\r\n", b"GET / HTTP/1.1\r\n bad\r\n\r\n",
     b"PUT /registry HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
     b"PUT /registry HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"],
)  # fmt: skip
async def test_garbage_gets_an_error_and_server_keeps_serving(
    backend: Backend, pki: Pki, tmp_path: Path, garbage: bytes
) -> None:
    async with running(backend, tmp_path) as server:
        async with await connect(server, pki.alice) as s:
            await s.send(garbage)
            status, _, body = await read_response(s)
        assert status in (400, 501)
        assert json.loads(body)["error"]
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")


async def test_plaintext_on_the_tls_port_fails_and_server_keeps_serving(
    backend: Backend, pki: Pki, tmp_path: Path
) -> None:
    async with running(backend, tmp_path) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as raw:
            await raw.send(b"GET /healthz HTTP/1.1\r\n\r\n")
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, OSError)):
                while await raw.receive():
                    pass
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
        assert server.admin.counters["handshake_failures"] == 1


async def test_connection_cap(backend: Backend, pki: Pki, tmp_path: Path) -> None:
    async with running(backend, tmp_path, max_connections=1) as server:
        async with await connect(server, pki.alice) as first:
            await first.send(build("GET", "/healthz"))
            assert (await read_response(first))[0] == 200
            with pytest.raises(
                (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream, OSError)
            ):
                async with await connect(server, pki.alice) as second:
                    await second.send(build("GET", "/healthz"))
                    await read_response(second)
        assert server.admin.counters["over_capacity"] == 1


async def test_new_connections_use_reloaded_certificates(
    backend: Backend, pki: Pki, tmp_path: Path
) -> None:
    async with running(backend, tmp_path) as server, await connect(server, pki.alice) as before:
        renewed = pki.server2
        backend.tls = TlsMaterial.load(renewed.cert, renewed.key, renewed.bundle)
        async with await connect(server, pki.alice) as after:
            for stream, name in [(before, "h0"), (after, "h0-renewed")]:
                cert = stream.extra(TLSAttribute.peer_certificate)
                assert cert is not None
                assert cert["subjectAltName"] == (("URI", f"spiffe://{TD}/host/{name}"),)
                await stream.send(build("GET", "/healthz"))
                assert (await read_response(stream))[0] == 200


async def unix_call(path: Path, request: bytes) -> tuple[int, dict[str, str], bytes]:
    async with await anyio.connect_unix(path) as stream:
        await stream.send(request)
        return await read_response(stream)


async def test_unix_socket_serves_health_only(backend: Backend, tmp_path: Path) -> None:
    stale = tmp_path / "run" / "admin.sock"
    stale.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as old:  # left behind by a crashed meshd
        old.bind(str(stale))
    async with running(backend, tmp_path) as server:
        assert stat.S_IMODE(server.socket.stat().st_mode) == 0o660
        assert (await unix_call(server.socket, build("GET", "/healthz")))[::2] == (200, b"ok\n")
        status, _, body = await unix_call(server.socket, build("GET", "/stats"))
        assert (status, json.loads(body)["registry_version"]) == (200, 1)
        assert (await unix_call(server.socket, build("GET", "/ready")))[0] == 200
        for method, path in [("GET", "/registry"), ("PUT", "/registry"), ("GET", "/metrics")]:
            status, _, body = await unix_call(server.socket, build(method, path, registry_doc(7)))
            assert status == 403
            assert "mutual TLS" in json.loads(body)["hint"]
        assert (await unix_call(server.socket, build("GET", "/x")))[0] == 404
        assert (await unix_call(server.socket, b"\x01\x02\r\n\r\n"))[0] == 400
    assert not server.socket.exists()
    assert backend.store.get("registry") == registry_doc(1)


async def test_bind_errors_are_reported_before_started(backend: Backend, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConnectError, match=f"cannot listen on 127.0.0.1:{port}") as info:
            await AdminServer(backend).serve(("127.0.0.1", port), tmp_path / "admin.sock")
    assert info.value.hint
    assert not (tmp_path / "admin.sock").exists()


async def test_socket_path_that_is_not_a_socket_is_refused(
    backend: Backend, tmp_path: Path
) -> None:
    (tmp_path / "admin.sock").write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        await AdminServer(backend).serve(("127.0.0.1", 0), tmp_path / "admin.sock")
    assert (tmp_path / "admin.sock").read_text() == "precious"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A:  1 ",
            ("GET", "/a", "1.1", {"host": "x", "x-a": "1"}),
        ),
        (b"\r\nPUT / HTTP/1.0", ("PUT", "/", "1.0", {})),
    ],
)
def test_parse_head(head: bytes, expected: tuple[str, str, str, dict[str, str]]) -> None:
    assert parse_head(head) == expected


@pytest.mark.parametrize(
    "head",
    [b"get / HTTP/1.1", b"GET / HTTP/2", b"GET  / HTTP/1.1", b"GET / HTTP/1.1\r\nNo-Colon",
     b"GET / HTTP/1.1\r\nBad Name: 1", b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
     b"GET http://x/ HTTP/1.1"],
)  # fmt: skip
def test_parse_head_rejects(head: bytes) -> None:
    with pytest.raises(HttpError) as info:
        parse_head(head)
    assert info.value.response.status == 400
