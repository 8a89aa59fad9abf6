"""``meshctl policy explain`` in-process: POLICY.md §3.1's decision table through --json, the
text view, headers, the applied set and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.meshctl.cli.fakes import fleet
from tests.meshctl.cli.helpers import meshctl

EXAMPLES = Path(__file__).parents[2] / "meshd" / "policy" / "lang" / "examples"
ZERO_TRUST = str(EXAMPLES / "zero-trust.toml")


def no_workspace(tmp_path: Path) -> dict[str, str]:
    return {"MESHCTL_WORKSPACE": str(tmp_path / "no-workspace")}


WEB_TO_API = ["--from", "web", "--to", "api", "--port", "8080"]
# POLICY.md §3.1: request -> (decision, status, rule, would_deny)
DECISIONS = [
    (
        [*WEB_TO_API, "--path", "/v1/orders"],
        ("allow", None, "zero-trust/allow/web-to-api", []),
    ),
    (
        [*WEB_TO_API, "--path", "/v1/admin/users"],
        ("deny", 403, "zero-trust/deny/no-admin-from-web", []),
    ),
    (
        [*WEB_TO_API, "--method", "DELETE", "--path", "/v1/orders/1"],
        ("allow", None, "zero-trust/allow/web-to-api", ["zero-trust/deny/retire-web-deletes"]),
    ),
    (
        ["--from", "api", "--to", "db", "--port", "5432", "--tcp"],
        ("allow", None, "zero-trust/allow/api-to-db", []),
    ),
    (
        ["--from", "web", "--to", "db", "--port", "5432", "--tcp"],
        ("reset", None, "zero-trust/authz/default", []),
    ),
    (
        ["--from", "prometheus", "--to", "db", "--port", "9102", "--path", "/metrics"],
        ("allow", None, "zero-trust/allow/metrics-scrape", []),
    ),
    (
        ["--from", "unauthenticated", "--to", "api", "--port", "8080", "--tcp"],
        ("reset", None, "zero-trust/mtls/mode", []),
    ),
    (  # the same before any byte is parsed: an HTTP request from it changes nothing
        ["--from", "unauthenticated", "--to", "api", "--port", "8080", "--path", "/v1/orders"],
        ("reset", None, "zero-trust/mtls/mode", []),
    ),
]


@pytest.mark.parametrize(("request_args", "expected"), DECISIONS)
def test_explain_gives_the_zero_trust_decision_table(
    tmp_path: Path, request_args: list[str], expected: tuple[object, ...]
) -> None:
    done = meshctl(
        "policy", "explain", *request_args, "-f", ZERO_TRUST, "--json", env=no_workspace(tmp_path)
    )
    assert done.code == 0, done.out + done.err
    decision, status, rule, would_deny = expected
    assert json.loads(done.out) == {
        "decision": decision,
        "status": status,
        "rule": rule,
        "would_deny": would_deny,
    }


def test_explain_text_and_spiffe_ids(tmp_path: Path) -> None:
    env = no_workspace(tmp_path)
    args = ["--to", "api", "--port", "8080", "--path", "/v1/%2e%2E/v1/admin/x", "-f", ZERO_TRUST]
    text = meshctl("policy", "explain", "--from", "spiffe://prod.example/svc/web", *args, env=env)
    assert text.code == 0, text.out + text.err
    assert "decision:   deny" in text.out
    assert "rule:       zero-trust/deny/no-admin-from-web" in text.out
    assert "would-deny: none" in text.out
    other = meshctl("policy", "explain", "--from", "host/web1", *args, "--json", env=env)
    assert json.loads(other.out)["rule"] == "zero-trust/authz/default"  # a host is no service
    bad = meshctl(
        "policy", "explain", "--from", "web", "--to", "api", "--port", "8080", "--path", "/a%2fb",
        "-f", ZERO_TRUST, "--json", env=env,
    )  # fmt: skip
    assert json.loads(bad.out) == {
        "decision": "bad-request",
        "status": 400,
        "rule": "normalize/encoded-slash",
        "would_deny": [],
    }


def test_explain_against_the_applied_set_takes_the_port_from_the_inventory(
    tmp_path: Path,
) -> None:
    mesh = fleet(tmp_path, "api1")
    done = mesh.meshctl("policy", "explain", "--from", "web", "--to", "api", "--json")
    assert done.code == 0, done.out + done.err
    assert done.json() == {
        "decision": "allow",
        "status": None,
        "rule": "mesh/authz/default",
        "would_deny": [],
    }
    unknown = mesh.meshctl("policy", "explain", "--from", "web", "--to", "nosuch")
    assert unknown.code == 2 and "--port is needed" in unknown.err


TENANT = """\
version = 1
name = "tenant"
trust_domain = "prod.example"

[[allow]]
name = "acme-only"
from = ["*"]
to = "api"
headers = { "x-tenant" = "acme" }
"""


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        (["x-tenant: acme"], "tenant/allow/acme-only"),
        (["X-Tenant:acme"], "tenant/allow/acme-only"),  # names match in any case
        (["x-tenant: acme", "x-tenant: acme"], "builtin/authz/default"),  # joined: "acme,acme"
        ([], "builtin/authz/default"),
    ],
)
def test_explain_passes_headers_as_received(tmp_path: Path, headers: list[str], rule: str) -> None:
    policy = tmp_path / "tenant.toml"
    policy.write_text(TENANT)
    flags = [f for h in headers for f in ("--header", h)]
    done = meshctl(
        "policy", "explain", "--from", "host/web1", "--to", "api", "--port", "80", *flags,
        "-f", str(policy), "--json", env=no_workspace(tmp_path),
    )  # fmt: skip
    assert done.code == 0, done.out + done.err
    assert json.loads(done.out)["rule"] == rule


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "web", "--header", "no-colon"], "write it as 'name: value'"),
        (["--from", "svc/a/b"], "use a service name, host/NAME, a SPIFFE ID"),
        (["--from", "Web"], "invalid svc name 'Web'"),
    ],
)
def test_explain_refuses_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    env = no_workspace(tmp_path)
    done = meshctl(
        "policy", "explain", "--to", "api", "--port", "80", *args, "-f", ZERO_TRUST, env=env
    )
    assert done.code != 0
    assert message in done.err
