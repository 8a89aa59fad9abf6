"""``meshctl issuer add|list|remove``, ``ca renew-issuers`` and ``join --issuer`` in-process,
against fake hosts and a scripted meshd admin API that checks what meshctl installs."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

from cryptography import x509

from meshctl.provision import layout
from meshd.pki import load_certs, spiffe_ids
from tests.meshctl.cli.fakes import FLEET, FakeMesh, at, fleet
from tests.meshctl.helpers import NOW, TD

DAY = dt.timedelta(days=1)


def _issuer_cert(mesh: FakeMesh, name: str) -> x509.Certificate:
    doc = at(mesh, name).issuer
    assert doc is not None and doc["cert_pem"]
    return x509.load_pem_x509_certificate(doc["cert_pem"].encode())


def _flags(mesh: FakeMesh) -> dict[str, bool]:
    hosts = tomllib.loads((mesh.ws.root / "hosts.toml").read_text())["hosts"]
    return {name: entry.get("issuer", False) for name, entry in hosts.items()}


def _pushed_issuers(mesh: FakeMesh, name: str) -> list[dict[str, Any]]:
    pushed = at(mesh, name).pushed
    assert pushed is not None
    issuers: list[dict[str, Any]] = pushed.get("issuers", [])
    return issuers


def test_add_signs_with_the_root_records_and_pushes(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    done = mesh.meshctl("issuer", "add", "web1", "api1", "--json")
    assert done.code == 0, done.out + done.err
    assert done.rows()["web1"]["status"] == "issuer"
    root = load_certs(mesh.ws.root_ca_cert)[0]
    for name in ("web1", "api1"):
        cert = _issuer_cert(mesh, name)
        cert.verify_directly_issued_by(root)
        assert [str(i) for i in spiffe_ids(cert)] == [f"spiffe://{TD}/issuer/{name}"]
        assert cert.not_valid_after_utc == NOW + 30 * DAY
        assert at(mesh, name).issuer["leaf_lifetime"] == 86400  # type: ignore[index]
    assert _flags(mesh) == {"web1": True, "api1": True, "db1": False}
    expected = [
        {"host": "api1", "address": FLEET["api1"][0], "port": 15000},
        {"host": "web1", "address": FLEET["web1"][0], "port": 15000},
    ]
    assert all(_pushed_issuers(mesh, name) == expected for name in FLEET)


def test_add_with_one_host_down_fails_that_host_only(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    mesh.unreachable = {FLEET["db1"][0]}
    done = mesh.meshctl("issuer", "add", "web1", "db1", "--json")
    assert done.code == 8, done.out + done.err
    rows = done.rows()
    assert rows["web1"]["status"] == "issuer"
    assert rows["db1"]["status"] == "failed"
    assert "no answer within" in rows["db1"]["error"]["message"]
    assert _flags(mesh) == {"web1": True, "api1": False, "db1": False}
    assert [i["host"] for i in _pushed_issuers(mesh, "api1")] == ["web1"]


def test_add_refuses_a_host_that_has_not_joined(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1")
    before = mesh.workspace_files()
    done = mesh.meshctl("issuer", "add", "api1")
    assert done.code != 0
    assert "api1 is not a joined host of hosts.toml" in done.err
    assert "meshctl join api1" in done.err
    assert mesh.workspace_files() == before


def test_add_names_a_meshd_without_the_issuer_api(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1")
    at(mesh, "web1").no_issuer_api = True
    done = mesh.meshctl("issuer", "add", "web1", "--json")
    assert done.code != 0
    error = done.rows()["web1"]["error"]
    assert "POST /issuer/csr failed (404)" in error["message"]
    assert error["hint"] == "meshctl join web1"
    assert _flags(mesh)["web1"] is False


def test_list(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    assert mesh.meshctl("issuer", "add", "web1", "api1").code == 0
    mesh.clock = lambda: NOW + 16 * DAY  # past half of web1's and api1's 30 days
    at(mesh, "api1").issuer = None  # lost its CA
    listed = mesh.meshctl("issuer", "list", "--json")
    assert listed.code == 8, listed.out + listed.err
    rows = {i["host"]: i for i in listed.json()["issuers"]}
    assert rows["web1"]["state"] == "renew"
    assert rows["web1"]["not_after"] == (NOW + 30 * DAY).isoformat()
    assert (rows["web1"]["signed"], rows["web1"]["refused"]) == (3, 1)
    assert rows["api1"]["state"] == "no CA"
    assert rows["api1"]["detail"] == "run meshctl issuer add api1"
    table = mesh.meshctl("issuer", "list")
    assert "web1" in table.out and "3/1" in table.out and "renew-issuers" in table.out


def test_remove_retires_and_warns_when_none_is_left(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    assert mesh.meshctl("issuer", "add", "web1").code == 0
    done = mesh.meshctl("issuer", "remove", "web1", "--json")
    assert done.code == 0, done.out + done.err
    assert at(mesh, "web1").issuer["cert_pem"] == ""  # type: ignore[index]
    assert _flags(mesh)["web1"] is False
    assert _pushed_issuers(mesh, "api1") == []
    assert "no issuer is left" in done.err and "meshctl issuer add HOST" in done.err


def test_remove_of_an_unreachable_issuer_takes_it_out_of_the_registry(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    assert mesh.meshctl("issuer", "add", "web1", "api1").code == 0
    mesh.unreachable = {FLEET["web1"][0]}
    done = mesh.meshctl("issuer", "remove", "web1", "--json")
    assert done.code == 8
    assert "run meshctl issuer remove web1 again" in done.rows()["web1"]["error"]["hint"]
    assert [i["host"] for i in _pushed_issuers(mesh, "api1")] == ["api1"]
    assert "no issuer is left" not in done.err


def test_renew_issuers_re_signs_only_those_past_two_thirds(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    assert mesh.meshctl("issuer", "add", "web1", "api1").code == 0
    mesh.clock = lambda: NOW + 19 * DAY  # before 2/3 of 30 days
    early = mesh.meshctl("ca", "renew-issuers", "--json")
    assert early.code == 0, early.out + early.err
    assert {h: r["status"] for h, r in early.rows().items()} == {
        "web1": "current",
        "api1": "current",
    }
    assert at(mesh, "web1").issuer_csrs == 1
    later = NOW + 21 * DAY
    mesh.clock = lambda: later
    done = mesh.meshctl("ca", "renew-issuers", "--json")
    assert {h: r["status"] for h, r in done.rows().items()} == {
        "web1": "renewed",
        "api1": "renewed",
    }
    assert at(mesh, "web1").issuer_csrs == 2  # a fresh key
    assert _issuer_cert(mesh, "web1").not_valid_after_utc == later + 30 * DAY
    assert at(mesh, "web1").issuer["version"] == 2  # type: ignore[index]


def test_renew_issuers_force(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1")
    assert mesh.meshctl("issuer", "add", "web1").code == 0
    done = mesh.meshctl("ca", "renew-issuers", "--force", "--json")
    assert done.code == 0
    assert done.rows()["web1"]["status"] == "renewed"
    assert at(mesh, "web1").issuer_csrs == 2


def test_join_with_issuer(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "api1")
    done = mesh.meshctl("join", "web1", "--issuer", "--json")
    assert done.code == 0, done.out + done.err
    assert done.rows()["web1"]["status"] == "joined"
    assert any("issuer CA signed" in d for d in done.rows()["web1"]["done"])
    assert _flags(mesh)["web1"] is True
    assert [i["host"] for i in _pushed_issuers(mesh, "api1")] == ["web1"]
    assert layout.CERT in at(mesh, "web1").fs


def test_join_renews_a_due_issuer_on_the_way(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    assert mesh.meshctl("issuer", "add", "web1").code == 0
    mesh.clock = lambda: NOW + 21 * DAY
    done = mesh.meshctl("join", "api1", "--json")
    assert done.code == 0, done.out + done.err
    assert at(mesh, "web1").issuer_csrs == 2
    assert done.rows()["web1"]["status"] == "renewed"
