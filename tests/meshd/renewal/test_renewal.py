"""A real meshd renews its certificate from an issuer, on schedule or when asked.

The issuer is a fake but real one (``fakeissuer``): mutual TLS, POST /issue,
signing with the test CA. Certificates live seconds, so that renewal is
due within the test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.host.reloading import local_stats
from meshd.tls.context import serial_of
from tests.meshd.harness import Meshd, MeshNet
from tests.meshd.renewal.fakeissuer import FakeIssuer
from tests.meshd.test_trust import bob_reads_stats, operator_of
from tests.meshd.tlsfixtures import Identity, TestPki
from tests.poll import until


@pytest.fixture
def issuer(net: MeshNet) -> Iterator[FakeIssuer]:
    fake = FakeIssuer(net.pki)
    try:
        yield fake
    finally:
        fake.release()
        fake.stop()


def stats(net: MeshNet, meshd: Meshd) -> dict[str, Any]:
    status, text = net.admin(meshd, "GET", "/stats")
    assert status == 200, text
    return json.loads(text)  # type: ignore[no-any-return]


def served_serial(meshd: Meshd, operator: Identity) -> str:
    """The serial of the certificate meshd presents to a new connection (its admin port)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(operator.bundle)
    ctx.load_cert_chain(operator.cert, operator.key)
    address = ("127.0.0.1", meshd.ports["admin"])
    with socket.create_connection(address, timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        peer = tls.getpeercert()
    assert peer
    return serial_of(peer)


def renewed_file(net: MeshNet, name: str) -> Path:
    return net.dir / f"{name}-state" / "identity" / "renewed.pem"


def start_with_issuer(
    net: MeshNet, issuer: FakeIssuer, name: str, lifetime: float, *paths: str
) -> tuple[Meshd, Identity]:
    net.registry["issuers"] = [issuer.registry_entry()]
    ident = net.pki.issue(name, f"host/{name}", *paths, lifetime=dt.timedelta(seconds=lifetime))
    return net.start(name, identity=ident), ident


def test_meshd_renews_again_and_again_with_fresh_keys(net: MeshNet, issuer: FakeIssuer) -> None:
    net.add_service("api", 8080, "a", mesh_port=1)  # api is a's; old is no longer anyone's
    meshd, _ = start_with_issuer(net, issuer, "a", 6, "svc/api", "svc/old")
    until(lambda: len(issuer.signed) >= 3, 30, "three renewals")
    until(lambda: stats(net, meshd)["renewal"]["renewals"] >= 3, 5, "meshd counting them")
    keys = [s.public_key for s in issuer.signed]
    assert len(set(keys)) == len(keys)  # a fresh key every time
    assert {s.ids for s in issuer.signed} == {("spiffe://t.mesh/host/a", "spiffe://t.mesh/svc/api")}
    now = stats(net, meshd)
    assert now["pid"] == meshd.proc.pid  # swapped without a restart
    assert now["certificate"]["layer"] == "renewed"
    assert now["renewal"]["state"] == "ok" and now["renewal"]["issuer"] == "issuer1"
    assert now["certificate_serial"] in {s.serial for s in issuer.signed[-2:]}
    assert served_serial(meshd, net.operator) in {s.serial for s in issuer.signed[-2:]}
    assert stat.S_IMODE(renewed_file(net, "a").stat().st_mode) == 0o600
    assert net.metric(meshd, "meshd_certificate_renewals_total", result="ok") >= 3
    assert meshd.proc.poll() is None


def test_a_renewal_without_some_services_asked_for_is_kept(
    net: MeshNet, issuer: FakeIssuer
) -> None:
    """An issuer whose registry no longer gives a its service signs the host ID alone."""
    issuer.misbehave = "host-only"
    net.add_service("api", 8080, "a", mesh_port=1)
    meshd, _ = start_with_issuer(net, issuer, "a", 6, "svc/api")
    until(lambda: stats(net, meshd)["renewal"]["renewals"] >= 1, 15, "a renewal kept")
    first = issuer.signed[0]
    assert first.asked == ("spiffe://t.mesh/host/a", "spiffe://t.mesh/svc/api")
    assert first.ids == ("spiffe://t.mesh/host/a",)
    assert stats(net, meshd)["certificate"]["layer"] == "renewed"
    assert served_serial(meshd, net.operator) in {s.serial for s in issuer.signed}


def test_issuers_down_keep_the_certificate_and_back_off(net: MeshNet, issuer: FakeIssuer) -> None:
    issuer.stop()
    issuer.lifetime = dt.timedelta(seconds=60)  # when it returns: longer than what meshd runs
    meshd, _ = start_with_issuer(net, issuer, "a", 40)
    serial = stats(net, meshd)["certificate_serial"]
    status, body = net.admin(meshd, "POST", "/renew")
    assert (status, json.loads(body)) == (202, {"renewing": True})
    until(lambda: stats(net, meshd)["renewal"]["failures"] >= 3, 20, "three failed rounds")
    report = stats(net, meshd)
    assert report["certificate_serial"] == serial  # kept
    assert report["renewal"]["state"] == "failing"
    assert "issuer1 (127.0.0.1" in report["renewal"]["last_error"]
    assert net.metric(meshd, "meshd_certificate_renewals_total", result="failed") >= 3
    waits = [
        float(w)
        for w in re.findall(r"in a row\), keeping .*; next try in ([\d.]+)s", meshd.log_text())
    ]
    for n, wait in enumerate(waits[:3]):  # 1 s doubling, half of it jittered
        assert 2**n / 2 <= wait <= 2**n, waits
    issuer.start()  # it returns: renewal happens long before the 40 s expiry
    until(lambda: stats(net, meshd)["renewal"]["state"] == "ok", 15, "recovery")
    report = stats(net, meshd)
    assert report["certificate_serial"] == issuer.signed[-1].serial != serial
    assert report["renewal"]["failures"] == 0 and report["renewal"]["renewals"] == 1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_an_overdue_certificate_without_issuers_costs_no_cpu(net: MeshNet) -> None:
    meshd = net.start("a", identity=net.pki.issue("a", "host/a", lifetime=dt.timedelta(seconds=2)))
    time.sleep(2)  # due after 1.2-1.4 s, and no issuer in the registry to ask
    before = cpu_seconds(meshd.proc.pid)
    time.sleep(2)
    assert cpu_seconds(meshd.proc.pid) - before < 0.3
    report = local_stats(net.dir / "a.sock")  # the local socket answers whatever meshd runs
    assert report.renewal is not None and report.renewal.state == "off"


def test_an_issuer_without_its_host_identity_is_not_asked(net: MeshNet, issuer: FakeIssuer) -> None:
    net.registry["issuers"] = [{**issuer.registry_entry(), "host": "issuer2"}]
    meshd = net.start("a", identity=net.pki.issue("a", "host/a"))
    assert net.admin(meshd, "POST", "/renew")[0] == 202
    until(lambda: stats(net, meshd)["renewal"]["failures"] >= 1, 10, "a failed round")
    error = stats(net, meshd)["renewal"]["last_error"]
    assert "does not hold spiffe://t.mesh/host/issuer2" in error, error
    assert issuer.requests == 0 and issuer.signed == []


@pytest.mark.parametrize(
    ("misbehave", "words"),
    [
        ("other-key", "its certificate does not load"),  # not for the key meshd made
        ("huge", "its answer is larger than 65536 bytes"),
        ("ca", "its certificate is a CA certificate, not a leaf"),
        ("short", "before the one we run"),  # 5 s, when meshd runs one for 60 s
        ("extra", "what we did not ask for: spiffe://t.mesh/svc/x"),
    ],
)
def test_a_bad_answer_is_refused_and_the_certificate_kept(
    net: MeshNet, issuer: FakeIssuer, misbehave: str, words: str
) -> None:
    issuer.misbehave = misbehave
    meshd, _ = start_with_issuer(net, issuer, "a", 60)
    serial = stats(net, meshd)["certificate_serial"]
    assert net.admin(meshd, "POST", "/renew")[0] == 202
    until(lambda: stats(net, meshd)["renewal"]["failures"] >= 1, 10, "a failed round")
    report = stats(net, meshd)
    assert words in report["renewal"]["last_error"], report["renewal"]
    assert report["certificate_serial"] == serial
    assert not renewed_file(net, "a").exists()


def test_kill_9_mid_renewal_leaves_a_valid_certificate(net: MeshNet, issuer: FakeIssuer) -> None:
    issuer.lifetime = dt.timedelta(minutes=5)
    meshd, ident = start_with_issuer(net, issuer, "a", 120)
    first = stats(net, meshd)["certificate_serial"]
    issuer.hold()  # the key is made and the CSR sent; the answer does not come
    assert net.admin(meshd, "POST", "/renew")[0] == 202
    until(lambda: issuer.requests == 1, 10, "the request in flight")
    assert (renewed_file(net, "a").parent / "pending-key.pem").exists()
    os.kill(meshd.proc.pid, signal.SIGKILL)
    meshd.proc.wait()
    issuer.release()
    meshd = net.start("a", identity=ident)
    assert stats(net, meshd)["certificate_serial"] == first  # the old pair, whole
    assert not renewed_file(net, "a").exists()

    assert net.admin(meshd, "POST", "/renew")[0] == 202  # now the write happens ...
    until(lambda: stats(net, meshd)["renewal"]["renewals"] == 1, 10, "a renewal")
    renewed = stats(net, meshd)["certificate_serial"]
    meshd.proc.send_signal(signal.SIGHUP)  # a reload weighs the three candidates: renewed wins
    until(lambda: stats(net, meshd)["reload"]["generation"] == 1, 10, "the reload")
    report = stats(net, meshd)
    assert (report["certificate_serial"], report["certificate"]["layer"]) == (renewed, "renewed")
    os.kill(meshd.proc.pid, signal.SIGKILL)  # ... and the kill comes after it
    meshd.proc.wait()
    meshd = net.start("a", identity=ident)
    report = stats(net, meshd)
    assert (report["certificate_serial"], report["certificate"]["layer"]) == (renewed, "renewed")


def test_a_broken_renewed_certificate_is_set_aside_at_start(
    net: MeshNet, issuer: FakeIssuer
) -> None:
    meshd, ident = start_with_issuer(net, issuer, "a", 120)
    meshd.stop()
    path = renewed_file(net, "a")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    meshd = net.start("a", identity=ident)
    assert stats(net, meshd)["certificate"]["layer"] == "files"
    meshd.wait_log(r"renewed certificate set aside: .*renewed\.pem")


def test_a_trust_push_during_a_round_holds_after_the_swap(
    net: MeshNet, issuer: FakeIssuer, tmp_path: Path
) -> None:
    issuer.lifetime = dt.timedelta(minutes=20)
    meshd, _ = start_with_issuer(net, issuer, "a", 600)
    other = TestPki(tmp_path / "other")
    bob = operator_of(other, net, tmp_path)
    issuer.hold()  # the CSR is sent, the answer waits
    assert net.admin(meshd, "POST", "/renew")[0] == 202
    until(lambda: issuer.requests >= 1, 10, "the request in flight")
    bundle = net.pki.bundle.read_text() + other.bundle.read_text()
    status, body = net.admin(meshd, "PUT", "/trust", {"version": 1, "bundle_pem": bundle})
    assert status == 200, body
    assert bob_reads_stats(meshd, bob) == 200
    issuer.release()
    until(lambda: stats(net, meshd)["renewal"]["renewals"] >= 1, 10, "the renewal")
    assert stats(net, meshd)["certificate_serial"] == issuer.signed[-1].serial
    assert bob_reads_stats(meshd, bob) == 200, "the swap brought the old bundle back"
    meshd.proc.send_signal(signal.SIGHUP)  # and a reload weighs renewed.pem under the trust
    until(lambda: stats(net, meshd)["reload"]["generation"] == 1, 10, "the reload")
    assert stats(net, meshd)["certificate"]["layer"] == "renewed"
    assert bob_reads_stats(meshd, bob) == 200
