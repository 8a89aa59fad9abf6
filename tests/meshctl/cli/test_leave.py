"""``meshctl leave`` in-process against fake hosts and a scripted meshd admin API."""

from __future__ import annotations

from pathlib import Path

from tests.meshctl.cli.fakes import FLEET, FakeHost, at, fleet


def test_leaving_one_host_of_three_restores_it_and_updates_the_others(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    mesh.requests.clear()
    left = mesh.meshctl("leave", "api1", "--json")
    assert left.code == 0, left.out + left.err
    rows = left.rows()
    assert {h: r["status"] for h, r in rows.items()} == {
        "api1": "left",
        "web1": "registry",
        "db1": "registry",
    }
    for other, peer in (("web1", "db1"), ("db1", "web1")):
        assert rows[other]["done"] == ["registry version 2 applied, rules and names follow"]
        host = at(mesh, other)
        assert host.pushed is not None and sorted(host.pushed["services"]) == ["db", "web"]
        assert b"api.mesh" not in host.hosts and b"db.mesh" in host.hosts
        assert "10.0.0.12" not in host.nat and f"{FLEET[peer][0]}/32" in host.nat
    pristine = FakeHost(name="10.0.0.12", hostname="api1").model()
    assert at(mesh, "api1").model() == pristine  # /etc/hosts byte for byte, too
    # the serial it runs, read before it stops (its revocation names it); no registry for it
    assert [r for r in mesh.requests if r[0] == "api1"] == [("api1", "GET", "/stats")]
    assert "[hosts.api1]" not in (mesh.ws.root / "hosts.toml").read_text()
    assert not (mesh.ws.root / "applied" / "hosts" / "api1.json").exists()


def test_a_failed_push_to_a_remaining_host_is_its_failure_and_exits_8(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    at(mesh, "db1").refuse_push = "registry not applied"
    left = mesh.meshctl("leave", "api1", "--json")
    assert left.code == 8, left.out + left.err
    rows = left.rows()
    assert {h: r["status"] for h, r in rows.items()} == {
        "api1": "left",
        "web1": "registry",
        "db1": "failed",
    }
    assert rows["db1"]["error"]["message"] == (
        "db1: pushing registry failed (500): registry not applied"
    )
    assert [h for h, row in rows.items() if "error" in row] == ["db1"]
