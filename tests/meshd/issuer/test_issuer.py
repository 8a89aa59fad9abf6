"""An issuer meshd over real mutual TLS on loopback: what it signs, what it refuses, who may ask.

A real ``Daemon`` is built in-process from a config file, certificates from
a test CA and a registry (its listeners are never bound); its admin API
runs on a loopback port. The operator makes it an issuer as meshctl does
(``POST /issuer/csr``, the CSR signed by the root, ``PUT /issuer``); hosts
then ask it for leaves with their own certificates.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from meshd.admin.server import AdminLimits, AdminServer
from meshd.config import MeshdConfig
from meshd.daemon import Daemon
from meshd.identity import SpiffeId
from meshd.issuer import service
from meshd.pki import build_csr, cert_pem, generate_key, private_pem, spiffe_ids
from meshd.telemetry.events import HandshakeFailed
from meshd.telemetry.logs import Throttle
from meshd.tls.context import TlsMaterial
from tests.meshd.admin.test_admin import (
    NETWORK_ERRORS,
    Server,
    Subject,
    build,
    call,
    connect,
    read_response,
)
from tests.meshd.issuer.issuers import sign_issuer_ca
from tests.meshd.tlsfixtures import TD, Identity, TestPki

pytestmark = pytest.mark.anyio
LEAF_LIFETIME = 600


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": True}  # as the daemon runs


@dataclass
class Pki:
    mesh: TestPki
    server: Identity  # host/h0: the issuer
    alice: Identity  # operator
    h1: Identity  # host/h1 with svc/api (assigned to h1) and svc/db (assigned to h2 only)
    h2: Identity  # revoked by identity
    h3: Identity  # revoked by serial
    service: Identity  # svc/api alone: no host identity
    stranger: Identity  # host/h1 from a CA nobody trusts
    expired: Identity  # host/h1, expired
    foreign_root: TestPki


@pytest.fixture(autouse=True)
def fresh_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issuer refusals are logged through a throttle: a fresh one, so that each test's count."""
    monkeypatch.setattr(service, "peer_lines", Throttle())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    mesh = TestPki(tmp_path_factory.mktemp("pki"))
    untrusted = TestPki(tmp_path_factory.mktemp("untrusted"))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    return Pki(
        mesh=mesh,
        server=mesh.issue("h0", "host/h0"),
        alice=mesh.issue("alice", "operator/alice"),
        h1=mesh.issue("h1", "host/h1", "svc/api", "svc/db"),
        h2=mesh.issue("h2", "host/h2"),
        h3=mesh.issue("h3", "host/h3"),
        service=mesh.issue("api", "svc/api"),
        stranger=untrusted.issue("h1-stranger", "host/h1"),
        expired=mesh.issue("h1-expired", "host/h1", lifetime=dt.timedelta(hours=1), now=past),
        foreign_root=untrusted,
    )


def serial_of(identity: Identity) -> str:
    cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    return format(cert.serial_number, "X")


def registry(pki: Pki) -> dict[str, Any]:
    def on(host: str, port: int) -> dict[str, Any]:
        return {"vip": f"10.255.0.{port % 200}", "port": port, "endpoints": [
            {"host": host, "address": "127.0.0.1", "port": port, "mesh_port": 15443}]}  # fmt: skip

    return {
        "version": 5,
        "services": {"api": on("h1", 8080), "db": on("h2", 5432)},
        "revoked": [
            {"host": "h2", "ids": [f"spiffe://{TD}/host/h2"], "until": 0},
            {"host": "h3", "serials": [serial_of(pki.h3)], "until": 0},
        ],
    }


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
[mesh]
registry = "{directory / "registry.json"}"
state_dir = "{directory / "state"}"
"""


def make_daemon(pki: Pki, directory: Path, *revoked: dict[str, Any]) -> Daemon:
    doc = registry(pki)
    doc["revoked"] += revoked
    (directory / "registry.json").write_text(json.dumps(doc))
    (directory / "state").mkdir(mode=0o700, exist_ok=True)
    config = directory / "meshd.toml"
    config.write_text(daemon_toml(pki.server, directory))
    daemon = Daemon(config, MeshdConfig.load(config))
    daemon.rt.ready = True
    return daemon


def _ignore(_: object) -> None:
    return None


@asynccontextmanager
async def serving(daemon: Daemon, pki: Pki, **limits: Any) -> AsyncIterator[Server]:
    rt = daemon.rt
    subject = Subject(
        "daemon", daemon.admin.backend, rt.bus, pki.server.bundle, _ignore, _ignore, tuple
    )  # only the bus and the bundle are used here
    admin = AdminServer(subject.backend, events=rt.bus, limits=AdminLimits(**limits))
    async with anyio.create_task_group() as tg:
        _host, port = await tg.start(admin.serve, ("127.0.0.1", 0), None)
        yield Server(admin, subject, port, Path("/nonexistent"))
        tg.cancel_scope.cancel()


async def make_issuer(server: Server, pki: Pki, version: int = 1, **sign: Any) -> tuple[int, Any]:
    """What ``meshctl issuer add`` does: a CSR from the host, signed by the root, pushed."""
    status, body = await call(server, pki.alice, "POST", "/issuer/csr")
    assert status == 200, body
    ca_pem = sign_issuer_ca(body["csr_pem"], "h0", pki.mesh.ca.root, TD, **sign)
    doc = {"version": version, "cert_pem": ca_pem, "leaf_lifetime": LEAF_LIFETIME}
    return await call(server, pki.alice, "PUT", "/issuer", doc)


def csr_for(*paths: str) -> tuple[str, Any]:
    key = generate_key()
    csr = build_csr(key, [SpiffeId(TD, "/" + p) for p in paths])
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def metric(daemon: Daemon, result: str) -> float:
    for line in daemon.admin.backend.metrics_text().splitlines():
        if line.startswith(f'meshd_issuer_requests_total{{result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- signing ----------------------------------------------------------------------------------
async def test_an_issuer_signs_a_renewal_for_held_and_assigned_ids(
    pki: Pki, tmp_path: Path
) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        assert await make_issuer(server, pki) == (200, {"status": "applied", "version": 1})
        csr, key = csr_for("host/h1", "svc/api")
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        status, body = await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr})
    assert status == 200, body
    leaf, issuer_ca = x509.load_pem_x509_certificates(body["cert_pem"].encode())
    assert spiffe_ids(leaf) == sorted([SpiffeId(TD, "/host/h1"), SpiffeId(TD, "/svc/api")])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    constraints = issuer_ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    assert spiffe_ids(issuer_ca) == [SpiffeId(TD, "/issuer/h0")]
    assert leaf.issuer == issuer_ca.subject and issuer_ca.issuer == pki.mesh.ca.root.cert.subject
    lifetime = leaf.not_valid_after_utc - before
    assert (
        dt.timedelta(seconds=LEAF_LIFETIME - 5) <= lifetime <= dt.timedelta(seconds=LEAF_LIFETIME)
    )
    assert body["not_after"] == leaf.not_valid_after_utc.isoformat()
    # it chains to the root through the issuer CA: for openssl, and for a real handshake
    chain, key_file = tmp_path / "renewed.pem", tmp_path / "renewed.key"
    chain.write_text(body["cert_pem"])
    key_file.write_bytes(private_pem(key))
    verify = ["openssl", "verify", "-CAfile", str(pki.server.bundle), "-untrusted", str(chain)]
    leaf_file = tmp_path / "leaf.pem"
    leaf_file.write_bytes(cert_pem(leaf))
    assert (
        subprocess.run([*verify, str(leaf_file)], capture_output=True, check=False).returncode == 0
    )
    assert TlsMaterial.load(chain, key_file, pki.server.bundle).ids == frozenset(spiffe_ids(leaf))
    assert metric(daemon, "signed") == 1
    report = daemon.admin.backend.stats().issuer
    assert report is not None and (report.signed, report.refused) == (1, 0)
    assert report.not_after == issuer_ca.not_valid_after_utc.isoformat()


async def test_a_leaf_never_outlives_the_issuer_ca(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        status, _ = await make_issuer(server, pki, lifetime=dt.timedelta(seconds=120))
        assert status == 200
        csr, _ = csr_for("host/h1")
        status, body = await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr})
    assert status == 200, body
    leaf, issuer_ca = x509.load_pem_x509_certificates(body["cert_pem"].encode())
    assert leaf.not_valid_after_utc == issuer_ca.not_valid_after_utc  # 120 s < LEAF_LIFETIME


async def test_a_service_the_registry_no_longer_assigns_is_left_out_not_refused(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """h1's registry may still list it under db: it keeps its host ID and api, logged."""
    caplog.set_level(logging.INFO, logger="meshd.issuer")
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        assert (await make_issuer(server, pki))[0] == 200
        csr, _ = csr_for("host/h1", "svc/api", "svc/db")
        status, body = await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr})
    assert status == 200, body
    leaf = x509.load_pem_x509_certificates(body["cert_pem"].encode())[0]
    assert spiffe_ids(leaf) == sorted([SpiffeId(TD, "/host/h1"), SpiffeId(TD, "/svc/api")])
    lines = [r.getMessage() for r in caplog.records if "without" in r.getMessage()]
    assert lines == [
        f"issuer: signed for {lines[0].split()[3]} without spiffe://{TD}/svc/db: registry "
        "version 5 no longer assigns service db to host h1"
    ]
    assert (metric(daemon, "signed"), metric(daemon, "refused")) == (1, 0)


async def test_a_rejoined_name_gets_leaves_only_for_certificates_since_and_from_then(
    pki: Pki, tmp_path: Path
) -> None:
    """h4 was revoked, then joined again 30 s ago: a certificate from before (a stolen copy)
    is refused; the new one is renewed, and the leaf does not start before the rejoin."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rejoined = int(now.timestamp()) - 30
    stolen = pki.mesh.issue("h4-stolen", "host/h4", now=now - dt.timedelta(minutes=20))
    # signed at the rejoin: starts 10 s after it (the test CA backdates 5 minutes)
    current = pki.mesh.issue("h4", "host/h4", now=now + dt.timedelta(seconds=280))
    entry = {"host": "h4", "ids": [f"spiffe://{TD}/host/h4"], "until": 0, "before": rejoined}
    daemon = make_daemon(pki, tmp_path, entry)
    async with serving(daemon, pki) as server:
        assert (await make_issuer(server, pki))[0] == 200
        refused = await call(server, stolen, "POST", "/issue", {"csr_pem": csr_for("host/h4")[0]})
        status, body = await call(
            server, current, "POST", "/issue", {"csr_pem": csr_for("host/h4")[0]}
        )
    assert refused[0] == 403 and "revoked (host h4, by identity" in refused[1]["error"]
    assert status == 200, body
    leaf = x509.load_pem_x509_certificates(body["cert_pem"].encode())[0]
    assert leaf.not_valid_before_utc.timestamp() == rejoined  # not backdated 60 s before it


def _ca_csr() -> str:
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{TD}/host/h1")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    )
    return (
        builder.sign(generate_key(), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def _tampered_csr() -> str:
    csr, _ = csr_for("host/h1")
    der = bytearray(x509.load_pem_x509_csr(csr.encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


REFUSALS: dict[str, tuple[str, Callable[[], str], str]] = {
    "not-held": ("h1", lambda: csr_for("host/h1", "host/h2")[0], "host/h2 is not held"),
    "no-host-id": ("h1", lambda: csr_for("svc/api")[0], "does not ask for the caller's host"),
    "revoked-by-id": ("h2", lambda: csr_for("host/h2")[0], "revoked (host h2, by identity"),
    "revoked-by-serial": ("h3", lambda: csr_for("host/h3")[0], "revoked (host h3, by serial"),
    "operator-id": ("h1", lambda: csr_for("operator/alice")[0], "not a host or service identity"),
    "monitor-id": ("h1", lambda: csr_for("monitor/prom")[0], "not a host or service identity"),
    "issuer-id": ("h1", lambda: csr_for("issuer/h1")[0], "not a host or service identity"),
    "ca-request": ("h1", _ca_csr, "asks for a CA certificate"),
    "bad-signature": ("h1", _tampered_csr, "signature does not verify"),
    "not-a-csr": ("h1", lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "not a usable"),
}


@pytest.mark.parametrize("case", REFUSALS)
async def test_refusals_are_403_logged_and_counted(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    who, make_csr, reason = REFUSALS[case]
    caplog.set_level(logging.INFO, logger="meshd.issuer")
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        assert (await make_issuer(server, pki))[0] == 200
        status, body = await call(
            server, getattr(pki, who), "POST", "/issue", {"csr_pem": make_csr()}
        )
    assert status == 403, body
    assert reason in body["error"] and body["hint"]
    lines = [r.getMessage() for r in caplog.records if "issuer: refused" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0] and f"spiffe://{TD}/host/{who}" in lines[0]
    assert "127.0.0.1:" in lines[0]  # the caller's address
    assert (metric(daemon, "refused"), metric(daemon, "signed")) == (1, 0)


@pytest.mark.parametrize(("who", "reason"), [("stranger", "untrusted"), ("expired", "expired")])
async def test_a_foreign_or_expired_certificate_never_gets_past_tls(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, who: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="meshd.admin")
    daemon = make_daemon(pki, tmp_path)
    seen = daemon.rt.bus.subscribe()
    async with serving(daemon, pki) as server:
        assert (await make_issuer(server, pki))[0] == 200
        csr, _ = csr_for("host/h1")
        with pytest.raises(NETWORK_ERRORS):
            await call(server, getattr(pki, who), "POST", "/issue", {"csr_pem": csr})
        assert server.counter("handshake_failures") == 1
    failed = [e.reason for e in seen.queue if isinstance(e, HandshakeFailed)]
    assert failed == [reason]
    lines = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert len(lines) == 1 and f"failed ({reason})" in lines[0]
    assert metric(daemon, "signed") + metric(daemon, "refused") == 0


# --- who may ask what -----------------------------------------------------------------------
async def test_a_body_over_16_kib_is_refused_without_being_read(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server, await connect(server, pki.h1) as stream:
        head = b"POST /issue HTTP/1.1\r\nHost: x\r\nContent-Length: 16385\r\n\r\n{"
        await stream.send(head)  # and never the rest: an answer must not wait for it
        status, headers, data = await read_response(stream, within=1)
    assert (status, headers["connection"]) == (413, "close")
    assert "16384" in json.loads(data)["error"]


async def test_a_host_may_only_post_issue(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        assert (await make_issuer(server, pki))[0] == 200
        for method, path in [("GET", "/stats"), ("PUT", "/issuer"), ("GET", "/issue"),
                             ("POST", "/issuer/csr"), ("PUT", "/registry")]:  # fmt: skip
            async with await connect(server, pki.h1) as stream:  # its body is never read
                await stream.send(
                    f"{method} {path} HTTP/1.1\r\nContent-Length: 99999\r\n\r\n".encode()
                )
                status, _, data = await read_response(stream, within=1)
            assert status == 403, (method, path)
            assert "operator" in json.loads(data)["error"]
        assert server.counter("forbidden") == 5
        # one request per connection: a second one on it is never answered
        csr, _ = csr_for("host/h1")
        async with await connect(server, pki.h1) as stream:
            await stream.send(build("POST", "/issue", {"csr_pem": csr}) * 2)
            assert (await read_response(stream))[0] == 200
            with anyio.fail_after(3), pytest.raises(NETWORK_ERRORS):
                while await stream.receive():
                    pass
    assert daemon.store.versions().get("issuer") == 1
    assert metric(daemon, "signed") == 1


async def test_other_identities_are_still_refused_at_once(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server, await connect(server, pki.service) as silent:
        status, headers, _ = await read_response(silent, within=1)  # before any request
    assert (status, headers["connection"]) == (403, "close")


async def test_issue_sessions_have_their_own_cap(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki, max_issue_sessions=1) as server:
        assert (await make_issuer(server, pki))[0] == 200
        csr, _ = csr_for("host/h1")
        async with await connect(server, pki.h1):  # holds the one issue session, silent
            await anyio.sleep(0.1)
            status, body = await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr})
            assert status == 503 and "POST /issue" in body["error"]
            assert (await call(server, pki.alice, "GET", "/healthz"))[0] == 200
        with anyio.fail_after(2):
            while server.admin.issuing:
                await anyio.sleep(0.01)
        assert (await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr}))[0] == 200


async def test_an_operator_gets_no_leaf_from_an_issuer(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        assert (await make_issuer(server, pki))[0] == 200
        csr, _ = csr_for("operator/alice")
        status, body = await call(server, pki.alice, "POST", "/issue", {"csr_pem": csr})
    assert status == 403 and "operators" in body["error"]
    assert metric(daemon, "signed") == 0


async def test_a_host_that_is_no_issuer_answers_503(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        csr, _ = csr_for("host/h1")
        status, body = await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr})
        assert status == 503 and "no issuer CA" in body["error"]
        assert (await call(server, pki.h1, "GET", "/stats"))[0] == 403
        assert (await call(server, pki.alice, "GET", "/issuer"))[0] == 404
    assert metric(daemon, "unavailable") == 1
    assert daemon.admin.backend.stats().issuer is None


# --- the issuer document ---------------------------------------------------------------------
def _other_key_csr(_csr: str) -> str:
    """A CSR for the issuer ID, from a key that is not this host's."""
    return (
        build_csr(generate_key(), [SpiffeId(TD, "/issuer/h0")])
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


BAD_ISSUER_CAS = {
    "not-a-ca": (dict(ca=False), "not a CA with path length 0"),
    "expired": (
        dict(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2), lifetime=dt.timedelta(days=1)),
        "expired",
    ),
    "foreign-chain": ("foreign", "not signed by a root of the trust bundle"),
    "wrong-key": ("other-key", "not the pending issuer key nor the current one"),
}


@pytest.mark.parametrize("case", BAD_ISSUER_CAS)
async def test_a_bad_issuer_ca_is_refused_naming_the_field(
    pki: Pki, tmp_path: Path, case: str
) -> None:
    variant, message = BAD_ISSUER_CAS[case]
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        _, body = await call(server, pki.alice, "POST", "/issuer/csr")
        csr = _other_key_csr(body["csr_pem"]) if variant == "other-key" else body["csr_pem"]
        root = pki.foreign_root.ca.root if variant == "foreign" else pki.mesh.ca.root
        options = variant if isinstance(variant, dict) else {}
        ca_pem = sign_issuer_ca(csr, "h0", root, TD, **options)
        doc = {"version": 1, "cert_pem": ca_pem, "leaf_lifetime": LEAF_LIFETIME}
        status, answer = await call(server, pki.alice, "PUT", "/issuer", doc)
        assert status == 400, answer
        assert answer["error"].startswith("issuer: cert_pem: ") and message in answer["error"]
        assert (await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr_for("host/h1")[0]}))[
            0
        ] == 503
    assert daemon.store.versions().get("issuer") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [({"leaf_lifetime": 59}, "leaf_lifetime"), ({"leaf_lifetime": "1h"}, "leaf_lifetime"),
     ({"extra": 1}, "extra: unknown field"), ({"cert_pem": "junk"}, "cert_pem: not a PEM")],
)  # fmt: skip
async def test_a_bad_issuer_document_is_refused_naming_the_field(
    pki: Pki, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        _, body = await call(server, pki.alice, "POST", "/issuer/csr")
        ca_pem = sign_issuer_ca(body["csr_pem"], "h0", pki.mesh.ca.root, TD)
        doc = {"version": 1, "cert_pem": ca_pem, "leaf_lifetime": LEAF_LIFETIME} | change
        status, answer = await call(server, pki.alice, "PUT", "/issuer", doc)
    assert status == 400 and message in answer["error"], answer


async def test_the_issuer_key_is_private_and_retiring_removes_it(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    keys = tmp_path / "state" / "issuer"
    async with serving(daemon, pki) as server:
        _, body = await call(server, pki.alice, "POST", "/issuer/csr")
        assert stat.S_IMODE((keys / "pending-key.pem").stat().st_mode) == 0o600
        report = daemon.admin.backend.stats().issuer
        assert report is not None and report.pending_key and not report.not_after
        ca_pem = sign_issuer_ca(body["csr_pem"], "h0", pki.mesh.ca.root, TD)
        doc = {"version": 1, "cert_pem": ca_pem, "leaf_lifetime": LEAF_LIFETIME}
        assert (await call(server, pki.alice, "PUT", "/issuer", doc))[0] == 200
        assert sorted(p.name for p in keys.iterdir()) == ["key.pem"]
        assert stat.S_IMODE((keys / "key.pem").stat().st_mode) == 0o600
        assert await call(server, pki.alice, "GET", "/issuer") == (200, doc)
        retire = {"version": 2, "cert_pem": ""}
        assert (await call(server, pki.alice, "PUT", "/issuer", retire))[0] == 200
        assert list(keys.iterdir()) == []
        csr, _ = csr_for("host/h1")
        assert (await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr}))[0] == 503
    assert daemon.admin.backend.stats().issuer is None


async def test_a_stored_issuer_is_restored_at_start_or_set_aside(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        assert (await make_issuer(server, pki))[0] == 200
    assert make_daemon(pki, tmp_path).issuer.active  # a restart: the document and key are kept
    (tmp_path / "state" / "issuer" / "key.pem").unlink()
    lost = make_daemon(pki, tmp_path)
    assert not lost.issuer.active
    why = lost.store.set_aside_documents()["issuer"].reason
    assert "not the pending issuer key nor the current one" in why


async def test_an_issuer_whose_ca_expired_answers_503(pki: Pki, tmp_path: Path) -> None:
    daemon = make_daemon(pki, tmp_path)
    async with serving(daemon, pki) as server:
        assert (await make_issuer(server, pki, lifetime=dt.timedelta(seconds=2)))[0] == 200
        await anyio.sleep(2.5)
        csr, _ = csr_for("host/h1")
        status, body = await call(server, pki.h1, "POST", "/issue", {"csr_pem": csr})
    assert status == 503, body
    assert (metric(daemon, "unavailable"), metric(daemon, "signed")) == (1, 0)
