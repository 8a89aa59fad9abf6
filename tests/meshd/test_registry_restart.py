"""At start, meshd runs its files with the stored pushed documents on top.

The newer of the registry file and the pushed registry wins. A stored
document that no longer validates (an expired pushed certificate, a registry
an older meshd accepted) is set aside and reported; meshd starts on its files.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshctl.ca import sign_csr
from meshd.pki import build_csr, cert_pem
from tests.meshd.harness import Meshd, MeshNet, admin_call, client_context
from tests.meshd.tlsfixtures import Identity
from tests.poll import until


@pytest.mark.parametrize(
    ("file_version", "expected"),
    [(3, 3), (1, 2)],  # meshctl rewrote the file with a newer version / an older file
    ids=["the file is newer", "the push is newer"],
)
def test_the_newer_registry_wins_at_start(net: MeshNet, file_version: int, expected: int) -> None:
    operator = client_context(net.pki.issue("ops", "operator/ops"))
    meshd = net.start("a")
    address = ("127.0.0.1", meshd.ports["admin"])
    pushed = {"version": 2, "services": {}}
    status, body = admin_call(address, operator, "PUT", "/registry", json.dumps(pushed).encode())
    assert status == 200, body
    meshd.stop()
    net.registry["version"] = file_version
    meshd = net.start("a")  # same state dir: the push is remembered
    status, body = admin_call(("127.0.0.1", meshd.ports["admin"]), operator, "GET", "/registry")
    assert status == 200 and json.loads(body)["version"] == expected, body


def stats(net: MeshNet, meshd: Meshd) -> dict[str, Any]:
    status, text = net.admin(meshd, "GET", "/stats")
    assert status == 200, text
    return json.loads(text)  # type: ignore[no-any-return]


def store_as_an_older_meshd(net: MeshNet, name: str, kind: str, doc: dict[str, Any]) -> Path:
    """Write a document into ``name``'s state directory, as a meshd that accepted it would."""
    state = net.dir / f"{name}-state"
    state.mkdir(exist_ok=True)
    path = state / f"{kind}.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


def bad_registry(mesh_port: int, **endpoint: Any) -> dict[str, Any]:
    entry = {"host": "b", "address": "127.0.0.1", "port": 8080, "mesh_port": mesh_port}
    return {
        "version": 9,
        "services": {"api": {"vip": "10.255.0.9", "port": 8080, "endpoints": [entry | endpoint]}},
    }


@pytest.mark.parametrize(
    ("endpoint", "vip", "words"),
    [
        ({"host": "B_Host"}, None, "services.api.endpoints[0].host"),
        ({}, "10.0.0.9", "services.api.vip"),  # outside the default vip_range 10.255.0.0/16
        ({"labels": {"zone": "a\nINFO meshd: forged"}}, None, "labels"),
    ],
    ids=["endpoint-host", "vip-outside-range", "label"],
)
def test_a_stored_registry_that_no_longer_validates_is_set_aside(
    net: MeshNet, endpoint: dict[str, Any], vip: str | None, words: str
) -> None:
    """meshd starts on its registry file, says so, and no connection can crash it."""
    b = net.start("b", services={"api": 8080})
    doc = bad_registry(b.ports["mesh"], **endpoint)
    if vip:
        doc["services"]["api"]["vip"] = vip
    stored = store_as_an_older_meshd(net, "a", "registry", doc)
    a = net.start("a", upstreams={"api": 0})
    for _ in range(3):  # an older meshd crashed on the first dial here
        assert refused(a.ports["upstream:api"])  # no service api in the file's registry
    assert a.proc.poll() is None, a.log_text()
    report = stats(net, a)
    aside = report["documents_set_aside"]["registry"]
    print(f"\nset aside: {aside}")
    assert aside["version"] == 9 and words in aside["reason"]
    assert aside["kept"] == str(stored.with_name("registry.rejected.json"))
    assert report["registry_version"] == 1 and report["documents"]["registry"] == 1
    assert report["reload"]["ok"] and "set aside" in report["reload"]["message"]
    assert net.metric(a, "meshd_document_set_aside", kind="registry") == 1
    assert net.metric(a, "meshd_document_set_aside", kind="certs") == 0
    assert "set aside the pushed registry document version 9" in a.log_text()
    assert "Traceback" not in a.log_text()
    assert json.loads(stored.with_name("registry.rejected.json").read_text()) == doc
    assert json.loads(stored.read_text())["version"] == 1  # the file's, now the store's
    a.stop()
    assert a.proc.returncode == 0


def test_an_expired_pushed_certificate_does_not_stop_a_restart(net: MeshNet) -> None:
    """The files' certificate is valid: meshd starts on it and sets the pushed one aside.

    The push outlasted the files' first certificate (or it would be refused);
    meshctl join put a new one into the files while meshd was down.
    """
    ident = net.pki.issue("a", "host/a", lifetime=dt.timedelta(seconds=4))
    a = net.start("a", identity=ident)
    short = net.pki.reissue(ident, "a-short", lifetime=dt.timedelta(seconds=6))
    body = {
        "version": 2,
        "cert_pem": short.cert.read_text(),
        "bundle_pem": net.pki.bundle.read_text(),
    }
    assert net.admin(a, "PUT", "/certs", body)[0] == 200
    a.stop()
    until(lambda: _expired(short.cert), 10, "the pushed certificate expires")
    net.pki.reissue(ident, "a")  # the files, renewed
    a = net.start("a", identity=ident)
    report = stats(net, a)
    assert report["certificate_not_after"] == _not_after(ident.cert).isoformat()
    aside = report["documents_set_aside"]["certs"]
    print(f"\nset aside: {aside}")
    assert aside["version"] == 2 and "certs:" in aside["reason"]
    assert "certs" not in report["documents"]
    assert net.metric(a, "meshd_document_set_aside", kind="certs") == 1
    assert net.admin(a, "GET", "/certs")[0] == 404
    fresh = net.pki.reissue(ident, "a-fresh")  # a new push is taken, whatever its version
    body |= {"version": 1, "cert_pem": fresh.cert.read_text()}
    assert net.admin(a, "PUT", "/certs", body)[0] == 200
    assert stats(net, a)["documents_set_aside"] == {}


def test_a_stored_policy_with_rules_is_set_aside(net: MeshNet) -> None:
    store_as_an_older_meshd(net, "a", "policy", {"version": 4, "allow": [{"to": "api"}]})
    a = net.start("a")
    aside = stats(net, a)["documents_set_aside"]["policy"]
    assert aside["version"] == 4 and "unknown fields" in aside["reason"]


def refused(port: int) -> bool:
    """True when meshd closes (or resets) a connection to ``port`` without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
            return s.recv(100) == b""
        except ConnectionResetError:
            return True


def _not_after(cert: Path) -> dt.datetime:
    from cryptography import x509  # noqa: PLC0415

    return x509.load_pem_x509_certificates(cert.read_bytes())[0].not_valid_after_utc


def _expired(cert: Path) -> bool:
    return _not_after(cert) < dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)


def cert_for(net: MeshNet, identity: Identity, start_hours: float, hours: float) -> str:
    """A certificate for ``identity``'s key and names, valid ``hours`` from ``start_hours`` on."""
    key = serialization.load_pem_private_key(identity.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ids, issuing = list(identity.ids), net.pki.ca.issuing
    start = dt.datetime.now(dt.UTC) + dt.timedelta(hours=start_hours)
    cert = sign_csr(build_csr(key, ids), ids, issuing, start, dt.timedelta(hours=hours))
    return cert_pem(cert, issuing.cert).decode()


def certs_doc(net: MeshNet, version: int, cert: str) -> dict[str, Any]:
    return {"version": version, "cert_pem": cert, "bundle_pem": net.pki.bundle.read_text()}


def _pem_not_after(pem: str) -> str:
    from cryptography import x509  # noqa: PLC0415

    return x509.load_pem_x509_certificates(pem.encode())[0].not_valid_after_utc.isoformat()


def test_a_valid_pushed_certificate_starts_meshd_whose_file_certificate_expired(
    net: MeshNet,
) -> None:
    """The bootstrap certificate from join has expired; the one pushed since has not."""
    ident = net.pki.issue("a", "host/a")
    pushed = cert_for(net, ident, 0, 2)
    store_as_an_older_meshd(net, "a", "certs", certs_doc(net, 2, pushed))
    ident.cert.write_text(cert_for(net, ident, -3, 2))  # expired an hour ago
    a = net.start("a", identity=ident)
    report = stats(net, a)
    print(f"\ncertificate: {report['certificate']}")
    assert report["certificate_not_after"] == _pem_not_after(pushed)
    assert report["certificate"]["layer"] == "pushed" and report["certificate"]["version"] == 2
    assert "expired" in report["certificate"]["reason"]
    assert report["documents_set_aside"] == {} and report["documents"]["certs"] == 2
    assert "certificate from pushed certs version 2" in report["reload"]["message"]
    assert "certificate from pushed certs version 2" in a.log_text()


def test_meshd_does_not_start_without_any_valid_certificate_and_keeps_the_push(
    net: MeshNet,
) -> None:
    ident = net.pki.issue("a", "host/a")
    stored = store_as_an_older_meshd(
        net, "a", "certs", certs_doc(net, 2, cert_for(net, ident, -3, 2))
    )
    ident.cert.write_text(cert_for(net, ident, -5, 2))
    with pytest.raises(AssertionError, match="no log line matching"):
        net.start("a", identity=ident)
    a = net.procs[-1]
    assert a.proc.wait(10) != 0
    error = a.log_text()
    print(f"\n{error}")
    assert (
        "no valid certificate" in error and str(ident.cert) in error and "certs version 2" in error
    )
    assert stored.exists() and not stored.with_name("certs.rejected.json").exists()


def test_a_stored_config_nested_too_deeply_is_set_aside(net: MeshNet) -> None:
    deep = '[log]\nlevel = "info"\nx = ' + "[" * 5000 + "]" * 5000 + "\n"
    store_as_an_older_meshd(net, "a", "config", {"version": 3, "toml": deep})
    a = net.start("a")
    aside = stats(net, a)["documents_set_aside"]["config"]
    assert aside["version"] == 3 and aside["reason"] == "config: toml: nested too deeply to read"
    assert "Traceback" not in a.log_text()
