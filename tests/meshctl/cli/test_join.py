"""``meshctl join`` in-process against fake hosts and a scripted meshd admin API.

What a join does to a real host is proven in tests/meshctl/provision/
test_join_testbed.py; here the CLI's contract around it: which host a
failure is charged to, the exit codes of partial failure, and names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.meshctl.cli.fakes import FLEET, FakeMesh, at, fleet


def test_joining_hosts_that_all_succeed_exits_0(tmp_path: Path) -> None:
    mesh = fleet(tmp_path)
    joined = mesh.meshctl("join", "web1", "api1", "--json")
    assert joined.code == 0, joined.out + joined.err
    assert {h: r["status"] for h, r in joined.rows().items()} == {
        "web1": "joined",
        "api1": "joined",
    }
    for name in ("web1", "api1"):
        host = at(mesh, name)
        assert host.active == "active" and host.route
        assert b"api.mesh" in host.hosts and b"web.mesh" in host.hosts
    assert at(mesh, "db1").commands == []  # not named: not even read
    assert joined.err == ""


@pytest.mark.parametrize("refusing", ["api1", "web1"], ids=["the-joining-host", "another-host"])
def test_a_failed_registry_push_is_charged_to_the_host_it_failed_on(
    tmp_path: Path, refusing: str
) -> None:
    """api1 joins web1 and db1; one host's meshd refuses the new registry: its row fails."""
    mesh = fleet(tmp_path, "web1", "db1")
    at(mesh, refusing).refuse_push = "registry not applied: the disk is full"
    joined = mesh.meshctl("join", "api1", "--json")
    assert joined.code == 8, joined.out + joined.err  # partial
    rows = joined.rows()
    assert sorted(rows) == ["api1", "db1", "web1"]
    assert rows[refusing]["status"] == "failed"
    assert rows[refusing]["error"]["message"] == (
        f"{refusing}: pushing registry failed (500): registry not applied: the disk is full"
    )
    assert [h for h, row in rows.items() if "error" in row] == [refusing]
    expected = {"api1": "joined", "web1": "registry", "db1": "registry"}
    for host, row in rows.items():
        if host != refusing:
            assert row["status"] == expected[host], row
    assert rows["db1"]["done"] == ["registry version 2 applied, rules and names follow"]
    assert joined.err.count("error:") == 1 and f"error: {refusing}: pushing" in joined.err


@pytest.mark.parametrize(
    ("unreachable", "code"),
    [((), 0), (("api1",), 8), (("web1", "api1"), 4)],
    ids=["all-ok", "one-of-two-fails", "all-fail"],
)
def test_exit_codes(tmp_path: Path, unreachable: tuple[str, ...], code: int) -> None:
    """0 when every host joined, 8 when some did, the error's own code when none did."""
    mesh = fleet(tmp_path)
    mesh.unreachable = {FLEET[name][0] for name in unreachable}
    joined = mesh.meshctl("join", "web1", "api1", "--json")
    assert joined.code == code, joined.out + joined.err
    for name, row in joined.rows().items():
        if name in unreachable:
            address = FLEET[name][0]
            assert row["status"] == "failed"
            assert row["error"]["message"] == f"{address}:22: no answer within 10s"
            assert f"error: {address}:22: no answer within 10s" in joined.err
        else:
            assert row["status"] == "joined" and "error" not in row
    assert ("hint: is the host up and the SSH port open?" in joined.err) == bool(unreachable)


def test_a_name_another_host_has_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1")
    newcomer = mesh.host("10.0.0.14", "web2")
    before = mesh.workspace_files(), at(mesh, "web1").model(), newcomer.model()
    joined = mesh.meshctl("join", "root@10.0.0.14", "--name", "web1", "--service", "web:8080")
    assert joined.code == 5, joined.out + joined.err
    assert "error: host name 'web1' is already used by 10.0.0.11" in joined.err
    assert "hint: pass --name with another name, or meshctl leave the other host first" in (
        joined.err
    )
    assert (mesh.workspace_files(), at(mesh, "web1").model(), newcomer.model()) == before
    assert len(newcomer.commands) == 1  # its facts were read, and nothing else was run


def test_two_new_hosts_with_one_hostname_the_second_is_refused(tmp_path: Path) -> None:
    """Unnamed hosts take their hostname: the second "node" may not become the first."""
    mesh = FakeMesh(tmp_path)
    first, second = mesh.host("10.0.0.14", "node"), mesh.host("10.0.0.15", "node")
    untouched = second.model()
    joined = mesh.meshctl("join", "10.0.0.14", "10.0.0.15", "-s", "web:8080", "--json")
    assert joined.code == 8, joined.out + joined.err
    rows = {r["address"]: r for r in joined.json()["hosts"]}
    assert (rows["10.0.0.14"]["host"], rows["10.0.0.14"]["status"]) == ("node", "joined")
    assert rows["10.0.0.15"]["status"] == "failed"
    assert rows["10.0.0.15"]["error"]["message"] == "host name 'node' is already used by 10.0.0.14"
    assert first.active == "active"
    assert second.model() == untouched and len(second.commands) == 1
    hosts_toml = (mesh.ws.root / "hosts.toml").read_text()
    assert "10.0.0.14" in hosts_toml and "10.0.0.15" not in hosts_toml
