"""Admin API over real mutual TLS on loopback, with real certificates, and its unix socket.

Every test runs against two backends: a fake one (a real DocumentStore and
Metrics, nothing else) and the daemon's own (a real ``Daemon`` built in-process
from a config file and certificates, whose listeners are never bound). The
admin API's answers are asserted, not the validation details of each document.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSAttribute

from meshd.admin.server import AdminBackend, AdminLimits, AdminServer
from meshd.admin.wire import HttpError, parse_head
from meshd.config import MeshdConfig
from meshd.daemon import Daemon
from meshd.errors import ConfigError, ConnectError
from meshd.issuer.service import Issuer
from meshd.proxy.http.observe import Listening
from meshd.registry import Registry
from meshd.stats import KINDS, Stats
from meshd.store import DocumentStore
from meshd.telemetry.events import (
    ConnectionOpened,
    ConnectionRefused,
    EventBus,
    HandshakeFailed,
    RequestCompleted,
    Subscription,
)
from meshd.telemetry.logs import peer_lines
from meshd.telemetry.metrics import Metrics
from meshd.telemetry.tap import TapHub
from meshd.tls.context import TlsMaterial
from meshd.tls.gate import HANDSHAKE_GRACE
from meshd.traffic import Traffic
from tests.meshd.telemetry.test_metrics import parse_exposition
from tests.meshd.tlsfixtures import TD, Identity, TestPki, joint_bundle, not_after

pytestmark = pytest.mark.anyio
NETWORK_ERRORS = (
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    OSError,
)
Doc = dict[str, Any]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": True}  # as the daemon runs


# --- certificates ------------------------------------------------------------------
@dataclass
class Pki:
    mesh: TestPki
    server: Identity  # host/h0; its bundle also trusts other.mesh (a federated domain)
    server2: Identity
    alice: Identity  # operator/alice of our trust domain
    host: Identity
    service: Identity
    monitor: Identity  # monitor/prom of our trust domain: GET /metrics, nothing else
    foreign: Identity  # operator/eve of other.mesh: trusted CA, not our operator
    foreign_monitor: Identity  # monitor/prom of other.mesh: not our monitor
    stranger: Identity  # operator/mallory of our trust domain, from a CA nobody trusts
    ca_leaf: Identity  # operator/eve of our domain on a leaf marked as a CA
    no_usage: Identity  # operator/eve of our domain on a leaf without key usage


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    mesh = TestPki(tmp_path_factory.mktemp("pki"))
    other = TestPki(tmp_path_factory.mktemp("other"), trust_domain="other.mesh")
    untrusted = TestPki(tmp_path_factory.mktemp("untrusted"))
    bundle = joint_bundle(mesh.dir / "joint.pem", mesh, other)
    return Pki(
        mesh=mesh,
        server=replace(mesh.issue("h0", "host/h0"), bundle=bundle),
        server2=replace(mesh.issue("h0-renewed", "host/h0"), bundle=bundle),
        alice=mesh.issue("alice", "operator/alice"),
        host=mesh.issue("h1", "host/h1"),
        service=mesh.issue("api", "svc/api"),
        monitor=mesh.issue("prom", "monitor/prom"),
        foreign=other.issue("eve", "operator/eve"),
        foreign_monitor=other.issue("prom", "monitor/prom"),
        stranger=untrusted.issue("mallory", "operator/mallory"),
        ca_leaf=mesh.issue_odd("eve-ca", "operator/eve", ca=True, key_usage=True),
        no_usage=mesh.issue_odd("eve-nku", "operator/eve", ca=False, key_usage=False),
    )


# --- documents -----------------------------------------------------------------------
def registry_doc(version: int, port: int = 8080) -> Doc:
    service = {"vip": "10.255.0.2", "port": port, "endpoints": []}
    return {"version": version, "services": {"api": service}}


def daemon_toml(server: Identity, directory: Path) -> str:
    return f"""
[identity]
host = "h0"
trust_domain = "{TD}"
cert = "{server.cert}"
key = "{server.key}"
bundle = "{server.bundle}"
[listen]
outbound = "127.0.0.1:0"
inbound = "127.0.0.1:0"
mesh = "127.0.0.1:0"
admin = "127.0.0.1:0"
admin_socket = "{directory / "unused.sock"}"
[mesh]
registry = "{directory / "registry.json"}"
state_dir = "{directory / "state"}"
"""


def valid_doc(pki: Pki, directory: Path, kind: str, version: int, variant: bool = False) -> Doc:
    """A document of ``kind`` the daemon takes; ``variant``: other content, same meaning."""
    extra = "\n" if variant else ""
    if kind == "registry":
        return registry_doc(version, 9090 if variant else 8080)
    if kind == "config":  # pushed limits differ from the file's, so the swap shows
        toml = daemon_toml(pki.server, directory) + "[limits]\nmax_connections = 777\n"
        return {"version": version, "toml": toml + extra}
    if kind == "certs":
        cert, bundle = pki.server.cert.read_text(), pki.server.bundle.read_text()
        return {"version": version, "cert_pem": cert + extra, "bundle_pem": bundle}
    if kind == "issuer":  # retiring: valid on a host that never was an issuer (test_issuer.py)
        return {"version": version, "cert_pem": ""} | ({"leaf_lifetime": 60} if variant else {})
    if kind == "trust":  # the roots that verify the running certificate
        return {"version": version, "bundle_pem": pki.server.bundle.read_text() + extra}
    assert not variant, "a policy document is its version only (until the policy engine)"
    return {"version": version}


# --- the two backends ----------------------------------------------------------------
@dataclass
class FakeBackend:
    """What the daemon provides, with a real store and metrics; document kinds take anything
    with a version, except the registry, which is parsed as the daemon does."""

    tls: TlsMaterial
    kinds: tuple[str, ...] = KINDS
    bus: EventBus = field(default_factory=EventBus)
    store: DocumentStore = field(default_factory=DocumentStore)
    trust_domain: str = TD
    ready: bool = True
    live: dict[str, Any] = field(default_factory=dict)
    issuer: Issuer | None = None  # the daemon's own is tested in test_issuer.py
    renewals_asked: int = 0
    tap: TapHub = field(default_factory=lambda: TapHub(Listening()))

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.bus, process_metrics=False)
        for kind in self.kinds:
            validate = (lambda d: Registry.from_dict(d, "registry")) if kind == "registry" else dict
            self.store.register(kind, validate, functools.partial(self._keep, kind))
        if "registry" in self.kinds:
            self.store.put("registry", registry_doc(1))

    def _keep(self, kind: str, value: object) -> None:
        self.live[kind] = value

    def is_ready(self) -> bool:
        return self.ready

    def stats(self) -> Stats:
        return Stats(registry_version=self.live["registry"].version)

    def metrics_text(self) -> str:
        self.metrics.collect()
        return self.metrics.render()

    def traffic(self) -> Traffic:
        self.metrics.collect()
        return self.metrics.traffic("fake")

    def current_tls(self) -> TlsMaterial:
        return self.tls

    def renew_now(self) -> None:
        self.renewals_asked += 1


@dataclass
class Subject:
    """The backend under test and what a test may do to it."""

    name: str
    backend: AdminBackend
    bus: EventBus
    bundle: Path
    set_ready: Callable[[bool], None]
    set_tls: Callable[[TlsMaterial], None]
    running: Callable[[], tuple[object, ...]]  # the live objects that a push swaps
    seen: Subscription = field(init=False)

    def __post_init__(self) -> None:
        self.seen = self.bus.subscribe()

    @property
    def store(self) -> DocumentStore:
        return self.backend.store

    def events(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.seen.queue if isinstance(e, kind)]


def fake_subject(pki: Pki) -> Subject:
    s = pki.server
    fake = FakeBackend(TlsMaterial.load(s.cert, s.key, s.bundle))
    return Subject(
        "fake",
        fake,
        fake.bus,
        s.bundle,
        lambda ready: setattr(fake, "ready", ready),
        lambda tls: setattr(fake, "tls", tls),
        lambda: tuple(fake.live.values()),
    )


def daemon_subject(pki: Pki, directory: Path) -> Subject:
    (directory / "registry.json").write_text(json.dumps(registry_doc(1)))
    (directory / "state").mkdir(mode=0o700)
    config = directory / "meshd.toml"
    config.write_text(daemon_toml(pki.server, directory))
    daemon = Daemon(config, MeshdConfig.load(config))  # the files with stored documents on top
    rt = daemon.rt
    rt.ready = True
    return Subject(
        "daemon",
        daemon.admin.backend,
        rt.bus,
        pki.server.bundle,
        lambda ready: setattr(rt, "ready", ready),
        lambda tls: setattr(rt, "tls", tls),
        lambda: (rt.registry, rt.config, rt.tls, rt.policy, daemon.issuer.current),
    )


@pytest.fixture(params=["fake", "daemon"])
def subject(request: pytest.FixtureRequest, pki: Pki, tmp_path: Path) -> Subject:
    if request.param == "fake":
        return fake_subject(pki)
    return daemon_subject(pki, tmp_path)


# --- a server and its clients ----------------------------------------------------------
@dataclass
class Server:
    admin: AdminServer
    subject: Subject
    port: int
    socket: Path

    def counter(self, name: str) -> int:
        return self.admin.counters[name]


@asynccontextmanager
async def running(subject: Subject, tmp_path: Path, **limits: Any) -> AsyncIterator[Server]:
    admin = AdminServer(subject.backend, events=subject.bus, limits=AdminLimits(**limits))
    path = tmp_path / "run" / "admin.sock"
    async with anyio.create_task_group() as tg:
        _host, port = await tg.start(admin.serve, ("127.0.0.1", 0), path)
        yield Server(admin, subject, port, path)
        tg.cancel_scope.cancel()


def client_context(identity: Identity | None, bundle: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(bundle))
    if identity is not None:
        ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx


async def connect(server: Server, who: Identity | None) -> ByteStream:
    ctx = client_context(who, server.subject.bundle)
    return await anyio.connect_tcp(
        "127.0.0.1", server.port, ssl_context=ctx, tls_standard_compatible=False
    )


def build(method: str, path: str, body: object = None, extra: str = "") -> bytes:
    data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    return head.encode() + data


async def read_response(stream: ByteStream, within: float = 5) -> tuple[int, dict[str, str], bytes]:
    reader = BufferedByteReceiveStream(stream)
    with anyio.fail_after(within):
        head = (await reader.receive_until(b"\r\n\r\n", 65536)).decode()
        status_line, *lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        body = await reader.receive_exactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def decoded(headers: dict[str, str], data: bytes) -> Any:
    return json.loads(data) if headers["content-type"] == "application/json" else data.decode()


async def call(
    server: Server, who: Identity | None, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    async with await connect(server, who) as stream:
        await stream.send(build(method, path, body))
        status, headers, data = await read_response(stream)
    return status, decoded(headers, data)


def assert_error_shape(body: Any) -> None:
    assert isinstance(body, dict) and set(body) == {"error", "hint"}, body
    assert isinstance(body["error"], str) and body["error"]


def raw_socket(server: Server, source: str = "127.0.0.1") -> socket.socket:
    """A plain TCP connection to the admin port from ``source`` (any 127/8 address)."""
    return socket.create_connection(("127.0.0.1", server.port), 5, source_address=(source, 0))


async def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Does the server close ``sock`` (EOF or reset) within ``within`` seconds? (Whatever
    it sends before, a ServerHello say, is read and dropped.)"""
    with anyio.move_on_after(within):
        while True:
            await anyio.wait_readable(sock)
            try:
                if sock.recv(65536) == b"":
                    return True
            except ConnectionResetError:
                return True
    return False


def client_hello_bytes() -> bytes:
    """A real TLS 1.3 ClientHello, as the first flight of a client that then stalls."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- documents: every kind, every method --------------------------------------------------
async def test_operator_reads_and_pushes_registry(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path) as server:
        assert await call(server, pki.alice, "GET", "/registry") == (200, registry_doc(1))
        status, body = await call(server, pki.alice, "PUT", "/registry", registry_doc(2, 9090))
        assert (status, body) == (200, {"status": "applied", "version": 2})
        assert await call(server, pki.alice, "GET", "/registry") == (200, registry_doc(2, 9090))
        status, body = await call(server, pki.alice, "PUT", "/registry", registry_doc(2, 9090))
        assert (status, body) == (200, {"status": "unchanged", "version": 2})
        status, body = await call(server, pki.alice, "GET", "/stats")
        assert (status, body["registry_version"]) == (200, 2)


@pytest.mark.parametrize("kind", KINDS)
async def test_every_document_kind_is_pushed_and_read_back(
    subject: Subject, pki: Pki, tmp_path: Path, kind: str
) -> None:
    async with running(subject, tmp_path) as server:
        status, body = await call(server, pki.alice, "GET", f"/{kind}")
        first = 2 if kind == "registry" else 1
        if kind == "registry":
            assert (status, body) == (200, registry_doc(1))
        else:
            assert status == 404
            assert_error_shape(body)
            assert f"PUT /{kind}" in body["hint"]
        before = subject.running()
        doc = valid_doc(pki, tmp_path, kind, first)
        status, body = await call(server, pki.alice, "PUT", f"/{kind}", doc)
        assert (status, body) == (200, {"status": "applied", "version": first})
        assert await call(server, pki.alice, "GET", f"/{kind}") == (200, doc)
        assert subject.running() != before  # the push was swapped in
        status, body = await call(server, pki.alice, "PUT", f"/{kind}", doc)
        assert (status, body) == (200, {"status": "unchanged", "version": first})
    assert subject.store.versions()[kind] == first


BAD_PUSHES = {
    "older": (409, lambda doc: {**doc, "version": 1}),
    "same-version-other-content": (409, None),
    "version-not-a-number": (400, lambda doc: {**doc, "version": "seven"}),
    "negative-version": (400, lambda doc: {**doc, "version": -1}),
    "json-array": (400, lambda doc: [doc]),
    "not-json": (400, lambda doc: b"{{{"),
    "empty-body": (400, lambda doc: b""),
}


@pytest.mark.parametrize(
    ("kind", "bad"),
    [
        (kind, bad)
        for kind in KINDS
        for bad in BAD_PUSHES
        # a policy document has no content besides its version (yet): no other content
        if not (kind == "policy" and bad == "same-version-other-content")
    ],
)
async def test_refused_pushes_change_nothing(
    subject: Subject, pki: Pki, tmp_path: Path, kind: str, bad: str
) -> None:
    expected, spoil = BAD_PUSHES[bad]
    current = valid_doc(pki, tmp_path, kind, 2)
    async with running(subject, tmp_path) as server:
        assert (await call(server, pki.alice, "PUT", f"/{kind}", current))[0] == 200
        before = subject.running()
        offered = (
            valid_doc(pki, tmp_path, kind, 2, variant=True) if spoil is None else spoil(current)
        )
        status, body = await call(server, pki.alice, "PUT", f"/{kind}", offered)
        assert status == expected, body
        assert_error_shape(body)
        if status == 409:
            assert "2" in body["error"] and body["hint"]
        assert await call(server, pki.alice, "GET", f"/{kind}") == (200, current)
        assert all(a is b for a, b in zip(subject.running(), before, strict=True))
    assert subject.store.versions()[kind] == 2


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
async def test_invalid_registry_is_400_naming_the_field(
    subject: Subject, pki: Pki, tmp_path: Path, doc: Doc, field_name: str
) -> None:
    async with running(subject, tmp_path) as server:
        status, body = await call(server, pki.alice, "PUT", "/registry", doc)
    assert status == 400
    assert field_name in body["error"]
    assert subject.store.get("registry") == registry_doc(1)


DOCUMENT_PATHS = [f"/{kind}" for kind in KINDS]
READ_PATHS = ["/healthz", "/ready", "/metrics", "/stats", "/traffic"]


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_are_405_naming_the_allowed_ones(
    subject: Subject, pki: Pki, tmp_path: Path, method: str
) -> None:
    async with running(subject, tmp_path) as server, await connect(server, pki.alice) as s:
        for path in DOCUMENT_PATHS + READ_PATHS:
            await s.send(build(method, path, {"version": 99}))  # one kept-alive connection
            status, headers, data = await read_response(s)
            assert status == 405, path
            assert headers["allow"] == ("GET, PUT" if path in DOCUMENT_PATHS else "GET")
            assert_error_shape(json.loads(data))
    assert 99 not in subject.store.versions().values()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("PUT", "/nope", 404), ("GET", "/registry/", 404),
     ("GET", "/registry?x=1", 200), ("GET", "/healthz?probe", 200)],
)  # fmt: skip
async def test_routing(
    subject: Subject, pki: Pki, tmp_path: Path, method: str, path: str, status: int
) -> None:
    async with running(subject, tmp_path) as server:
        got, body = await call(server, pki.alice, method, path)
    assert got == status
    if status != 200:
        assert_error_shape(body)


async def test_a_kind_the_backend_does_not_take_is_404(pki: Pki, tmp_path: Path) -> None:
    s = pki.server
    fake = FakeBackend(TlsMaterial.load(s.cert, s.key, s.bundle), kinds=("registry",))
    subject = Subject("fake", fake, fake.bus, s.bundle, lambda _: None, lambda _: None, tuple)
    async with running(subject, tmp_path) as server:
        for method in ("GET", "PUT"):
            status, body = await call(server, pki.alice, method, "/policy", {"version": 1})
            assert status == 404
            assert "does not take policy" in body["error"]


# --- who may do what -------------------------------------------------------------------------
FORBIDDEN = ["host", "service", "foreign", "foreign_monitor"]


@pytest.mark.parametrize("who", FORBIDDEN)
async def test_other_identities_get_403_on_everything(
    subject: Subject, pki: Pki, tmp_path: Path, who: str
) -> None:
    identity = getattr(pki, who)
    async with running(subject, tmp_path) as server:
        requests: list[tuple[str, str, Doc | None]] = [
            ("GET", p, None) for p in [*DOCUMENT_PATHS, *READ_PATHS, "/nowhere"]
        ]
        requests += [("PUT", p, {"version": 9}) for p in DOCUMENT_PATHS]
        requests += [("POST", "/registry", registry_doc(9))]
        for method, path, body in requests:
            status, answer = await call(server, identity, method, path, body)
            assert status == 403, (method, path)
            assert_error_shape(answer)
            assert "operator" in answer["error"]
        assert server.counter("forbidden") == len(requests)
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
    assert subject.store.versions() == {"registry": 1}
    assert {e.reason for e in subject.events(ConnectionRefused)} == {"not_operator"}


def _every_request_but_get_metrics() -> list[tuple[str, str, Doc | None]]:
    requests: list[tuple[str, str, Doc | None]] = [
        ("GET", p, None)
        for p in [*DOCUMENT_PATHS, *READ_PATHS, "/nowhere", "/traffic"]
        if p != "/metrics"
    ]
    requests += [("PUT", p, {"version": 9}) for p in DOCUMENT_PATHS]
    requests += [(m, "/metrics", None) for m in ("POST", "PUT", "DELETE", "HEAD")]
    requests += [("POST", p, None) for p in ("/registry", "/renew", "/issue", "/issuer/csr")]
    return [*requests, ("GET", "/metrics/", None), ("GET", "/Metrics", None)]


async def test_a_monitor_may_get_metrics_again_and_again_on_one_connection(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path) as server, await connect(server, pki.monitor) as s:
        for _ in range(3):
            await s.send(build("GET", "/metrics"))
            status, headers, data = await read_response(s)
            assert status == 200, data
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert parse_exposition(data.decode())
        assert server.counter("monitor_sessions") == 1
        assert server.counter("forbidden") == 0


async def test_a_monitor_gets_403_on_everything_else(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    requests = _every_request_but_get_metrics()
    async with running(subject, tmp_path) as server:
        for method, path, body in requests:
            status, answer = await call(server, pki.monitor, method, path, body)
            assert status == 403, (method, path, answer)
            assert_error_shape(answer)
            assert "a monitor identity may only GET /metrics" in answer["error"], answer
            assert "GET /metrics" in answer["hint"]
        assert server.counter("forbidden") == len(requests)
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
    assert subject.store.versions() == {"registry": 1}
    assert {e.reason for e in subject.events(ConnectionRefused)} == {"not_operator"}


async def test_a_refused_monitor_request_ends_the_session_unread(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    """After its scrapes, a monitor's PUT gets its 403 on the head, without its body, and the
    connection closes."""
    async with running(subject, tmp_path) as server, await connect(server, pki.monitor) as s:
        await s.send(build("GET", "/metrics"))
        assert (await read_response(s))[0] == 200
        await s.send(b"PUT /registry HTTP/1.1\r\nContent-Length: 4194304\r\n\r\n{")
        status, headers, _ = await read_response(s, within=1)
        assert (status, headers["connection"]) == (403, "close")
        with anyio.fail_after(3), pytest.raises(NETWORK_ERRORS):
            while await s.receive():
                pass
    assert subject.store.versions() == {"registry": 1}


async def test_monitors_have_room_of_their_own(subject: Subject, pki: Pki, tmp_path: Path) -> None:
    async with (
        running(subject, tmp_path, max_monitor_sessions=1, max_connections=1) as server,
        await connect(server, pki.monitor) as first,
    ):
        await first.send(build("GET", "/metrics"))
        assert (await read_response(first))[0] == 200
        status, body = await call(server, pki.monitor, "GET", "/metrics")
        assert status == 503 and "monitor sessions" in body["error"], body
        with anyio.fail_after(2):
            assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
        await first.send(build("GET", "/metrics"))  # the first one is still served
        assert (await read_response(first))[0] == 200
        assert server.counter("over_capacity") == 1


@pytest.mark.parametrize("who", ["ca_leaf", "no_usage"])
async def test_an_operator_id_on_an_improper_leaf_is_forbidden(
    subject: Subject, pki: Pki, tmp_path: Path, who: str
) -> None:
    """An operator SPIFFE ID on a leaf that is a CA, or may not sign, identifies nobody."""
    async with running(subject, tmp_path) as server:
        for method, path, body in [("GET", "/stats", None), ("PUT", "/policy", {"version": 9})]:
            status, answer = await call(server, getattr(pki, who), method, path, body)
            assert status == 403, (method, path, answer)
    assert "policy" not in subject.store.versions()
    assert {e.reason for e in subject.events(ConnectionRefused)} == {"bad_leaf"}


@pytest.mark.parametrize(
    ("who", "reason"),
    [("stranger", "untrusted"), (None, "no_certificate"), ("plaintext", "not_tls")],
)
async def test_peers_without_a_trusted_certificate_fail_the_handshake(
    subject: Subject, pki: Pki, tmp_path: Path, who: str | None, reason: str
) -> None:
    async with running(subject, tmp_path) as server:
        if who == "plaintext":
            async with await anyio.connect_tcp("127.0.0.1", server.port) as raw:
                await raw.send(build("PUT", "/registry", registry_doc(9)))
                with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, OSError)):
                    while await raw.receive():
                        pass
        else:
            identity = getattr(pki, who) if who else None
            with pytest.raises(NETWORK_ERRORS):
                async with await connect(server, identity) as stream:
                    await stream.send(build("PUT", "/registry", registry_doc(9)))
                    await read_response(stream)
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
        assert server.counter("handshake_failures") == 1
    assert [(e.listener, e.reason) for e in subject.events(HandshakeFailed)] == [("admin", reason)]
    assert subject.store.versions() == {"registry": 1}


# a host identity's request head is read (it may POST /issue): tests/meshd/issuer/
@pytest.mark.parametrize("who", [who for who in FORBIDDEN if who != "host"])
async def test_a_forbidden_identity_is_answered_at_once_without_reading_its_request(
    subject: Subject, pki: Pki, tmp_path: Path, who: str
) -> None:
    """403 right after the handshake: before the request, and without waiting for its body."""
    async with running(subject, tmp_path) as server:
        async with await connect(server, getattr(pki, who)) as silent:
            status, headers, _ = await read_response(silent, within=1)
            assert (status, headers["connection"]) == (403, "close")
        async with await connect(server, getattr(pki, who)) as announcing:
            await announcing.send(b"PUT /registry HTTP/1.1\r\nContent-Length: 4194304\r\n\r\n{")
            assert (await read_response(announcing, within=1))[0] == 403
            with anyio.fail_after(3), pytest.raises(NETWORK_ERRORS):
                while await announcing.receive():  # and then it is closed
                    pass
        assert server.counter("forbidden") == 2


@pytest.mark.parametrize("who", FORBIDDEN)
async def test_a_forbidden_identity_sending_a_big_body_gets_its_403(
    subject: Subject, pki: Pki, tmp_path: Path, who: str
) -> None:
    """The server drops what the peer still sends (it is not decrypted, nor kept) for a short
    while after answering, so that closing does not reset the answer away."""
    body = b"x" * (4 << 20)
    async with (
        running(subject, tmp_path, linger=5.0) as server,
        await connect(server, getattr(pki, who)) as stream,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_send_ignoring_errors, stream, build("PUT", "/registry", body))
            status, _, data = await read_response(stream)
        assert status == 403
        assert_error_shape(json.loads(data))
    assert subject.store.versions() == {"registry": 1}


async def _send_ignoring_errors(stream: ByteStream, data: bytes) -> None:
    try:
        for start in range(0, len(data), 65536):
            await stream.send(data[start : start + 65536])
    except NETWORK_ERRORS:
        return  # the server closed after its answer


# --- room for operators -------------------------------------------------------------------------
async def test_silent_sockets_do_not_keep_operators_out(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path, max_connections=2) as server:
        silent = [raw_socket(server, "127.0.0.2") for _ in range(40)]
        local = [socket.socket(socket.AF_UNIX) for _ in range(5)]
        try:
            for s in local:
                s.connect(str(server.socket))
            await anyio.sleep(0.2)
            with anyio.fail_after(2):
                for _ in range(3):
                    assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
        finally:
            for s in silent + local:
                s.close()
        assert server.counter("evicted") >= 40 - AdminLimits().max_silent_per_source


async def test_non_operators_do_not_count_against_the_operators_cap(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with (
        running(subject, tmp_path, max_connections=1) as server,
        await connect(server, pki.host),
        await connect(server, pki.service),
    ):
        with anyio.fail_after(2):
            assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")


async def test_an_operator_past_the_cap_gets_503_with_a_hint(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path, max_connections=1) as server:
        async with await connect(server, pki.alice) as first:
            await first.send(build("GET", "/healthz"))
            assert (await read_response(first))[0] == 200
            status, body = await call(server, pki.alice, "GET", "/healthz")
            assert status == 503
            assert_error_shape(body)
            assert body["hint"]
            await first.send(build("GET", "/healthz"))  # the first one is still served
            assert (await read_response(first))[0] == 200
        assert server.counter("over_capacity") == 1
        with anyio.fail_after(2):
            while server.admin.sessions:
                await anyio.sleep(0.01)
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
    assert [e.reason for e in subject.events(ConnectionRefused)] == ["over_capacity"]


async def test_a_full_gate_evicts_the_oldest_silent_socket(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path, max_silent=3, max_silent_per_source=3) as server:
        socks = [raw_socket(server, f"127.0.0.{2 + i}") for i in range(3)]
        await anyio.sleep(0.2)  # accepted in this order
        socks.append(raw_socket(server, "127.0.0.9"))
        try:
            assert await closed_by_server(socks[0], within=2)
            for s in socks[1:]:
                assert not await closed_by_server(s, within=0.1)
            assert server.counter("evicted") == 1
        finally:
            for s in socks:
                s.close()
    refused = subject.events(ConnectionRefused)
    assert [(e.listener, e.reason, e.peer.split(":")[0]) for e in refused] == [
        ("admin", "evicted", "127.0.0.2")
    ]


async def test_one_source_evicts_only_its_own_sockets(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path, max_silent_per_source=2) as server:
        honest = raw_socket(server, "127.0.0.1")
        await anyio.sleep(0.1)
        flood = [raw_socket(server, "127.0.0.2") for _ in range(6)]
        try:
            assert all([await closed_by_server(s, within=2) for s in flood[:4]])
            assert not await closed_by_server(honest, within=0.2)
            assert not await closed_by_server(flood[-1], within=0.1)
        finally:
            for s in [honest, *flood]:
                s.close()


@pytest.mark.parametrize(
    ("first", "room"),
    [(client_hello_bytes(), "max_handshakes"), (b"\x16\x03\x01\x02\x00", "max_silent")],
    ids=["whole-hello", "partial-hello"],
)
async def test_stalled_handshakes_are_bounded(
    subject: Subject, pki: Pki, tmp_path: Path, first: bytes, room: str
) -> None:
    """Peers that start a handshake and stall hold at most ``room`` slots: a whole
    ClientHello a handshake slot, part of one only a silent slot (no TLS state)."""
    async with running(subject, tmp_path, **{room: 2}) as server:
        socks = [raw_socket(server, f"127.0.0.{2 + i}") for i in range(3)]
        try:
            for s in socks:
                s.sendall(first)  # then nothing
                await anyio.sleep(HANDSHAKE_GRACE + 0.05)  # past it: the oldest may be evicted
            assert await closed_by_server(socks[0], within=2)
            assert not await closed_by_server(socks[2], within=0.1)
            assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
        finally:
            for s in socks:
                s.close()
    assert [e.reason for e in subject.events(ConnectionRefused)][:1] == ["evicted"]


async def test_a_socket_closed_before_a_word_costs_no_handshake(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path) as server:
        raw_socket(server).close()
        with anyio.fail_after(2):
            while not subject.events(HandshakeFailed):
                await anyio.sleep(0.01)
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
    assert [e.reason for e in subject.events(HandshakeFailed)] == ["closed"]


async def test_a_flood_of_failures_is_counted_in_full_and_logged_in_brief(
    subject: Subject, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshd.admin")
    async with running(subject, tmp_path) as server:
        for _ in range(10):
            with raw_socket(server) as s:
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
                assert await closed_by_server(s, within=2)
            with pytest.raises(NETWORK_ERRORS):
                await call(server, pki.stranger, "GET", "/healthz")
            assert (await call(server, pki.host, "GET", "/healthz"))[0] == 403
        assert server.counter("handshake_failures") == 20
        assert server.counter("forbidden") == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "meshd.admin.server"]
    burst = peer_lines.burst  # lines of one kind per interval; the rest are counted
    assert len([line for line in lines if "TLS handshake with" in line]) <= burst, lines
    assert len([line for line in lines if "not an operator" in line]) <= burst, lines


async def test_silent_sockets_time_out(subject: Subject, pki: Pki, tmp_path: Path) -> None:
    async with running(subject, tmp_path, handshake_timeout=0.5) as server:
        with raw_socket(server) as silent:
            assert await closed_by_server(silent, within=2)
    assert [e.reason for e in subject.events(HandshakeFailed)] == ["timeout"]


# --- no identity outlives its certificate -------------------------------------------------
def _blocking_get(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bytes, ssl.SSLSession | None, bool | None]:
    """GET /healthz in a blocking client that may resume ``session``: (answer, session, resumed)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, session=session) as tls,
    ):
        tls.sendall(build("GET", "/healthz"))
        answer = b""
        while not answer.endswith(b"ok\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer, tls.session, tls.session_reused


async def _sleep_past(when: dt.datetime, margin: float = 1.2) -> None:
    await anyio.sleep(max(0.0, when.timestamp() - time.time()) + margin)


async def test_a_saved_tls_session_does_not_outlive_the_certificate(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    bob = pki.mesh.issue("bob", "operator/bob", lifetime=dt.timedelta(seconds=3))
    ctx = client_context(bob, subject.bundle)
    async with running(subject, tmp_path) as server:
        first, session, _ = await anyio.to_thread.run_sync(_blocking_get, server.port, ctx, None)
        assert first.startswith(b"HTTP/1.1 200 ")
        await _sleep_past(not_after(bob))
        try:
            again, _, resumed = await anyio.to_thread.run_sync(
                _blocking_get, server.port, ctx, session
            )
        except (ssl.SSLError, OSError) as e:
            again, resumed = repr(e).encode(), False
        assert not again.startswith(b"HTTP/1.1 200 "), "an expired certificate was served"
        assert not resumed
    assert [e.reason for e in subject.events(HandshakeFailed)] == ["expired"]


async def test_a_kept_alive_session_gets_no_answer_after_the_certificate_expires(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    bob = pki.mesh.issue("bob", "operator/bob", lifetime=dt.timedelta(seconds=3))
    async with running(subject, tmp_path) as server, await connect(server, bob) as kept:
        await kept.send(build("GET", "/healthz"))
        assert (await read_response(kept))[0] == 200
        await _sleep_past(not_after(bob), margin=0.3)
        with pytest.raises(NETWORK_ERRORS):
            await kept.send(build("PUT", "/registry", registry_doc(7)))
            await read_response(kept, within=3)
        with anyio.fail_after(2):
            while server.admin.sessions:
                await anyio.sleep(0.01)
        assert server.counter("expired") == 1
    assert subject.store.versions() == {"registry": 1}
    assert [e.reason for e in subject.events(ConnectionRefused)] == ["expired"]


# --- the rest of HTTP ---------------------------------------------------------------------------
async def test_metrics_stats_ready(subject: Subject, pki: Pki, tmp_path: Path) -> None:
    async with running(subject, tmp_path) as server, await connect(server, pki.alice) as s:
        await s.send(build("GET", "/metrics"))
        status, headers, data = await read_response(s)
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "meshd_info" in " ".join(parse_exposition(data.decode()))
        await s.send(build("GET", "/stats"))  # same connection: keep-alive
        status, _, data = await read_response(s)
        assert (status, json.loads(data)["registry_version"]) == (200, 1)
        await s.send(build("GET", "/ready"))
        assert (await read_response(s))[::2] == (200, b"ready\n")
        subject.set_ready(False)
        await s.send(build("GET", "/ready"))
        assert (await read_response(s))[::2] == (503, b"not ready\n")


async def test_traffic_is_the_metrics_counters_as_json(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    subject.bus.publish(ConnectionOpened("inbound", "spiffe://x/svc/web", "api"))
    subject.bus.publish(RequestCompleted("inbound", "spiffe://x/svc/web", "api", "GET", 502, 0.02))
    async with running(subject, tmp_path) as server, await connect(server, pki.alice) as s:
        await s.send(build("GET", "/traffic"))
        status, headers, data = await read_response(s)
    assert (status, headers["content-type"]) == (200, "application/json")
    traffic = Traffic.from_json(json.loads(data))
    assert traffic.to_json() == json.loads(data)  # every field read back as it was sent
    assert [(e.source, e.destination, e.classes) for e in traffic.http] == [
        ("spiffe://x/svc/web", "api", {"5xx": 1})
    ]
    assert [(e.direction, e.opened, e.open) for e in traffic.tcp] == [("inbound", 1, 1)]
    assert traffic.started <= traffic.taken


async def test_oversized_header_is_431_and_server_keeps_serving(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path) as server:
        async with await connect(server, pki.alice) as s:
            await s.send(build("GET", "/healthz", extra=f"X-Big: {'a' * 20000}\r\n"))
            status, headers, _ = await read_response(s)
        assert (status, headers["connection"]) == (431, "close")
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")


async def test_oversized_body_is_413(subject: Subject, pki: Pki, tmp_path: Path) -> None:
    async with running(subject, tmp_path, max_body_bytes=100) as server:
        status, body = await call(
            server, pki.alice, "PUT", "/registry", {"version": 2, "pad": "x" * 200}
        )
    assert status == 413
    assert_error_shape(body)
    assert subject.store.versions() == {"registry": 1}


async def test_a_slow_request_is_408(subject: Subject, pki: Pki, tmp_path: Path) -> None:
    async with (
        running(subject, tmp_path, read_timeout=0.3) as server,
        await connect(server, pki.alice) as s,
    ):
        await s.send(b"PUT /registry HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        status, headers, _ = await read_response(s)
    assert (status, headers["connection"]) == (408, "close")


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xff\x13garbage\r\n\r\n", b"GET /healthz\r\n\r\n", b"GET / HTTP/1.1\r\n bad\r\n\r\n",
     b"PUT /registry HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
     b"PUT /registry HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"],
)  # fmt: skip
async def test_garbage_gets_an_error_and_server_keeps_serving(
    subject: Subject, pki: Pki, tmp_path: Path, garbage: bytes
) -> None:
    async with running(subject, tmp_path) as server:
        async with await connect(server, pki.alice) as s:
            await s.send(garbage)
            status, _, body = await read_response(s)
        assert status in (400, 501)
        assert_error_shape(json.loads(body))
        assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")


async def test_new_connections_use_reloaded_certificates(
    subject: Subject, pki: Pki, tmp_path: Path
) -> None:
    async with running(subject, tmp_path) as server, await connect(server, pki.alice) as before:
        renewed = pki.server2
        subject.set_tls(TlsMaterial.load(renewed.cert, renewed.key, renewed.bundle))
        async with await connect(server, pki.alice) as after:
            for stream, name in [(before, "h0.pem"), (after, "h0-renewed.pem")]:
                der = stream.extra(TLSAttribute.peer_certificate_binary)
                assert der is not None
                assert ssl.DER_cert_to_PEM_cert(der) in (pki.mesh.dir / name).read_text()
                await stream.send(build("GET", "/healthz"))
                assert (await read_response(stream))[0] == 200


# --- the unix socket ------------------------------------------------------------------------------
async def unix_call(path: Path, request: bytes) -> tuple[int, dict[str, str], bytes]:
    async with await anyio.connect_unix(path) as stream:
        await stream.send(request)
        return await read_response(stream)


async def test_unix_socket_serves_health_only(subject: Subject, tmp_path: Path) -> None:
    stale = tmp_path / "run" / "admin.sock"
    stale.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as old:  # left behind by a crashed meshd
        old.bind(str(stale))
    async with running(subject, tmp_path) as server:
        assert stat.S_IMODE(server.socket.stat().st_mode) == 0o660
        assert (await unix_call(server.socket, build("GET", "/healthz")))[::2] == (200, b"ok\n")
        status, _, body = await unix_call(server.socket, build("GET", "/stats"))
        assert (status, json.loads(body)["registry_version"]) == (200, 1)
        assert (await unix_call(server.socket, build("GET", "/ready")))[0] == 200
        for method in ("GET", "PUT", "POST", "DELETE"):
            for path in [*DOCUMENT_PATHS, "/metrics", "/traffic"]:
                status, _, body = await unix_call(
                    server.socket, build(method, path, registry_doc(7))
                )
                assert status == 403, (method, path)
                assert "mutual TLS" in json.loads(body)["hint"]
        assert (await unix_call(server.socket, build("GET", "/x")))[0] == 404
        assert (await unix_call(server.socket, build("POST", "/healthz")))[0] == 405
        assert (await unix_call(server.socket, b"\x01\x02\r\n\r\n"))[0] == 400
    assert not server.socket.exists()
    assert subject.store.versions() == {"registry": 1}


async def test_unix_socket_has_its_own_room(subject: Subject, pki: Pki, tmp_path: Path) -> None:
    async with running(subject, tmp_path, max_local_connections=2) as server:
        held = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        try:
            for s in held:
                s.connect(str(server.socket))
            await anyio.sleep(0.1)
            status, _, body = await unix_call(server.socket, build("GET", "/healthz"))
            assert status == 503
            assert_error_shape(json.loads(body))
            assert await call(server, pki.alice, "GET", "/healthz") == (200, "ok\n")
        finally:
            for s in held:
                s.close()


# --- binding ------------------------------------------------------------------------------------
async def test_bind_errors_are_reported_before_started(subject: Subject, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConnectError, match=f"cannot listen on 127.0.0.1:{port}") as info:
            await AdminServer(subject.backend).serve(("127.0.0.1", port), tmp_path / "admin.sock")
    assert info.value.hint
    assert not (tmp_path / "admin.sock").exists()


async def test_socket_path_that_is_not_a_socket_is_refused(
    subject: Subject, tmp_path: Path
) -> None:
    (tmp_path / "admin.sock").write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        await AdminServer(subject.backend).serve(("127.0.0.1", 0), tmp_path / "admin.sock")
    assert (tmp_path / "admin.sock").read_text() == "precious"


# --- the HTTP head parser -----------------------------------------------------------------------
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


# --- POST /renew ----------------------------------------------------------------------
async def test_post_renew_asks_the_daemon_to_renew_now(pki: Pki, tmp_path: Path) -> None:
    subject = fake_subject(pki)
    backend = subject.backend
    assert isinstance(backend, FakeBackend)
    async with running(subject, tmp_path) as server:
        assert await call(server, pki.alice, "POST", "/renew") == (202, {"renewing": True})
        status, body = await call(server, pki.alice, "GET", "/renew")
        assert status == 405, body
    assert backend.renewals_asked == 1
