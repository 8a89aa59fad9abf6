"""``meshctl ca rotate begin|finish|status`` in-process against fake hosts and meshd.

The fake meshd decides mutual TLS as the real one would (its leaf must verify
under meshctl's bundle, the operator's under its trust), takes a trust
bundle only when its own leaf verifies under it, and renews from the first
issuer whose CA a root it trusts signed: the order of begin's steps matters.
"""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from cryptography import x509

from meshctl import castore
from meshctl.ca import sign_issuer
from meshd.identity import make_id
from meshd.pki import build_csr, cert_pem, load_certs
from tests.meshctl.cli.fakes import FLEET, FakeMesh, Reply, at, fleet
from tests.meshctl.helpers import NOW, TD


def with_issuer(tmp_path: Path) -> FakeMesh:
    """web1, api1 and db1 joined; db1 an issuer (meshctl issuer add) under the first root."""
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    added = mesh.meshctl("issuer", "add", "db1")
    assert added.code == 0, added.out + added.err
    return mesh


def roots_of(pem: bytes) -> list[bytes]:
    return [cert_pem(c) for c in x509.load_pem_x509_certificates(pem)]


def ok(reply: Reply) -> Reply:
    assert reply.code == 0, reply.out + reply.err
    return reply


def test_begin_trusts_both_roots_then_resigns_issuers_then_renews(tmp_path: Path) -> None:
    mesh = with_issuer(tmp_path)
    old = mesh.first_root
    mesh.requests.clear()
    begun = ok(mesh.meshctl("ca", "rotate", "begin", "--json"))
    new = mesh.ws.ca_files("next").root_cert.read_bytes()
    assert new != old
    rows = begun.rows()
    assert {h: r["status"] for h, r in rows.items()} == dict.fromkeys(FLEET, "renewing")
    assert rows["db1"]["done"][1].startswith("issuer CA signed by the root")
    for name in FLEET:
        host = at(mesh, name)
        assert host.trust is not None and roots_of(host.trust["bundle_pem"].encode()) == [old, new]
        assert host.served_root == new  # renewed from db1's re-signed CA
        puts = [i for i, r in enumerate(mesh.requests) if r == (name, "PUT", "/trust")]
        renews = [i for i, r in enumerate(mesh.requests) if r == (name, "POST", "/renew")]
        assert len(puts) == len(renews) == 1 and puts[0] < renews[0]
    issuer_ca = x509.load_pem_x509_certificate((at(mesh, "db1").issuer or {})["cert_pem"].encode())
    assert castore.signed_by(issuer_ca, x509.load_pem_x509_certificate(new))
    assert roots_of(mesh.ws.trust_bundle.read_bytes()) == [old, new]  # later joins: both
    assert castore.operator_under(mesh.ws, castore.load_issuing_cert(mesh.ws, "next"))
    for path in mesh.ws.ca_files("next").all():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_begin_twice_keeps_the_new_ca_and_changes_nothing_more(tmp_path: Path) -> None:
    mesh = with_issuer(tmp_path)
    ok(mesh.meshctl("ca", "rotate", "begin"))
    files = {p: p.read_bytes() for p in mesh.ws.ca_files("next").all()}
    operator = mesh.ws.operator_cert.read_bytes()
    again = ok(mesh.meshctl("ca", "rotate", "begin", "--json"))
    assert {p: p.read_bytes() for p in files} == files
    assert mesh.ws.operator_cert.read_bytes() == operator
    assert again.json()["notes"] == ["kept the new root CA in ca/next/"]
    db1 = again.rows()["db1"]["done"]
    assert db1[0] == "trust bundle version 1 (both roots): had it already"
    assert db1[1] == "issuer CA already signed by the new root"


def test_begin_goes_no_further_until_every_host_trusts_both_roots(tmp_path: Path) -> None:
    mesh = with_issuer(tmp_path)
    old_issuer = at(mesh, "db1").issuer
    mesh.unreachable.add(FLEET["api1"][0])
    mesh.requests.clear()
    begun = mesh.meshctl("ca", "rotate", "begin", "--json")
    assert begun.code == 8, begun.out + begun.err
    rows = begun.rows()
    assert {h: r["status"] for h, r in rows.items()} == {
        "web1": "trusted",
        "api1": "failed",
        "db1": "trusted",
    }
    assert at(mesh, "db1").issuer == old_issuer
    assert not [r for r in mesh.requests if r[1] == "POST"]
    assert castore.operator_under(mesh.ws, castore.load_issuing_cert(mesh.ws))  # the old CA's
    assert "run meshctl ca rotate begin again" in begun.json()["notes"][-1]
    early = mesh.meshctl("ca", "rotate", "finish")
    assert early.code == 7, early.out + early.err
    assert "error: the operator certificate is not yet issued by the new CA" in early.err
    mesh.unreachable.clear()
    again = ok(mesh.meshctl("ca", "rotate", "begin", "--json"))
    assert {r["status"] for r in again.rows().values()} == {"renewing"}


def test_finish_refuses_naming_the_hosts_on_the_old_root(tmp_path: Path) -> None:
    mesh = with_issuer(tmp_path)
    at(mesh, "api1").stuck = True
    at(mesh, "api1").renewal = {"state": "failing", "last_error": "no issuer answered"}
    ok(mesh.meshctl("ca", "rotate", "begin"))
    before = {p: p.read_bytes() for p in (mesh.ws.root / "ca").rglob("*") if p.is_file()}
    mesh.requests.clear()
    refused = mesh.meshctl("ca", "rotate", "finish", "--json")
    assert refused.code == 7, refused.out + refused.err
    assert (
        "error: not finishing the CA rotation: the old root is still needed by api1 (serves a "
        "leaf of the old root; its renewal fails: no issuer answered)"
    ) in refused.err
    hosts = {h["host"]: h for h in refused.json()["hosts"]}
    assert {h: r["ready"] for h, r in hosts.items()} == {"web1": True, "api1": False, "db1": True}
    assert hosts["db1"]["issuer"] == "new root" and hosts["web1"]["issuer"] == ""
    assert not [r for r in mesh.requests if r[1] == "PUT"]
    assert {p: p.read_bytes() for p in (mesh.ws.root / "ca").rglob("*") if p.is_file()} == before
    status = mesh.meshctl("ca", "rotate", "status")
    assert status.code == 8
    assert "1 of 3" not in status.out and "2 of 3 host(s) on the new root" in status.out


def test_finish_refuses_while_an_issuer_holds_a_ca_of_the_old_root(tmp_path: Path) -> None:
    mesh = with_issuer(tmp_path)
    ok(mesh.meshctl("ca", "rotate", "begin"))
    db1 = at(mesh, "db1")
    assert db1.issuer is not None and db1.issuer_key is not None
    root = castore.load(mesh.ws, "", None).root
    csr = build_csr(db1.issuer_key, [make_id(TD, "issuer", "db1")])
    old = sign_issuer(csr, "db1", root, NOW, dt.timedelta(days=30), TD)
    db1.issuer = {**db1.issuer, "cert_pem": cert_pem(old).decode()}
    refused = mesh.meshctl("ca", "rotate", "finish")
    assert refused.code == 7, refused.out + refused.err
    assert "still needed by db1 (its issuer CA is old root)" in refused.err


def test_finish_moves_every_host_and_the_workspace_to_the_new_root(tmp_path: Path) -> None:
    mesh = with_issuer(tmp_path)
    old = mesh.first_root
    old_key = mesh.ws.root_ca_key.read_bytes()
    ok(mesh.meshctl("ca", "rotate", "begin"))
    new = mesh.ws.ca_files("next").root_cert.read_bytes()
    done = ok(mesh.meshctl("ca", "rotate", "finish", "--json"))
    assert {r["status"] for r in done.rows().values()} == {"finished"}
    for name in FLEET:
        trust = at(mesh, name).trust
        assert trust is not None and trust["version"] == 2
        assert roots_of(trust["bundle_pem"].encode()) == [new]
    ws = mesh.ws
    assert ws.root_ca_cert.read_bytes() == new
    assert roots_of(ws.trust_bundle.read_bytes()) == [new]
    retired = ws.ca_files("retired/2026-11-27")
    assert retired.root_cert.read_bytes() == old and retired.root_key.read_bytes() == old_key
    assert not (ws.root / "ca" / "next").exists() and not (ws.root / "secrets" / "next").exists()
    issuing = load_certs(ws.issuing_ca_cert)[0]
    assert castore.operator_under(ws, issuing)
    assert "ca/retired/2026-11-27/" in done.json()["notes"][0]
    status = mesh.meshctl("status", "--json")  # the admin API still answers the new operator
    assert all(h["admin_error"] is None for h in status.rows().values())
    assert ok(mesh.meshctl("ca", "rotate", "status")).out.startswith("no CA rotation in progress")


def test_a_host_refusing_the_new_root_alone_keeps_the_workspace_as_it_was(
    tmp_path: Path,
) -> None:
    mesh = with_issuer(tmp_path)
    ok(mesh.meshctl("ca", "rotate", "begin"))
    at(mesh, "web1").refuse_trust = "trust not applied: the disk is full"
    before = {p: p.read_bytes() for p in (mesh.ws.root / "ca").rglob("*") if p.is_file()}
    done = mesh.meshctl("ca", "rotate", "finish", "--json")
    assert done.code == 8, done.out + done.err
    rows = done.rows()
    assert {h: r["status"] for h, r in rows.items()} == {
        "web1": "failed",
        "api1": "finished",
        "db1": "finished",
    }
    assert "run meshctl ca rotate finish again" in done.json()["notes"][0]
    assert {p: p.read_bytes() for p in (mesh.ws.root / "ca").rglob("*") if p.is_file()} == before
    at(mesh, "web1").refuse_trust = None
    ok(mesh.meshctl("ca", "rotate", "finish"))  # the client trusts both roots till the end
    assert mesh.ws.root_ca_cert.read_bytes() != mesh.first_root


def test_begin_without_an_issuer_says_so_and_asks_no_host_to_renew(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    mesh.requests.clear()
    begun = ok(mesh.meshctl("ca", "rotate", "begin", "--json"))
    assert begun.json()["notes"][-1].startswith("no joined host is an issuer")
    assert {r["status"] for r in begun.rows().values()} == {"trusted"}
    assert not [r for r in mesh.requests if r[1] == "POST"]


def test_finish_is_refused_without_a_rotation(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1")
    refused = mesh.meshctl("ca", "rotate", "finish")
    assert refused.code == 3
    assert "error: no CA rotation in progress" in refused.err
    assert "hint: meshctl ca rotate begin starts one" in refused.err
