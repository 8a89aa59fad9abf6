"""``meshctl revoke`` and the revocations of ``leave``, in-process against fake hosts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshctl.provision import layout
from tests.meshctl.cli.fakes import FLEET, FakeMesh, at, fleet
from tests.meshctl.helpers import NOW, TD

DAY_AND_BACKDATE = int((NOW + dt.timedelta(hours=24, minutes=5)).timestamp())


def revoked(mesh: FakeMesh, name: str) -> list[dict[str, Any]]:
    """The revocations of the registry the meshd of ``name`` runs (pushed, or its file)."""
    host = at(mesh, name)
    files = json.loads(host.fs[layout.REGISTRY])
    runs = max([host.pushed or files, files], key=lambda r: int(r["version"]))
    entries: list[dict[str, Any]] = runs.get("revoked", [])
    return entries


def test_revoke_pushes_the_hosts_id_and_both_serials_to_every_other_host(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    web1 = at(mesh, "web1")
    joined_serial = web1.serial
    web1.renewed_serial = "ABC123"  # meshd renewed since the join
    web1.commands.clear()
    done = mesh.meshctl("revoke", "web1", "--json")
    assert done.code == 0, done.out + done.err
    rows = done.rows()
    assert {h: r["status"] for h, r in rows.items()} == {
        "web1": "revoked",
        "api1": "registry",
        "db1": "registry",
    }
    entry = {
        "host": "web1",
        "ids": [f"spiffe://{TD}/host/web1"],
        "serials": [joined_serial, "ABC123"],
        "until": DAY_AND_BACKDATE,
    }
    for other in ("api1", "db1"):
        assert revoked(mesh, other) == [entry]
        assert "web" not in (at(mesh, other).pushed or {})["services"]
    assert rows["web1"]["done"] == [
        f"revoked spiffe://{TD}/host/web1, serial {joined_serial}, serial ABC123 "
        "until 2026-11-28T12:05:00+00:00"
    ]
    assert web1.commands == []  # no SSH
    assert "[hosts.web1]" not in (mesh.ws.root / "hosts.toml").read_text()
    assert not (mesh.ws.root / "applied" / "hosts" / "web1.json").exists()


def test_revoking_a_host_whose_meshd_is_gone_names_the_serial_join_signed(
    tmp_path: Path,
) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    joined_serial = at(mesh, "web1").serial
    mesh.unreachable.add(FLEET["web1"][0])
    done = mesh.meshctl("revoke", "web1", "--json")
    assert done.code == 0, done.out + done.err
    assert revoked(mesh, "api1")[0]["serials"] == [joined_serial]
    assert done.rows()["web1"]["done"][1] == (
        "its meshd did not answer: the serial it runs may be unknown"
    )


def test_a_failed_push_exits_8_and_status_shows_the_drift(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    at(mesh, "db1").refuse_push = "registry not applied"
    done = mesh.meshctl("revoke", "web1", "--json")
    assert done.code == 8, done.out + done.err
    rows = done.rows()
    assert (rows["web1"]["status"], rows["api1"]["status"], rows["db1"]["status"]) == (
        "revoked",
        "registry",
        "failed",
    )
    status = mesh.meshctl("status", "--json")
    assert status.code == 8
    hosts = status.rows()
    assert (hosts["db1"]["registry_version"], hosts["db1"]["expected_registry"]) == (1, 2)
    assert hosts["api1"]["healthy"]
    at(mesh, "db1").refuse_push = None
    again = mesh.meshctl("revoke", "web1", "--json")  # the revoked name is still known
    assert again.code == 0, again.out + again.err
    assert revoked(mesh, "db1")[0]["host"] == "web1"


def test_revoking_an_unknown_host_is_an_error_and_changes_nothing(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1")
    before = mesh.workspace_files()
    done = mesh.meshctl("revoke", "web9")
    assert done.code == 3, done.out + done.err
    assert f"error: no host web9 in {mesh.ws.root}/hosts.toml" in done.err
    assert "hint: meshctl revoke takes host names" in done.err
    assert mesh.workspace_files() == before


def test_leave_revokes_the_leaver_on_every_remaining_host(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    api1 = at(mesh, "api1")
    joined_serial = api1.serial
    api1.renewed_serial = "C0FFEE"
    left = mesh.meshctl("leave", "api1", "--json")
    assert left.code == 0, left.out + left.err
    entry = {
        "host": "api1",
        "ids": [f"spiffe://{TD}/host/api1"],
        "serials": [joined_serial, "C0FFEE"],
        "until": DAY_AND_BACKDATE,
    }
    assert revoked(mesh, "web1") == revoked(mesh, "db1") == [entry]
    assert left.rows()["api1"]["done"][-1].startswith(f"revoked spiffe://{TD}/host/api1")


@pytest.mark.parametrize(
    ("later", "hosts"),
    [(DAY_AND_BACKDATE - 1, ["db1", "web1"]), (DAY_AND_BACKDATE, ["db1"])],
    ids=["in-force", "expired"],
)
def test_revocations_leave_the_registry_once_expired(
    tmp_path: Path, later: int, hosts: list[str]
) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    assert mesh.meshctl("revoke", "web1").code == 0
    mesh.clock = lambda: dt.datetime.fromtimestamp(later, dt.UTC)
    done = mesh.meshctl("revoke", "db1")
    assert done.code == 0, done.out + done.err
    assert [e["host"] for e in revoked(mesh, "api1")] == hosts


def test_a_revoked_name_that_joins_again_revokes_only_its_certificates_from_before(
    tmp_path: Path,
) -> None:
    """Its ID stays revoked for anything that started before the rejoin (a stolen copy, an
    issuer's renewal of one); the certificate the join signs starts at the rejoin."""
    mesh = fleet(tmp_path, "web1", "api1")
    old = at(mesh, "web1").serial
    assert mesh.meshctl("revoke", "web1").code == 0
    later = NOW + dt.timedelta(hours=1)
    mesh.clock = lambda: later
    assert mesh.meshctl("hosts", "add", "web1", FLEET["web1"][0], "-s", "web:8080").code == 0
    again = mesh.meshctl("join", "web1", "--json")
    assert again.code == 0, again.out + again.err
    rejoined = int(later.timestamp()) - 300  # signed from then on: backdated 5 minutes
    entry = {
        "host": "web1",
        "ids": [f"spiffe://{TD}/host/web1"],
        "serials": [old],
        "until": DAY_AND_BACKDATE,
        "before": rejoined,
    }
    assert revoked(mesh, "api1") == revoked(mesh, "web1") == [entry]
    assert json.loads((mesh.ws.root / "applied" / "revoked.json").read_text()) == [entry]
    # the host got a new certificate (its old one is revoked), starting no earlier than that
    cert = x509.load_pem_x509_certificate(at(mesh, "web1").fs[layout.CERT])
    assert format(cert.serial_number, "X") != old
    assert cert.not_valid_before_utc.timestamp() == rejoined  # backdated, never before it
    # joining again later changes nothing: the rejoin's certificate stays good
    mesh.clock = lambda: later + dt.timedelta(hours=1)
    converge = mesh.meshctl("join", "web1", "--json")
    assert converge.code == 0, converge.out + converge.err
    assert revoked(mesh, "api1") == [entry] and converge.rows()["web1"]["status"] == "converged"


def test_leave_dry_run_revokes_nothing_and_reads_nothing_of_meshd(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    mesh.requests.clear()
    before = mesh.workspace_files()
    planned = mesh.meshctl("leave", "api1", "--dry-run", "--json")
    assert planned.code == 0, planned.out + planned.err
    assert planned.rows()["api1"]["status"] == "planned"
    assert mesh.requests == [] and mesh.workspace_files() == before


def test_revoking_an_issuer_takes_it_out_of_the_registry_and_says_what_remains(
    tmp_path: Path,
) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    assert mesh.meshctl("issuer", "add", "web1").code == 0
    assert [i["host"] for i in (at(mesh, "api1").pushed or {})["issuers"]] == ["web1"]
    done = mesh.meshctl("revoke", "web1", "--json")
    assert done.code == 0, done.out + done.err
    assert done.rows()["web1"]["done"][-1].startswith("it was an issuer:")
    assert "issuers" not in (at(mesh, "api1").pushed or {})
