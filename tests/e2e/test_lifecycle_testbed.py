"""The identity lifecycle on real hosts: renewal under load, issuers, leave, CA rollover.

Three testbed hosts joined by the real CLI with 1-minute leaves, web1 made an
issuer; every host calls the apps of the two others through the mesh while
certificates renew every ~40 s. The tests run in order on one mesh (each
leaves it as the next needs it): renewal under load, a second issuer and
issuers stopped, kill -9 during renewals, a CA rollover under load, and
last a leave that must lock a copied identity out at once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshctl.testbed import Testbed
from meshctl.workspace import Workspace
from meshd.identity import make_id
from meshd.pki import build_csr, cert_pem, generate_key, private_pem, sign_csr
from meshd.stats import RenewalReport, Stats
from meshd.tls.context import ALPN_LINK_2
from tests.e2e.mesh3 import MESH_PORT, PASSPHRASE, Load, Mesh, Node, fetch, joined_mesh
from tests.meshd.onhost import ok
from tests.poll import until

pytestmark = pytest.mark.testbed

# A 1-minute leaf is renewed every 32-38 s (60-70 % of the 54 s it has left once backdated,
# meshd.renewal.schedule), plus the round itself: the 3 renewals a host must show (and the 3
# new serials the watch must see) take at most ~120 s, so 160 s leaves one interval to spare
# (a run here saw 3-4 renewals a host) and outlives each certificate twice over.
LOAD_SECONDS = 160
RENEWED = "/var/lib/meshd/identity/renewed.pem"


@pytest.fixture(scope="module")
def mesh(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("lifecycle")
    with joined_mesh(testbed, root, leaf_lifetime="1m") as m:
        added = m.meshctl("issuer", "add", "web1")
        assert added.code == 0, added.out + added.err
        sys.stderr.write(f"\n[lifecycle] three hosts joined in {m.took:.1f} s, web1 issues\n")
        yield m


# --- talking to the hosts as the operator ---------------------------------------------------
def stats(mesh: Mesh, node: Node) -> Stats:
    status, body = mesh.admin(node, "GET", "/stats")
    assert status == 200, body
    return Stats.from_json(json.loads(body))


def renewal(mesh: Mesh, node: Node) -> RenewalReport:
    report = stats(mesh, node).renewal
    assert report is not None, f"{node.name}: meshd reports no renewal"
    return report


def renewals(mesh: Mesh) -> dict[str, int]:
    return {n.name: renewal(mesh, n).renewals for n in mesh.nodes}


def metric(mesh: Mesh, node: Node, name: str) -> float:
    status, text = mesh.admin(node, "GET", "/metrics")
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def watch_serials(mesh: Mesh, seconds: float) -> dict[str, list[str]]:
    """Each host's presented serial, polled every 3 s: the distinct ones in order."""
    seen: dict[str, list[str]] = {n.name: [] for n in mesh.nodes}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, serial in mesh.serials().items():
            if not seen[name] or seen[name][-1] != serial:
                seen[name].append(serial)
        time.sleep(3)
    return seen


# --- 1. renewal under load --------------------------------------------------------------------
@pytest.mark.timeout(LOAD_SECONDS + 180)
def test_every_host_renews_under_load_with_no_failed_request(mesh: Mesh) -> None:
    before = renewals(mesh)
    loads = [mesh.start_load(n, seconds=LOAD_SECONDS, connections=4) for n in mesh.nodes]
    serials = watch_serials(mesh, LOAD_SECONDS - 5)
    results = [load.result() for load in loads]
    after = renewals(mesh)
    for load, result in zip(loads, results, strict=True):
        assert result["failed"] == 0, mesh.failed_load(load, result)
        assert int(str(result["ok"])) > 1000, (load.node.name, result)
    for node in mesh.nodes:
        assert after[node.name] - before[node.name] >= 3, (node.name, before, after)
        # what the mesh port presents changed with each renewal: a new serial each time
        assert len(serials[node.name]) >= 4, (node.name, serials[node.name])
        mode, owner = ok(node.host, f"stat -c '%a %U' {RENEWED}").split()
        assert (mode, owner) == ("600", "meshd"), node.name
    no_link_outlived_its_certificates(mesh)
    counts = {n: (after[n] - before[n], len(serials[n])) for n in before}
    sys.stderr.write(f"\n[lifecycle] renewals, serials seen under load: {counts}\n")


def no_link_outlived_its_certificates(mesh: Mesh) -> None:
    """Links were replaced before expiry: none was cut by the expiry backstop."""
    for node in mesh.nodes:
        logs = ok(node.host, "journalctl -u meshd -o cat --no-pager")
        assert "certificate expired" not in logs, node.name
        assert metric(mesh, node, "meshd_links_retired_total") > 0, node.name


# --- 2. issuers: one stopped, both stopped, one back --------------------------------------------
@pytest.mark.timeout(240)
def test_renewals_go_to_the_other_issuer_and_survive_both_being_down(mesh: Mesh) -> None:
    web, api, db = (mesh.node(n) for n in ("web1", "api1", "db1"))
    added = mesh.meshctl("issuer", "add", "api1")
    assert added.code == 0, added.out + added.err
    ok(web.host, "systemctl stop meshd")
    try:
        renew_now(mesh, db)
        until(lambda: renewal(mesh, db).issuer == "api1", 20, "renewed by api1")
        ok(api.host, "systemctl stop meshd")
        failed_before = metric(mesh, db, 'meshd_certificate_renewals_total{result="failed"')
        serial = stats(mesh, db).certificate_serial
        renew_now(mesh, db)
        until(lambda: renewal(mesh, db).state == "failing", 20, "failing")
        assert stats(mesh, db).certificate_serial == serial  # it keeps what it has
        assert metric(mesh, db, 'meshd_certificate_renewals_total{result="failed"') > failed_before
        logs = ok(db.host, "journalctl -u meshd -o cat --no-pager --since=-1min")
        assert "renew" in logs.lower(), logs[-2000:]
        status = mesh.meshctl("status")
        assert "db1" in status.err and "renew" in status.err.lower(), status.err
    finally:
        ok(web.host, "systemctl start meshd")
        ok(api.host, "systemctl start meshd")
    until(lambda: renewal(mesh, db).state == "ok", 40, "renewed again")
    left = dt.datetime.fromisoformat(stats(mesh, db).certificate_not_after) - _now()
    assert left > dt.timedelta(seconds=30), left  # renewed before the old one expired


def renew_now(mesh: Mesh, node: Node) -> None:
    status, body = mesh.admin(node, "POST", "/renew")
    assert status == 202, body


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- 3. kill -9 while renewing -------------------------------------------------------------------
@pytest.mark.timeout(240)
# ssl may leave a socket to the dying meshd for the collector to close: not meshd's doing
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_meshd_killed_during_renewals_comes_back_with_a_valid_certificate(mesh: Mesh) -> None:
    db = mesh.node("db1")
    for delay in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8):
        renew_now(mesh, db)
        time.sleep(delay)
        ok(db.host, "systemctl kill -s KILL meshd")
        until(lambda: _serving(mesh, db), 60, "meshd back on db1")
        left = dt.datetime.fromisoformat(stats(mesh, db).certificate_not_after) - _now()
        assert left > dt.timedelta(0), (delay, left)
        if db.host.run(f"test -e {RENEWED}")[0] == 0:
            assert ok(db.host, f"stat -c '%a %U' {RENEWED}").split() == ["600", "meshd"]
    assert fetch(mesh.node("web1").host, db.url)  # and it carries traffic again


def _serving(mesh: Mesh, node: Node) -> bool:
    try:
        return stats(mesh, node).ready
    except (OSError, AssertionError, ssl.SSLError):
        return False


# --- 4. CA rollover under load -------------------------------------------------------------------
LEG_SECONDS = 60.0  # the rollover's load runs in legs (loadgen runs a set time) ...
LEG_OVERLAP = 25.0  # ... each started this long before the last one ends: no second without load
AFTER_FINISH = 60.0  # load after finish: past one leaf lifetime, so every host renews from the
# new root alone (every 32-38 s) with requests in flight


@pytest.mark.timeout(420)
def test_a_ca_rollover_under_load_fails_no_request(mesh: Mesh, tmp_path: Path) -> None:
    old_leaf = leaf_of_current_ca(mesh, tmp_path)
    assert link_stays_up(mesh.node("api1"), old_leaf)  # the control: accepted before
    load = RollingLoad(mesh)
    time.sleep(2)  # the loadgens get going (python3 starts slowly on a loaded machine)
    began_at = time.time()
    began = mesh.meshctl("ca", "rotate", "begin")
    assert began.code == 0, began.out + began.err

    def finished() -> bool:
        load.keep_up()
        return mesh.meshctl("ca", "rotate", "finish").code == 0

    took = until(finished, 150, "rotate finish", 5.0)
    finished_at = time.time()
    renewed = renewals(mesh)
    sys.stderr.write(f"\n[lifecycle] rotate begin to finish in {took:.1f} s\n")
    load.extend_to(time.monotonic() + AFTER_FINISH)
    spans = load.results()
    for node in mesh.nodes:  # the load ran, without a gap, from before begin to past the end
        assert spans[node.name][0][0] < began_at, (node.name, began_at, spans[node.name])
        assert spans[node.name][-1][1] > finished_at + AFTER_FINISH - 1, (node.name, spans)
        for (_, end), (start, _) in itertools.pairwise(spans[node.name]):
            assert start < end, (node.name, spans[node.name])
    after = renewals(mesh)
    for node in mesh.nodes:  # ... while it renewed under the new root alone
        assert after[node.name] > renewed[node.name], (node.name, renewed, after)
        assert not link_stays_up(node, old_leaf), node.name  # a leaf of the old root is refused


class RollingLoad:
    """Load on every host in overlapping legs, for as long as the test needs (a loadgen runs
    a set time). `results` checks each leg had no failed request, and gives each host's legs
    as they really ran: (start, end), wall clock (the hosts share this machine's clock)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.legs: list[Load] = []
        self._start(LEG_SECONDS)

    def _start(self, seconds: float) -> None:
        self.legs += [
            self.mesh.start_load(n, seconds=seconds, connections=4) for n in self.mesh.nodes
        ]

    def _ends(self) -> float:
        return min(leg.started + leg.seconds for leg in self.legs[-len(self.mesh.nodes) :])

    def keep_up(self) -> None:
        """The next leg, if the running one is about to end."""
        if self._ends() - time.monotonic() < LEG_OVERLAP:
            self._start(LEG_SECONDS)

    def extend_to(self, end: float) -> None:
        """A last leg, if the running one ends before ``end`` (monotonic)."""
        if self._ends() < end:
            self._start(end - time.monotonic())

    def results(self) -> dict[str, list[tuple[float, float]]]:
        spans: dict[str, list[tuple[float, float]]] = {n.name: [] for n in self.mesh.nodes}
        for leg in self.legs:
            result = leg.result()
            assert result["failed"] == 0, self.mesh.failed_load(leg, result)
            ended = float(ok(leg.node.host, f"stat -c %.3Y {leg.output}"))  # written at its end
            spans[leg.node.name].append((ended - float(str(result["seconds"])), ended))
        return spans


def leaf_of_current_ca(mesh: Mesh, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A fresh 1-hour leaf for web1's host identity from the CA in use now: (cert, key, bundle)."""
    ws = Workspace.load(mesh.ws)
    issuer = ws.issuer(PASSPHRASE)
    key = generate_key()
    ids = [make_id(ws.config.trust_domain, "host", "web1")]
    cert = sign_csr(build_csr(key, ids), ids, issuer, _now(), dt.timedelta(hours=1))
    paths = tmp_path / "old.pem", tmp_path / "old.key", tmp_path / "old-bundle.pem"
    paths[0].write_bytes(cert_pem(cert, issuer.cert))
    paths[1].write_bytes(private_pem(key))
    paths[1].chmod(0o600)
    paths[2].write_bytes(ws.trust_bundle.read_bytes())
    return paths


def link_stays_up(node: Node, identity: tuple[Path, Path, Path]) -> bool:
    """Whether ``node``'s mesh port keeps a link made with ``identity`` for a second."""
    cert, key, _bundle = identity
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we test what the host accepts, not what it presents
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols([ALPN_LINK_2])
    try:
        with (
            socket.create_connection((node.host.address, MESH_PORT), timeout=5) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            tls.settimeout(1.0)
            try:
                return tls.recv(1) != b""
            except TimeoutError:
                return True  # nothing to read, and not closed: the link is up
    except (ssl.SSLError, ConnectionError):
        return False


# --- 5. leave: a copied identity is locked out at once ---------------------------------------
@pytest.mark.timeout(180)
def test_after_leave_a_copy_of_the_hosts_identity_opens_no_link(mesh: Mesh, tmp_path: Path) -> None:
    web = mesh.node("web1")
    count = renewals(mesh)["web1"]
    renew_now(mesh, web)  # a fresh certificate: it must not expire while we test
    until(lambda: renewals(mesh)["web1"] > count, 30, "web1 renewed")
    copy = copy_identity(web, tmp_path)
    expires = x509.load_pem_x509_certificate(copy[0].read_bytes()).not_valid_after_utc
    remaining = mesh.others(web)
    assert all(link_stays_up(n, copy) for n in remaining)  # the control: a link before
    left = mesh.meshctl("leave", "web1", "-i", str(mesh.tb.client_key))
    assert left.code == 0, left.out + left.err
    done = time.monotonic()
    for node in remaining:
        assert not link_stays_up(node, copy), node.name
    assert time.monotonic() - done < 10
    assert _now() < expires  # refused for the revocation, not for expiry


def copy_identity(node: Node, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The pair ``node``'s meshd runs with right now, as an attacker would copy it."""
    text = ok(node.host, f"cat {RENEWED}")
    key = serialization.load_pem_private_key(text.encode(), None)
    certs = x509.load_pem_x509_certificates(text.encode())
    paths = tmp_path / "copy.pem", tmp_path / "copy.key", tmp_path / "copy-bundle.pem"
    paths[0].write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].write_bytes(ok(node.host, "cat /etc/meshd/bundle.pem").encode())
    return paths
