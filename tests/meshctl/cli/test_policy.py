"""``meshctl policy`` in-process: validate, apply (fake hosts, one down), list/show/diff/delete,
and what join and status do with the applied set."""

from __future__ import annotations

import json
from pathlib import Path

from tests.meshctl.cli.fakes import FLEET, FakeMesh, at, fleet
from tests.meshctl.cli.helpers import meshctl
from tests.meshctl.cli.test_explain import ZERO_TRUST, no_workspace
from tests.meshd.policy.lang.build import policytoml

MANY_ERRORS = """\
version = 1
name = "Bad_Name"
[authz]
default = "permit"
[[allow]]
name = "ro"
from = "web"
to = "api"
methods = ["GET", "get"]
ports = [70000]
[[deny]]
name = "d"
to = "api"
method = ["GET"]
"""


def test_validate_reports_every_problem_with_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MANY_ERRORS)
    good = tmp_path / "good.toml"
    good.write_text(policytoml.document("good"))
    env = no_workspace(tmp_path)
    done = meshctl("policy", "validate", str(bad), str(good), "--json", env=env)
    assert done.code == 2, done.out + done.err
    problems = json.loads(done.out)["problems"]
    keys = {"file", "line", "code", "field", "message", "severity"}
    assert all(set(p) == keys for p in problems)
    found = [(p["file"], p["line"], p["code"], p["field"]) for p in problems]
    assert found == [
        (str(bad), 2, "P006", "name"),
        (str(bad), 4, "P008", "authz.default"),
        (str(bad), 7, "P003", 'allow."ro".from'),
        (str(bad), 9, "P012", 'allow."ro".methods[1]'),
        (str(bad), 10, "P011", 'allow."ro".ports[0]'),
        (str(bad), 14, "P002", 'deny."d".method'),
    ]
    text = meshctl("policy", "validate", str(bad), env=env)
    assert text.code == 2
    lines = text.out.splitlines()
    assert lines[0].startswith(f"{bad}:2: error[P006] name: ")
    assert len(lines) == 6 and "6 errors in 1 file" in text.err


def test_validate_runs_the_cross_document_rules_among_the_files(tmp_path: Path) -> None:
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text(policytoml.document("one", authz={"default": "deny"}))
    two.write_text(policytoml.document("two", authz={"default": "audit"}))
    done = meshctl("policy", "validate", str(one), str(two), env=no_workspace(tmp_path))
    assert done.code == 2, done.out + done.err
    assert "error[P040] authz.default" in done.out
    alone = meshctl("policy", "validate", str(two), env=no_workspace(tmp_path))
    assert alone.code == 0, alone.out + alone.err


def test_a_fresh_workspace_holds_mesh_toml_with_default_allow(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path)
    text = (mesh.ws.root / "policies" / "mesh.toml").read_text()
    assert 'default = "allow"' in text and "zero-trust" in text
    valid = mesh.meshctl("policy", "validate", str(mesh.ws.root / "policies" / "mesh.toml"))
    assert valid.code == 0, valid.out + valid.err
    assert "warning[W002]" in valid.out
    strict = mesh.meshctl(
        "policy", "validate", "--strict", str(mesh.ws.root / "policies" / "mesh.toml")
    )
    assert strict.code == 2


def test_join_pushes_the_applied_set_and_status_says_default_allow(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    for name in ("web1", "api1"):
        policy = at(mesh, name).policy
        assert policy is not None and policy["version"] == 1
        assert [d["name"] for d in policy["documents"]] == ["mesh"]
    status = mesh.meshctl("status", "--json")
    assert status.code == 8  # db1 is not joined
    doc = status.json()
    assert doc["policy"]["version"] == 1
    assert any("authz default allow (mesh/authz/default)" in n for n in doc["policy"]["notes"])
    assert doc["hosts"][2]["policy_version"] == 1 and not doc["hosts"][2]["policy_behind"]
    text = mesh.meshctl("status")
    assert "policy: the mesh runs with authz default allow" in text.out


def web_api(methods: list[str], *more: str) -> str:
    """policy/web-api.toml: web may call api with ``methods``; ``more``: tables after it."""
    allow = policytoml.allow("web-to-api", "api", ["web"], ports=[8081], methods=methods)
    return policytoml.document("web-api", allow, *more, comment="web may call api")


WEB_API = web_api(["GET"])


def test_apply_with_a_host_down_then_again_brings_it_in_line(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1", "db1")
    policy = tmp_path / "web-api.toml"
    policy.write_text(WEB_API)
    mesh.unreachable = {FLEET["db1"][0]}
    done = mesh.meshctl("policy", "apply", "-f", str(policy), "--json")
    assert done.code == 8, done.out + done.err  # partial
    rows = done.rows()
    assert {h: r["status"] for h, r in rows.items()} == {
        "web1": "applied",
        "api1": "applied",
        "db1": "failed",
    }
    assert done.json()["version"] == 2
    assert any(n.startswith("not applied on db1:") for n in done.json()["notes"])
    assert "error: meshd on db1 (10.0.0.13:15000): no answer" in done.err
    assert (mesh.ws.root / "policies" / "web-api.toml").read_text() == WEB_API
    for name in ("web1", "api1"):
        assert at(mesh, name).policy["version"] == 2  # type: ignore[index]
    assert at(mesh, "db1").policy["version"] == 1  # type: ignore[index]
    # what each host enforces: api1 the rule for api, web1 none
    api_docs = {d["name"]: d for d in at(mesh, "api1").policy["documents"]}  # type: ignore[index]
    web_docs = {d["name"]: d for d in at(mesh, "web1").policy["documents"]}  # type: ignore[index]
    assert [r["name"] for r in api_docs["web-api"].get("allow", [])] == ["web-to-api"]
    assert web_docs.get("web-api", {}).get("allow", []) == []

    mesh.unreachable = set()
    status = mesh.meshctl("status", "--json")
    assert status.code == 8
    db1 = status.rows()["db1"]
    assert (db1["policy_version"], db1["expected_policy"], db1["policy_behind"]) == (1, 2, True)
    assert not db1["healthy"] and status.rows()["web1"]["healthy"]
    table = mesh.meshctl("status")
    assert "policy version 1, the workspace's is 2: run meshctl policy apply again" in table.out

    again = mesh.meshctl("policy", "apply", "-f", str(policy), "--json")
    assert again.code == 0, again.out + again.err
    assert {h: r["status"] for h, r in again.rows().items()} == {
        "web1": "current",
        "api1": "current",
        "db1": "applied",
    }
    assert again.json()["version"] == 2
    assert at(mesh, "db1").policy["version"] == 2  # type: ignore[index]
    assert mesh.meshctl("status").code == 0


def test_apply_with_errors_changes_nothing_anywhere(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1", "api1")
    bad = tmp_path / "bad.toml"
    bad.write_text(MANY_ERRORS.replace("Bad_Name", "bad"))
    before = mesh.workspace_files()
    policies_before = sorted((mesh.ws.root / "policies").iterdir())
    hosts_before = {a: h.model() for a, h in mesh.hosts.items()}
    mesh.requests.clear()
    done = mesh.meshctl("policy", "apply", "-f", str(bad))
    assert done.code == 2, done.out + done.err
    assert len(done.out.splitlines()) == 5 and "5 errors in 1 file" in done.err
    assert mesh.requests == []
    assert mesh.workspace_files() == before
    assert sorted((mesh.ws.root / "policies").iterdir()) == policies_before
    assert {a: h.model() for a, h in mesh.hosts.items()} == hosts_before


def test_apply_refuses_a_setting_another_document_owns(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1")
    mesh.requests.clear()
    done = mesh.meshctl("policy", "apply", "-f", ZERO_TRUST, "--json")
    assert done.code == 2, done.out + done.err
    [problem] = done.json()["problems"]
    assert (problem["file"], problem["code"], problem["field"]) == (
        ZERO_TRUST,
        "P040",
        "authz.default",
    )
    assert "mesh" in problem["message"]
    text = mesh.meshctl("policy", "apply", "-f", ZERO_TRUST)
    assert 'already set by document "mesh"' in text.out
    assert "hint: a setting has one owner in the applied set" in text.err
    assert mesh.requests == []
    assert not (mesh.ws.root / "policies" / "zero-trust.toml").exists()


def test_list_show_diff_and_delete(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "api1")
    policy = tmp_path / "web-api.toml"
    policy.write_text(WEB_API)
    assert mesh.meshctl("policy", "apply", "-f", str(policy)).code == 0
    listed = mesh.meshctl("policy", "list", "--json").json()
    assert listed["version"] == 2
    assert [(d["name"], d["allow"], d["settings"]) for d in listed["documents"]] == [
        ("mesh", 0, ["mesh/authz/default"]),
        ("web-api", 1, []),
    ]
    shown = mesh.meshctl("policy", "show", "web-api")
    assert (shown.code, shown.out) == (0, WEB_API)
    assert mesh.meshctl("policy", "show", "nope").code == 6
    assert mesh.meshctl("policy", "show", "../mesh").code == 6  # no path out of policies/
    assert "no applied policy document named '../hosts'" in (
        mesh.meshctl("policy", "delete", "../hosts").err
    )
    assert (mesh.ws.root / "hosts.toml").exists()

    no_admin = policytoml.deny("no-admin", "api", ["web"], paths=["/admin/**"])
    policy.write_text(web_api(["GET", "POST"], no_admin))
    diff = mesh.meshctl("policy", "diff", "-f", str(policy), "--json")
    assert diff.code == 0, diff.out + diff.err
    [doc] = diff.json()["documents"]
    assert doc["status"] == "changed"
    assert [(c["change"], c["id"]) for c in doc["changes"]] == [
        ("changed", "web-api/allow/web-to-api"),
        ("added", "web-api/deny/no-admin"),
    ]
    # POST is new in the allow, but the mesh's default allow let it through already: only the
    # rule that decides changes; the deny changes the admin path, and TCP (it fails closed)
    probes = [
        (d["source"], d["destination"], d["port"], d["method"], d["path"], d["tcp"])
        for d in diff.json()["decisions"]
    ]
    outcomes = [
        (d["before"]["decision"], d["before"]["rule"], d["after"]["decision"], d["after"]["rule"])
        for d in diff.json()["decisions"]
    ]
    assert probes == [
        ("web", "api", 8081, None, None, True),
        ("web", "api", 8081, "POST", "/", False),
        ("web", "api", 8081, "GET", "/admin/x", False),
    ]
    assert outcomes == [
        ("allow", "mesh/authz/default", "reset", "web-api/deny/no-admin"),
        ("allow", "mesh/authz/default", "allow", "web-api/allow/web-to-api"),
        ("allow", "web-api/allow/web-to-api", "deny", "web-api/deny/no-admin"),
    ]
    text = mesh.meshctl("policy", "diff", "-f", str(policy))
    assert "~ web-api/allow/web-to-api" in text.out and "+ web-api/deny/no-admin" in text.out
    assert (
        "web → api:8081 GET /admin/x: allow (web-api/allow/web-to-api) → deny "
        "(web-api/deny/no-admin)"
    ) in text.out
    assert "decisions: 3 of 15 probes change" in text.out
    assert at(mesh, "api1").policy["version"] == 2  # type: ignore[index]  # diff pushes nothing

    deleted = mesh.meshctl("policy", "delete", "web-api", "--json")
    assert deleted.code == 0, deleted.out + deleted.err
    assert deleted.json()["version"] == 3
    assert [d["name"] for d in at(mesh, "api1").policy["documents"]] == ["mesh"]  # type: ignore[index]
    last = mesh.meshctl("policy", "delete", "mesh")
    assert last.code == 0, last.out + last.err
    assert "no policy document is left" in last.out
    assert at(mesh, "api1").policy == {"version": 4, "documents": []}
    assert mesh.meshctl("policy", "list", "--json").json()["documents"] == []


PERMISSIVE = policytoml.document("legacy", mtls={"services": {"db": "permissive"}})


def test_apply_and_status_warn_while_a_service_is_permissive(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "db1")
    policy = tmp_path / "legacy.toml"
    policy.write_text(PERMISSIVE)
    done = mesh.meshctl("policy", "apply", "-f", str(policy))
    assert done.code == 0, done.out + done.err
    said = "service db runs permissive mTLS (legacy/mtls/services/db)"
    assert f"warning: {said}" in done.err
    assert any(said in n for n in mesh.meshctl("status", "--json").json()["policy"]["notes"])
    assert mesh.meshctl("policy", "delete", "legacy").code == 0
    assert not any(
        "permissive" in n for n in mesh.meshctl("status", "--json").json()["policy"]["notes"]
    )


def test_join_with_a_broken_applied_set_fails_the_host_naming_the_file(tmp_path: Path) -> None:
    mesh = fleet(tmp_path, "web1")
    broken = mesh.ws.root / "policies" / "broken.toml"
    broken.write_text('version = 1\nname = "broken"\n[authz]\ndefault = "permit"\n')
    joined = mesh.meshctl("join", "api1", "--json")
    assert joined.code != 0, joined.out + joined.err
    row = joined.rows()["api1"]
    assert row["status"] == "failed"
    assert f"{broken}:4: error[P008] authz.default" in row["error"]["message"]
    assert at(mesh, "api1").policy is None and at(mesh, "api1").active == "active"
    assert mesh.meshctl("policy", "list").code == 6  # PolicyError, naming the file too
