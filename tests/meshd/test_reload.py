"""Certificate rotation under load: wrk runs through A -> B while both swap certificates.

B gets its new certificate pushed over the admin API (PUT /certs); A gets new
files and a SIGHUP. Not one request may fail, and every new handshake must
present the new certificate. An invalid push is refused and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshctl.ca import sign_csr
from meshd.config import MeshdConfig
from meshd.host.registryfiles import mark_synced, synced_version
from meshd.host.reloading import local_stats
from meshd.identity import SpiffeId
from meshd.pki import build_csr, cert_pem
from tests.meshd.harness import Meshd, MeshNet
from tests.meshd.pairs import Pair, mesh_client
from tests.meshd.tlsfixtures import Identity
from tests.poll import until

B_SERVICES = ("host/b", "svc/web", "svc/echo", "svc/fast")


def leaf(identity: Identity) -> x509.Certificate:
    return x509.load_pem_x509_certificates(identity.cert.read_bytes())[0]


def presented_serial(net: MeshNet, meshd: Meshd) -> int:
    """The serial of the certificate a new handshake with ``meshd``'s mesh port gets."""
    prober = net.pki.issue("probe", "host/probe")
    raw = socket.create_connection(("127.0.0.1", meshd.ports["mesh"]), timeout=5)
    with mesh_client(net, prober).wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def stats(net: MeshNet, meshd: Meshd) -> dict[str, object]:
    status, text = net.admin(meshd, "GET", "/stats")
    assert status == 200, text
    return json.loads(text)  # type: ignore[no-any-return]


def certs_version(net: MeshNet, meshd: Meshd) -> int:
    status, text = net.admin(meshd, "GET", "/certs")
    assert status == 200, text
    return int(json.loads(text)["version"])


def push_certs(net: MeshNet, meshd: Meshd, version: int, cert: bytes) -> tuple[int, str]:
    body = {
        "version": version,
        "cert_pem": cert.decode(),
        "bundle_pem": net.pki.bundle.read_text(),
    }
    return net.admin(meshd, "PUT", "/certs", body)


def test_certificates_swapped_under_load_without_a_failed_request(
    net: MeshNet, make_pair: Callable[..., Pair]
) -> None:
    ident_a = net.pki.issue("a", "host/a")
    ident_b = net.pki.issue("b", *B_SERVICES)
    pair = make_pair(identity_a=ident_a, identity_b=ident_b)
    a, b = pair.a, pair.b
    assert presented_serial(net, b) == leaf(ident_b).serial_number
    url = f"http://127.0.0.1:{a.ports['upstream:fast']}/"
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c20", "-d6s", "--timeout", "5s", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.5)
        # (a) B: a new certificate (same key) pushed over the admin API
        new_b = net.pki.reissue(ident_b, "b-v2")
        status, text = push_certs(net, b, 2, new_b.cert.read_bytes())
        assert (status, json.loads(text)) == (200, {"status": "applied", "version": 2}), text
        not_after = leaf(new_b).not_valid_after_utc
        assert not_after != leaf(ident_b).not_valid_after_utc
        assert stats(net, b)["certificate_not_after"] == not_after.isoformat()
        assert certs_version(net, b) == 2
        # (c) a new handshake with B gets the new certificate
        assert presented_serial(net, b) == leaf(new_b).serial_number
        time.sleep(1.0)
        # (b) A: new files in place, then SIGHUP
        new_a = net.pki.reissue(ident_a, "a")  # overwrites the files A's config names
        assert new_a.cert == ident_a.cert
        os.kill(a.proc.pid, signal.SIGHUP)
        a.wait_log(rf"reloaded {re.escape(str(a.config))} \(registry version 1\)")
        assert stats(net, a)["certificate_not_after"] == leaf(new_a).not_valid_after_utc.isoformat()
        assert presented_serial(net, a) == leaf(new_a).serial_number
        output, _ = wrk.communicate(timeout=20)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    print("\n" + output)
    assert wrk.returncode == 0, output
    match = re.search(r"(\d+) requests in ([\d.]+)s", output)
    assert match, output
    requests = int(match[1])
    print(
        f"wrk: {requests} requests in {match[2]}s across both swaps, app counted {pair.apps.requests}"
    )
    assert requests > 0
    assert "Socket errors" not in output, output
    assert "Non-2xx or 3xx responses" not in output, output
    # the swaps broke nothing: both still relay and log no failure
    pair.get()
    for meshd in (a, b):
        assert "reload failed" not in meshd.log_text()
        assert "Traceback" not in meshd.log_text()


def _signed_for_key_of(
    net: MeshNet, identity: Identity, *paths: str, hours_ago: float = 0.0
) -> bytes:
    """A 2-hour certificate for ``identity``'s key, naming ``paths``, issued ``hours_ago``."""
    key = serialization.load_pem_private_key(identity.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ids = [SpiffeId(net.pki.trust_domain, "/" + p) for p in paths]
    issuing = net.pki.ca.issuing
    then = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
    cert = sign_csr(build_csr(key, ids), ids, issuing, then, dt.timedelta(hours=2))
    return cert_pem(cert, issuing.cert)


@pytest.mark.parametrize("case", ["another-key", "expired", "other-host"])
def test_an_invalid_certificate_push_is_refused_and_changes_nothing(
    net: MeshNet, make_pair: Callable[..., Pair], case: str
) -> None:
    ident_b = net.pki.issue("b", *B_SERVICES)
    pair = make_pair(identity_b=ident_b)
    b = pair.b
    good = net.pki.reissue(ident_b, "b-v2")
    assert push_certs(net, b, 2, good.cert.read_bytes())[0] == 200
    on_disk = ident_b.cert.read_bytes()
    before = stats(net, b)["certificate_not_after"]
    if case == "another-key":
        bad = net.pki.issue("b-other", *B_SERVICES).cert.read_bytes()
    elif case == "expired":  # B's own key and names, but it expired an hour ago
        bad = _signed_for_key_of(net, ident_b, *B_SERVICES, hours_ago=3)
    else:  # B's own key, but another host's name
        bad = _signed_for_key_of(net, ident_b, "host/c", "svc/web")
    status, text = push_certs(net, b, 3, bad)
    print(f"\n{case}: {status} {json.loads(text)['error']}")
    assert status == 400, text
    assert certs_version(net, b) == 2
    assert stats(net, b)["certificate_not_after"] == before
    assert ident_b.cert.read_bytes() == on_disk
    assert presented_serial(net, b) == leaf(good).serial_number
    pair.get()  # traffic still flows through the existing link...
    with socket.create_connection(("127.0.0.1", pair.a.ports["upstream:fast"]), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"hello\n")
    b.stop()
    assert b.proc.returncode == 0


def test_stats_report_the_registry_version_meshd_sync_applied(net: MeshNet) -> None:
    """meshctl waits on this after a push: the host's rules and names follow that version."""
    record = f'[interception]\nrules_record = "{net.dir / "rules.sha256"}"'
    meshd = net.start("solo", services={"web": 1}, extra=record)
    assert stats(net, meshd)["synced_registry_version"] is None  # meshd-sync never ran
    config = MeshdConfig.load(meshd.config)
    mark_synced(config, 7)  # as ``meshd sync`` (root) notes it
    assert stats(net, meshd)["synced_registry_version"] == 7
    assert synced_version(config) == 7


def local(net: MeshNet, meshd: Meshd) -> dict[str, Any]:
    """/stats over the local socket (it answers whatever certificate meshd runs)."""
    return local_stats(net.dir / f"{meshd.name}.sock").to_json()  # meshd reload's reader


def sighup(net: MeshNet, meshd: Meshd) -> dict[str, Any]:
    """SIGHUP ``meshd`` and return the outcome of that reload, as /stats reports it."""
    before = local(net, meshd)["reload"]["generation"]
    os.kill(meshd.proc.pid, signal.SIGHUP)
    until(lambda: local(net, meshd)["reload"]["generation"] != before, 10, "the reload")
    outcome: dict[str, Any] = local(net, meshd)["reload"]
    assert outcome["generation"] == before + 1
    return outcome


def test_a_newer_registry_file_read_at_sighup_is_what_pushes_are_compared_with(
    net: MeshNet,
) -> None:
    a = net.start("a")
    net.registry["version"] = 5
    net.write_registry()
    outcome = sighup(net, a)
    assert outcome["ok"], outcome
    status, text = net.admin(a, "PUT", "/registry", {"version": 3, "services": {}})
    assert status == 409, text
    assert stats(net, a)["registry_version"] == 5
    status, text = net.admin(a, "GET", "/registry")
    assert status == 200 and json.loads(text)["version"] == 5, text


def test_a_reload_with_one_bad_file_changes_nothing_and_says_so(net: MeshNet) -> None:
    ident = net.pki.issue("a", "host/a")
    a = net.start("a", identity=ident)
    before = stats(net, a)
    net.registry["version"] = 5  # a good registry file...
    net.write_registry()
    other = net.pki.issue("other", "host/a")  # ...but a certificate for another key
    ident.cert.write_bytes(other.cert.read_bytes())
    outcome = sighup(net, a)
    print(f"\n{outcome}")
    assert not outcome["ok"] and "key" in str(outcome["message"])
    after = stats(net, a)
    assert after["registry_version"] == 1
    assert after["certificate_not_after"] == before["certificate_not_after"]
    assert "reload failed, keeping the running configuration" in a.log_text()
    assert net.metric(a, "meshd_config_last_reload_successful") == 0
    assert sighup(net, a)["ok"] is False  # the files are still bad: refused again, generation 2


def test_a_reload_puts_pushed_documents_back_on_the_new_files_or_sets_them_aside(
    net: MeshNet,
) -> None:
    """An expired pushed certificate must not make a reload of good files half-apply.

    The push outlasts the files' first certificate (or it would be refused), then
    lapses; meshctl join puts a new one into the files.
    """
    ident = net.pki.issue("a", "host/a", lifetime=dt.timedelta(seconds=4))
    a = net.start("a", identity=ident)
    short = net.pki.reissue(ident, "a-short", lifetime=dt.timedelta(seconds=6))
    assert push_certs(net, a, 2, short.cert.read_bytes())[0] == 200
    until(lambda: leaf(short).not_valid_after_utc < dt.datetime.now(dt.UTC), 10, "expiry")
    renewed = net.pki.reissue(ident, "a")  # good new files, as meshctl enrolls them
    net.registry["version"] = 5
    net.write_registry()
    outcome = sighup(net, a)
    print(f"\n{outcome}")
    assert outcome["ok"] and "pushed certs set aside" in str(outcome["message"])
    after = local(net, a)
    assert after["certificate_not_after"] == leaf(renewed).not_valid_after_utc.isoformat()
    assert after["registry_version"] == 5
    assert after["documents_set_aside"]["certs"]["version"] == 2
    assert presented_serial(net, a) == leaf(renewed).serial_number
    assert "reload failed" not in a.log_text()
    assert re.search(r"reloaded .* \(registry version 5\); pushed certs set aside", a.log_text())


def cert_for(net: MeshNet, identity: Identity, start_hours: float, hours: float) -> bytes:
    """A certificate for ``identity``'s key and names, valid ``hours`` from ``start_hours`` on."""
    key = serialization.load_pem_private_key(identity.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ids, issuing = list(identity.ids), net.pki.ca.issuing
    start = dt.datetime.now(dt.UTC) + dt.timedelta(hours=start_hours)
    cert = sign_csr(build_csr(key, ids), ids, issuing, start, dt.timedelta(hours=hours))
    return cert_pem(cert, issuing.cert)


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificates(pem)[0].serial_number


def test_a_reload_runs_a_valid_pushed_certificate_when_the_files_expired(net: MeshNet) -> None:
    ident = net.pki.issue("a", "host/a")
    a = net.start("a", identity=ident)
    pushed = cert_for(net, ident, 0, 2)
    assert push_certs(net, a, 2, pushed)[0] == 200
    ident.cert.write_bytes(cert_for(net, ident, -3, 2))  # the join-time files, expired
    net.registry["version"] = 5
    net.write_registry()
    outcome = sighup(net, a)
    print(f"\n{outcome}")
    assert outcome["ok"], outcome
    assert "certificate from pushed certs version 2" in outcome["message"]
    after = local(net, a)
    assert after["registry_version"] == 5
    assert after["certificate"]["layer"] == "pushed"
    assert "expired" in after["certificate"]["reason"]
    assert presented_serial(net, a) == serial_of(pushed)


def test_newer_files_from_a_join_win_over_a_pushed_certificate_that_expires_sooner(
    net: MeshNet,
) -> None:
    """meshctl join writes a re-signed certificate into the files, then reloads."""
    ident = net.pki.issue("a", "host/a")
    a = net.start("a", identity=ident)
    pushed = cert_for(net, ident, 0, 2)
    assert push_certs(net, a, 2, pushed)[0] == 200
    joined = cert_for(net, ident, 0, 5)
    ident.cert.write_bytes(joined)
    outcome = sighup(net, a)
    print(f"\n{outcome}")
    assert presented_serial(net, a) == serial_of(joined)
    assert outcome["ok"] and "certificate from the files" in outcome["message"], outcome
    after = local(net, a)
    assert after["certificate"] == {
        "layer": "files",
        "version": None,
        "reason": after["certificate"]["reason"],
    }
    assert "expires later" in after["certificate"]["reason"]
    assert after["certificate_not_after"] == leaf_of(joined).not_valid_after_utc.isoformat()
    assert certs_version(net, a) == 2 and after["documents_set_aside"] == {}


def test_a_pushed_certificate_that_expires_before_the_files_is_refused(net: MeshNet) -> None:
    ident = net.pki.issue("a", "host/a", lifetime=dt.timedelta(hours=5))
    a = net.start("a", identity=ident)
    status, text = push_certs(net, a, 2, cert_for(net, ident, 0, 2))
    print(f"\n{status} {text}")
    assert status == 400, text
    assert "before the certificate in the files" in json.loads(text)["error"]
    assert net.admin(a, "GET", "/certs")[0] == 404
    assert presented_serial(net, a) == leaf(ident).serial_number


def leaf_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem)[0]
