"""``meshctl status`` in-process against fake hosts and a scripted meshd admin API."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tests.meshctl.cli.fakes import FLEET, at, fleet
from tests.meshctl.helpers import NOW


def test_every_host_healthy_exits_0(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    status = mesh.meshctl("status", "--json")
    assert status.code == 0, status.out + status.err
    assert status.json()["registry_version"] == 1
    assert {h: (r["healthy"], r["registry_version"]) for h, r in status.rows().items()} == {
        "api1": (True, 1),
        "db1": (True, 1),
        "web1": (True, 1),
    }


def test_one_host_unreachable_is_shown_and_exits_8(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    mesh.unreachable = {FLEET["api1"][0]}
    status = mesh.meshctl("status", "--json")
    assert status.code == 8, status.out + status.err
    rows = status.rows()
    api1 = rows["api1"]
    assert (api1["reachable"], api1["healthy"]) == (False, False)
    assert api1["error"] == "10.0.0.12:22: no answer within 5s"
    assert api1["admin_error"] == "meshd on api1 (10.0.0.12:15000): no answer within 5s"
    assert [(h, r["healthy"]) for h, r in rows.items() if h != "api1"] == [
        ("db1", True),
        ("web1", True),
    ]
    table = mesh.meshctl("status")
    assert table.code == 8
    lines = {
        line.split("│")[1].strip(): line for line in table.out.splitlines() if "│ 10.0" in line
    }
    assert "unreachable" in lines["api1"] and "no answer within 5s" in lines["api1"]
    assert "healthy" in lines["web1"] and "healthy" in lines["db1"]


def test_warns_about_issuers_and_renewals(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    first = mesh.meshctl("status", "--json")
    assert first.json()["warnings"] == [
        "no issuer, and leaves live 1d: no host renews its certificate; "
        "add one: meshctl issuer add HOST"
    ]
    assert "warning: no issuer, and leaves live 1d" in first.err
    assert mesh.meshctl("issuer", "add", "web1").code == 0
    assert mesh.meshctl("status", "--json").json()["warnings"] == []
    at(mesh, "db1").renewal = {"state": "failing", "failures": 2, "last_error": "web1: refused"}
    mesh.clock = lambda: NOW + dt.timedelta(days=16)
    status = mesh.meshctl("status")
    assert "warning: issuer web1: its CA is past half its life" in status.err
    assert "run meshctl ca renew-issuers" in status.err
    assert "warning: db1: certificate renewal failing (2 attempt(s)): web1: refused" in status.err
