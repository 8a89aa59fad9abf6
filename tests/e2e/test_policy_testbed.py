"""Policy end to end on real hosts: `meshctl policy apply`, then real HTTP and TCP through meshd.

Three testbed hosts joined by the real CLI (web1, api1, db1 serving web, api
and db, as tests/e2e/mesh3.py brings them up), and POLICY.md's zero-trust
example adapted to their ports, applied once by ``meshctl policy apply -f``
with the mesh document turned to default deny:

    web -> api:8081  GET/POST/PUT/DELETE /v1/**   allowed (web-to-api)
    web -> api       /v1/admin/**                 denied  (no-admin-from-web)
    web -> api       DELETE                       would-deny (retire-web-deletes, audit)
    api -> db:8082   any (L4)                     allowed (api-to-db)
    plaintext -> api GET /v1/public/**            allowed (api is permissive)
    web -> api       /v1/limited/**               5 per second (five-per-second)
    anything else                                 mesh/authz/default (deny)

and, last, a third document making api's default "audit".

The requests are made on the hosts (``http_probe.py``, copied there: raw
targets, keep-alive, parallel bursts, raw TCP), or from this machine for a
client outside the mesh. api's app echoes every ``/v1/**`` target it receives
and logs each request, which is how the tests see what reached it.
``meshctl policy explain`` must give, offline, what meshd answered on the
wire. The last tests push policy by hand (a refused document) and with a
host down. The tests run in order on one mesh (about 40 s here, bring-up and
reset included).

The requests come from root on the hosts, so they carry the identity of the
host's one service (``web``, ``api``): POLICY.md's "identity on hosts".
"""

from __future__ import annotations

import json
import shlex
import ssl
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from meshctl.testbed import Testbed
from meshctl.workspace import Workspace
from tests.e2e import http_probe
from tests.e2e.mesh3 import Mesh, Node, Result, joined_mesh
from tests.meshd.onhost import ok, put
from tests.meshd.policy.lang.build import policytoml
from tests.poll import until

pytestmark = pytest.mark.testbed

PROBE = "/usr/local/bin/meshctl-http-probe.py"
API, DB = ("api.mesh", 8081), ("db.mesh", 8082)

MESH_DENY = policytoml.document(
    "mesh",
    authz={"default": "deny"},
    comment="the mesh document, gone zero-trust: what no rule allows is denied",
)

ZERO_TRUST = """\
# POLICY.md 3.1 on the testbed's ports: web -> api -> db, and nothing else.
version = 1
name = "zero-trust"
description = "Only web may call api; only api may call db."

[mtls.services]
api = "permissive"          # a client outside the mesh, during its migration

[[allow]]
name = "web-to-api"
from = ["web"]
to = "api"
ports = [8081]
methods = ["GET", "POST", "PUT", "DELETE"]
paths = ["/v1/**"]

[[allow]]
name = "api-to-db"
from = ["api"]
to = "db"
ports = [8082]

[[allow]]
name = "outside-reads-public"
from = ["unauthenticated"]
to = "api"
ports = [8081]
methods = ["GET"]
paths = ["/v1/public/**"]

[[deny]]
name = "no-admin-from-web"
from = ["web"]
to = "api"
paths = ["/v1/admin/**"]

[[deny]]
name = "retire-web-deletes"
from = ["web"]
to = "api"
methods = ["DELETE"]
audit = true

[[rate_limit]]
name = "five-per-second"
to = "api"
paths = ["/v1/limited/**"]
limit = 5
per = "1s"
"""

ADMIN_RULE = "zero-trust/deny/no-admin-from-web"
# opaque bytes: no method token and a space (a word and a space would be taken for a
# request line, and answered 400 as HTTP, which is what meshd does on purpose)
NOT_HTTP = "42 not http at all\r\n\r\n"
DEFAULT_RULE = "mesh/authz/default"
AUDIT_RULE = "zero-trust/deny/retire-web-deletes"
LIMIT_RULE = "zero-trust/rate_limit/five-per-second"


@pytest.fixture(scope="module")
def mesh(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("policy")
    with joined_mesh(testbed, root) as m:
        for node in m.nodes:
            put(node.host, PROBE, Path(http_probe.__file__).read_bytes(), 0o755)
        applied = apply(m, root, {"mesh.toml": MESH_DENY, "zero-trust.toml": ZERO_TRUST})
        assert applied.code == 0, f"policy apply: exit {applied.code}\n{applied.out}{applied.err}"
        yield m


def apply(mesh: Mesh, root: Path, files: Mapping[str, str]) -> Result:
    """``meshctl policy apply -f`` of ``files`` (name -> text), written under ``root``."""
    paths = []
    for name, text in files.items():
        path = root / "policy" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        paths.append(str(path))
    return mesh.meshctl("policy", "apply", "-f", *paths)


# --- talking to the hosts ----------------------------------------------------------------------
def probe(
    node: Node, where: tuple[str, int], requests: list[dict[str, Any]], mode: str = "keep-alive"
) -> list[dict[str, Any]]:
    """Requests made on ``node`` (through its meshd) to ``where``: one answer each."""
    host, port = where
    command = (
        f"python3 {PROBE} http {host} {port} --mode {mode} "
        f"--requests {shlex.quote(json.dumps(requests))}"
    )
    answers: list[dict[str, Any]] = json.loads(ok(node.host, command))
    return answers


def get(target: str, method: str = "GET") -> dict[str, Any]:
    return {"method": method, "target": target}


def raw_tcp(node: Node, where: tuple[str, int], payload: str) -> dict[str, Any]:
    host, port = where
    command = f"python3 {PROBE} tcp {host} {port} --send {shlex.quote(payload)}"
    found: dict[str, Any] = json.loads(ok(node.host, command))
    return found


def policy_version(mesh: Mesh, node: Node) -> int:
    status, body = mesh.admin(node, "GET", "/policy")
    assert status == 200, body
    version: int = json.loads(body)["version"]
    return version


def metric(mesh: Mesh, node: Node, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    status, text = mesh.admin(node, "GET", "/metrics")
    assert status == 200, text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cursor(node: Node, unit: str) -> str:
    """Where ``unit``'s journal ends now (read what comes after with `journal_after`)."""
    out = ok(node.host, f"journalctl -u {unit} -n 1 --show-cursor --no-pager -o cat")
    return out.rsplit("-- cursor: ", 1)[1].strip()


def journal_after(node: Node, unit: str, after: str) -> list[str]:
    out = ok(
        node.host, f"journalctl -u {unit} --after-cursor={shlex.quote(after)} --no-pager -o cat"
    )
    return out.splitlines()


def authz_lines(lines: list[str]) -> list[dict[str, Any]]:
    """meshd's JSON decision lines (``event=authz``) among journal lines."""
    found = []
    for line in lines:
        start = line.find("{")
        if start < 0 or '"event"' not in line:
            continue
        try:
            doc = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") == "authz":
            found.append(doc)
    return found


def trust_domain(mesh: Mesh) -> str:
    return Workspace.load(mesh.ws).config.trust_domain


def svc(mesh: Mesh, name: str) -> str:
    return f"spiffe://{trust_domain(mesh)}/svc/{name}"


def denied(answer: dict[str, Any], rule: str) -> None:
    """A 403 of POLICY.md §2.6 for an authenticated peer, naming ``rule``."""
    assert answer.get("status") == 403, answer
    headers = answer["headers"]
    assert headers.get("x-mesh-decision") == "denied", answer
    assert headers.get("x-mesh-rule") == rule, answer
    assert headers.get("content-type", "").startswith("application/json"), answer
    body = json.loads(answer["body"])
    assert body["decision"] == "denied" and body["rule"] == rule, body


def echoed(answer: dict[str, Any], target: str, method: str = "GET") -> None:
    """api's app answered, and it received ``target``."""
    assert answer.get("status") == 200, answer
    body = json.loads(answer["body"])
    assert (body["method"], body["target"]) == (method, target), body


# --- 1. the zero-trust example's decisions, for real ---------------------------------------------
def test_every_host_runs_the_applied_version(mesh: Mesh) -> None:
    listed = mesh.meshctl("policy", "list", "--json")
    assert listed.code == 0, listed.out + listed.err
    version = json.loads(listed.out)["version"]
    assert version >= 1
    for node in mesh.nodes:
        assert policy_version(mesh, node) == version, node.name


def test_web_to_api_answers_200_or_403_with_the_rule_on_one_kept_alive_connection(
    mesh: Mesh,
) -> None:
    web, api = mesh.node("web1"), mesh.node("api1")
    decisions = "meshd_authz_decisions_total"
    counted = metric(mesh, api, decisions, service="api", decision="deny", rule=ADMIN_RULE)
    answers = probe(
        web,
        API,
        [get("/v1/admin/users"), get("/v1/orders"), get("/products"), get("/v1/orders/7")],
    )
    assert len(answers) == 4 and all("error" not in a for a in answers), answers
    denied(answers[0], ADMIN_RULE)
    body = json.loads(answers[0]["body"])
    assert body["detail"] == "matched deny rule", body
    assert body["service"] == "api" and body["source"] == svc(mesh, "web"), body
    assert body["request_id"], body
    echoed(answers[1], "/v1/orders")  # after the 403, on the same connection
    denied(answers[2], DEFAULT_RULE)  # not under /v1: no allow rule matches
    assert json.loads(answers[2]["body"])["detail"] == "no allow rule matched"
    echoed(answers[3], "/v1/orders/7")
    until(
        lambda: (
            metric(mesh, api, decisions, service="api", decision="deny", rule=ADMIN_RULE)
            == counted + 1
        ),
        10,
        "meshd_authz_decisions_total counted the denial",
    )


def test_web_to_db_is_denied_and_its_raw_tcp_reset_while_api_to_db_passes(mesh: Mesh) -> None:
    web, api = mesh.node("web1"), mesh.node("api1")
    garbage = NOT_HTTP
    from_api = raw_tcp(api, DB, garbage)
    # the control: db's app itself answers the same bytes (its HTTP server's 400 page)
    assert not from_api["reset"] and "400" in from_api["received"], from_api
    from_web = raw_tcp(web, DB, garbage)
    assert from_web["reset"] and from_web["received"] == "", from_web
    (answer,) = probe(web, DB, [get("/items")])
    denied(answer, DEFAULT_RULE)
    (answer,) = probe(api, DB, [get("/items")])
    assert answer["status"] == 200 and "espresso" in answer["body"], answer


def test_an_audit_rule_lets_delete_through_logging_and_counting_the_would_deny(
    mesh: Mesh,
) -> None:
    web, api = mesh.node("web1"), mesh.node("api1")
    counted = metric(mesh, api, "meshd_authz_would_deny_total", service="api", rule=AUDIT_RULE)
    mark = cursor(api, "meshd")
    (answer,) = probe(web, API, [get("/v1/orders/1", "DELETE")])
    echoed(answer, "/v1/orders/1", "DELETE")  # it reached the app

    def logged() -> list[dict[str, Any]]:
        lines = authz_lines(journal_after(api, "meshd", mark))
        return [d for d in lines if AUDIT_RULE in d.get("would_deny", [])]

    until(lambda: bool(logged()), 10, "the would-deny line in meshd's journal")
    (line,) = logged()
    assert line["decision"] == "allow" and line["rule"] == "zero-trust/allow/web-to-api", line
    assert (line["method"], line["path"], line["service"]) == ("DELETE", "/v1/orders/1", "api")
    assert line["source"] == svc(mesh, "web"), line
    until(
        lambda: (
            metric(mesh, api, "meshd_authz_would_deny_total", service="api", rule=AUDIT_RULE)
            == counted + 1
        ),
        10,
        "meshd_authz_would_deny_total counted it",
    )


# --- 2. mTLS modes, from outside the mesh ----------------------------------------------------------
def test_a_permissive_service_admits_plaintext_as_unauthenticated_and_a_strict_one_resets(
    mesh: Mesh,
) -> None:
    api, db = mesh.node("api1"), mesh.node("db1")
    outside = (api.host.address, 8081)  # this machine: no meshd, no certificate
    mark = cursor(api, "meshd")
    public, orders = http_probe.fresh(*outside, [get("/v1/public/menu"), get("/v1/orders")])
    echoed(public, "/v1/public/menu")
    assert orders["status"] == 403, orders
    assert orders["headers"].get("x-mesh-decision") == "denied", orders
    assert "x-mesh-rule" not in orders["headers"], orders  # rule names only to mesh peers
    body = json.loads(orders["body"])
    assert body["decision"] == "denied" and "rule" not in body and "source" not in body, body

    def logged() -> list[dict[str, Any]]:
        lines = authz_lines(journal_after(api, "meshd", mark))
        return [d for d in lines if d.get("path") == "/v1/orders" and d["decision"] == "deny"]

    until(lambda: bool(logged()), 10, "the plaintext denial in meshd's journal")
    assert logged()[0]["source"] == "unauthenticated", logged()
    mark = cursor(db, "meshd")
    strict = http_probe.tcp(db.host.address, 8082, b"GET /items HTTP/1.1\r\nHost: db\r\n\r\n")
    assert strict["reset"] and strict["received"] == "", strict
    until(
        lambda: any("mtls-required" in line for line in journal_after(db, "meshd", mark)),
        10,
        "the reset's reason (mtls-required) in db1's journal",
    )


# --- 3. rate limit ---------------------------------------------------------------------------------
def test_five_per_second_answers_429_to_the_sixth_and_recovers(mesh: Mesh) -> None:
    web, api = mesh.node("web1"), mesh.node("api1")
    before = metric(mesh, api, "meshd_ratelimit_limited_total", service="api", rule=LIMIT_RULE)
    burst = probe(web, API, [get(f"/v1/limited/{i}") for i in range(6)], mode="parallel")
    statuses = sorted(a.get("status", 0) for a in burst)
    assert statuses == [200] * 5 + [429], burst
    (limited,) = [a for a in burst if a["status"] == 429]
    headers = limited["headers"]
    assert headers.get("x-mesh-decision") == "rate-limited", limited
    assert headers.get("x-mesh-rule") == LIMIT_RULE, limited
    retry_after = int(headers["retry-after"])
    assert retry_after >= 1, limited
    time.sleep(retry_after)
    (again,) = probe(web, API, [get("/v1/limited/again")])
    echoed(again, "/v1/limited/again")
    (other,) = probe(web, API, [get("/v1/orders")])  # other paths were never limited
    echoed(other, "/v1/orders")
    until(
        lambda: (
            metric(mesh, api, "meshd_ratelimit_limited_total", service="api", rule=LIMIT_RULE)
            == before + 1
        ),
        10,
        "meshd_ratelimit_limited_total counted it",
    )


# --- 4. normalisation: tricks never pass a deny, the app sees normalised targets -----------------
TRICKS: list[tuple[str, int, str]] = [  # (raw target, status, rule or the target the app gets)
    ("/v1/public/%2e%2e/admin/users", 403, ADMIN_RULE),
    ("/v1/public/%2E%2e/admin/users", 403, ADMIN_RULE),
    ("/v1/public/%2E%2E/%2e%2e/v1/admin/users", 403, ADMIN_RULE),
    ("/v1/%61dmin/users", 403, ADMIN_RULE),
    ("/v1/%61%64%6D%69%6E/users", 403, ADMIN_RULE),
    ("//v1//admin//users", 403, ADMIN_RULE),
    ("/v1/./admin/./users", 403, ADMIN_RULE),
    ("/v1/orders/../admin/users", 403, ADMIN_RULE),
    ("/v1/admin%2Fusers", 400, "normalize/encoded-slash"),
    ("/v1/admin%2fusers", 400, "normalize/encoded-slash"),
    ("/v1/public/..%2Fadmin/users", 400, "normalize/encoded-slash"),
    ("/v1/public%5C..%5Cadmin/users", 400, "normalize/encoded-slash"),
    ("/v1/public\\..\\admin/users", 400, "normalize/backslash"),
    ("/v1/public/..;/admin/users", 400, "normalize/dot-segment-with-params"),
    ("/v1/admin/users%00", 400, "normalize/encoded-nul"),
    ("/v1/admin/users%00.json", 400, "normalize/encoded-nul"),
    ("/v1/public/%2e%2e/orders?q=%2e%2e", 200, "/v1/orders?q=%2e%2e"),
    ("//v1//orders//1", 200, "/v1/orders/1"),
    ("/v1/orders/%7e%3a", 200, "/v1/orders/~%3A"),
    ("/v1/%41dmin/users", 200, "/v1/Admin/users"),  # paths are case-sensitive
    ("/v1/admin/../orders", 200, "/v1/orders"),
]


def test_encoded_path_tricks_never_pass_a_deny_and_the_app_sees_normalised_targets(
    mesh: Mesh,
) -> None:
    web, api = mesh.node("web1"), mesh.node("api1")
    unit = api.app.unit
    mark = cursor(api, unit)
    answers = probe(web, API, [get(t) for t, _, _ in TRICKS], mode="fresh")
    for (target, status, expected), answer in zip(TRICKS, answers, strict=True):
        assert answer.get("status") == status, (target, answer)
        if status == 403:
            denied(answer, expected)
        elif status == 400:
            assert answer["headers"].get("x-mesh-decision") == "bad-request", (target, answer)
            assert answer["headers"].get("x-mesh-rule") == expected, (target, answer)
        else:
            echoed(answer, expected)
    reached = [t for t, s, _ in TRICKS if s == 200]
    seen: list[str] = []

    def app_saw_them() -> bool:
        seen[:] = [line for line in journal_after(api, unit, mark) if line.startswith("GET ")]
        return len(seen) >= len(reached)

    until(app_saw_them, 10, "the app's request lines")
    time.sleep(0.5)  # anything that should not have come would be here by now
    app_saw_them()
    targets = [line.split(" ")[1] for line in seen]
    assert targets == [e for _, s, e in TRICKS if s == 200], seen
    for target in targets:
        path = target.split("?", 1)[0]
        for bad in ("//", "/./", "/../", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00", ";"):
            assert bad not in path, (bad, target)
        assert "/admin" not in path, target


@pytest.mark.parametrize(("target", "status", "expected"), TRICKS)
def test_explain_offline_gives_what_meshd_answered_on_the_wire(
    mesh: Mesh, target: str, status: int, expected: str
) -> None:
    # the statuses and rules of TRICKS are what the test above saw meshd answer
    argv = ["policy", "explain", "--from", "web", "--to", "api", "--port", "8081"]
    found = mesh.meshctl(*argv, "--method", "GET", "--path", target, "--json")
    assert found.code == 0, found.out + found.err
    decision = json.loads(found.out)
    verdict = {403: "deny", 400: "bad-request", 200: "allow"}[status]
    rule = "zero-trust/allow/web-to-api" if status == 200 else expected
    assert (decision["decision"], decision["rule"]) == (verdict, rule), decision
    assert decision["status"] == (None if status == 200 else status), decision


# --- 5. a document pushed by hand that fails validation -------------------------------------------
def test_an_invalid_policy_pushed_by_hand_is_refused_and_the_old_one_keeps_running(
    mesh: Mesh,
) -> None:
    web, api = mesh.node("web1"), mesh.node("api1")
    version = policy_version(mesh, api)
    # were it taken, even in part (the bad rule skipped), default allow would open /v1/admin
    bad = {
        "version": version + 1,
        "documents": [
            {"version": 1, "name": "mesh", "authz": {"default": "allow"}},
            {
                "version": 1,
                "name": "sneaky",
                "allow": [{"name": "no-from", "to": "api", "methods": ["get"]}],
                "route": [{"name": "r", "to": "api", "split": []}],
            },
        ],
    }
    status, body = mesh.admin(api, "PUT", "/policy", bad)
    assert status == 400, body
    error = json.loads(body)["error"]
    assert "P004" in error and "P012" in error and "P002" in error, error  # every problem
    assert policy_version(mesh, api) == version
    answers = probe(web, API, [get("/v1/admin/users"), get("/v1/orders")])
    denied(answers[0], ADMIN_RULE)
    echoed(answers[1], "/v1/orders")


# --- 6. a push while one host is down ------------------------------------------------------------
def test_a_push_with_a_host_down_reaches_the_others_and_the_next_apply_catches_it_up(
    mesh: Mesh, tmp_path: Path
) -> None:
    web, api, db = (mesh.node(n) for n in ("web1", "api1", "db1"))
    before = policy_version(mesh, api)
    blocked = (
        ZERO_TRUST + "\n" + policytoml.deny("no-blocked", "api", ["web"], paths=["/v1/blocked/**"])
    )
    ok(db.host, "systemctl stop meshd")
    try:
        pushed = apply(mesh, tmp_path, {"zero-trust.toml": blocked})
        assert pushed.code != 0, pushed.out + pushed.err
        errors = [line for line in pushed.err.splitlines() if line.startswith("error:")]
        assert errors and all("db1" in line for line in errors), pushed.err  # db1, only db1
        rows = {line.split()[1]: line for line in pushed.out.splitlines() if line.startswith("│")}
        assert "failed" in rows["db1"], pushed.out
        assert "applied" in rows["web1"] and "applied" in rows["api1"], pushed.out
        version = policy_version(mesh, api)
        assert version > before
        assert policy_version(mesh, web) == version
        (answer,) = probe(web, API, [get("/v1/blocked/x")])
        denied(answer, "zero-trust/deny/no-blocked")  # api1 enforces the new version
    finally:
        ok(db.host, "systemctl start meshd")
    until(lambda: _answers(mesh, db), 30, "meshd back on db1")
    hosts = mesh_status(mesh)
    assert hosts["db1"]["policy_behind"] and hosts["db1"]["policy_version"] == before, hosts["db1"]
    assert not hosts["web1"]["policy_behind"] and not hosts["api1"]["policy_behind"], hosts
    again = apply(mesh, tmp_path, {"zero-trust.toml": blocked})
    assert again.code == 0, again.out + again.err
    assert policy_version(mesh, db) == version
    hosts = mesh_status(mesh)
    assert not any(h["policy_behind"] for h in hosts.values()), hosts
    # and db1 enforces it: web still may not reach db
    from_web = raw_tcp(web, DB, NOT_HTTP)
    assert from_web["reset"], from_web


def mesh_status(mesh: Mesh) -> dict[str, dict[str, Any]]:
    """``meshctl status --json``: each host's entry by name."""
    found = mesh.meshctl("status", "--json", "-i", str(mesh.tb.client_key))
    return {h["host"]: h for h in json.loads(found.out)["hosts"]}


def _answers(mesh: Mesh, node: Node) -> bool:
    try:
        return mesh.admin(node, "GET", "/healthz")[0] == 200
    except (OSError, ssl.SSLError):
        return False


# --- 7. default audit for one service ----------------------------------------------------------
AUDIT_API = policytoml.document(
    "audit-api",
    authz={"services": {"api": "audit"}},
    comment="api's unmatched calls pass, logged and counted, while its rules are written",
)


def test_default_audit_for_a_service_lets_unmatched_calls_through_and_counts_them(
    mesh: Mesh, tmp_path: Path
) -> None:
    web, api = mesh.node("web1"), mesh.node("api1")
    setting = "audit-api/authz/services/api"
    applied = apply(mesh, tmp_path, {"audit-api.toml": AUDIT_API})
    assert applied.code == 0, applied.out + applied.err
    counted = metric(mesh, api, "meshd_authz_would_deny_total", service="api", rule=setting)
    mark = cursor(api, "meshd")
    unmatched, guarded = probe(web, API, [get("/healthz"), get("/v1/admin/users")])
    assert unmatched["status"] == 200 and json.loads(unmatched["body"])["status"] == "ok"
    denied(guarded, ADMIN_RULE)  # audit is the default's: an enforced deny still wins

    def logged() -> list[dict[str, Any]]:
        lines = authz_lines(journal_after(api, "meshd", mark))
        return [d for d in lines if setting in d.get("would_deny", [])]

    until(lambda: bool(logged()), 10, "the default's would-deny line in meshd's journal")
    (line,) = logged()
    assert (line["decision"], line["rule"], line["path"]) == ("allow", setting, "/healthz"), line
    until(
        lambda: (
            metric(mesh, api, "meshd_authz_would_deny_total", service="api", rule=setting)
            == counted + 1
        ),
        10,
        "meshd_authz_would_deny_total counted it",
    )
