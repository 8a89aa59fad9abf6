"""The realistic policy of the meshd-policy chain: policy files as an operator writes them,
checked by the project's validator, and the `/policy` document pushed to meshd B.

50 services (``web``, the benchmarked one, and 49 others) in one zero-trust mesh:
a mesh-wide document (strict mTLS, authz default deny, rules for every service),
one document per team of services with four rules each, and web's own document
with L7 rules that the benchmarked requests go through: an allow with methods,
paths and port for the bench's client (host a), a deny on an admin subtree, an
audit deny (DELETE: never matched by the load, so it logs nothing), and a shared
rate limit high enough never to trigger. Every benchmarked request is judged by
web's rules and the mesh-wide ones, and takes a token.

The whole set is pushed to B, not the per-host cut meshctl pushes
(``wire.for_host``): B then holds every rule, which is what shows that a
decision does not pay for the rules of other services.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backend import Pki
from common import LOCAL, READY_TIMEOUT, SMALL_PATH, TRUST_DOMAIN, ChainError
from policytoml import allow, deny, document, rate_limit

SERVICES = 50
TEAM_SIZE = 7  # services per team document
DENIED_PATH = "/admin/users"  # what the smoke check asks for: 403 from web/deny/no-admin
DENIED_RULE = "web/deny/no-admin"
POLICY_VERSION = 7  # any version > 0; /stats must show it once pushed


@dataclass(frozen=True)
class PolicyFile:
    name: str  # the document name, also the file's stem
    text: str  # TOML, as an operator writes it (built by policytoml)


def others() -> list[str]:
    """The 49 services besides web."""
    return [f"svc-{i:02d}" for i in range(SERVICES - 1)]


def mesh_file() -> PolicyFile:
    text = document(
        "mesh",
        allow(
            "metrics-scrape",
            "*",
            ["prometheus"],
            ports=[9102],
            methods=["GET"],
            paths=["/metrics"],
        ),
        allow(
            "health-checks",
            "*",
            ["spiffe://bench.mesh/host/*"],
            methods=["GET", "HEAD"],
            paths=["/healthz", "/ready"],
        ),
        deny("no-debug", "*", ["*"], paths=["/debug/**"]),
        description="Zero trust: nothing is allowed unless a team's document allows it.",
        mtls={"mode": "strict"},
        authz={"default": "deny"},
    )
    return PolicyFile("mesh", text)


def team_file(team: int, services: Sequence[str], everyone: Sequence[str]) -> PolicyFile:
    """Four rules per service: two L7 allows from its callers, an L4 allow, an admin deny."""
    tables = []
    for svc in services:
        index = everyone.index(svc)
        caller = everyone[(index + 1) % len(everyone)]
        reader = everyone[(index + 7) % len(everyone)]
        tables += [
            allow(
                f"{svc}-from-{caller}",
                svc,
                [caller],
                ports=[8080],
                methods=["GET", "POST", "PUT", "DELETE"],
                paths=["/v1/**"],
            ),
            allow(
                f"{svc}-reads-{reader}",
                svc,
                [reader, "spiffe://bench.mesh/svc/reports"],
                methods=["GET"],
                paths=["/v1/items/*", "/v1/search/**"],
                headers={"x-tenant": {"prefix": "team-"}},
            ),
            allow(f"{svc}-tcp", svc, [caller], ports=[5432, "6000-6010"]),
            deny(f"{svc}-no-admin", svc, [caller, reader], paths=["/v1/admin/**"]),
        ]
    name = f"team-{team:02d}"
    text = document(name, *tables, description=f"Team {team}: who may call its services.")
    return PolicyFile(name, text)


def web_file(port: int) -> PolicyFile:
    """web's L7 rules: what the benchmarked requests (GET /small from host a) go through."""
    text = document(
        "web",
        allow(
            "bench-client",
            "web",
            ["host/a"],
            ports=[port],
            methods=["GET", "HEAD"],
            paths=[SMALL_PATH, "/bulk", "/v1/**", "/admin/**"],
        ),
        allow(
            "frontends",
            "web",
            ["svc-00", "svc-01", "spiffe://partner.example/svc/*"],
            ports=[port],
            methods=["GET", "POST"],
            paths=["/v1/**"],
            headers={"x-tenant": {"present": True}},
        ),
        allow("reports", "web", ["svc-02"], methods=["POST"], paths=["/v1/reports/*/run"]),
        deny("no-admin", "web", ["*"], paths=["/admin/**"]),
        deny("retire-deletes", "web", ["*"], methods=["DELETE"], audit=True),
        rate_limit("web-total", "web", 1_000_000_000, "1s", bucket="shared"),
        description="web: the bench client reads it, the admin subtree is closed.",
    )
    return PolicyFile("web", text)


def files(port: int) -> list[PolicyFile]:
    """Every policy file of the chain; ``port``: web's service port (nginx's)."""
    everyone = others()
    teams = [everyone[i : i + TEAM_SIZE] for i in range(0, len(everyone), TEAM_SIZE)]
    return [
        mesh_file(),
        *(team_file(n, members, everyone) for n, members in enumerate(teams)),
        web_file(port),
    ]


@dataclass(frozen=True)
class Checked:
    wire: dict[str, Any]  # the PUT /policy body
    rules: int  # allow + deny + rate_limit entries
    services: int  # distinct destination services the rules name (not "*")


def checked(port: int, now: dt.datetime | None = None) -> Checked:
    """The files checked by the project's validator (any problem: ValueError), as pushed."""
    from meshd.policy.lang.problems import errors  # noqa: PLC0415 - needs the project venv
    from meshd.policy.lang.validate import check_set, check_text  # noqa: PLC0415
    from meshd.policy.lang.wire import PolicyDocument  # noqa: PLC0415

    now = now or dt.datetime.now(dt.UTC)
    documents = []
    problems = []
    for f in files(port):
        document, found = check_text(f.text, f"{f.name}.toml", TRUST_DOMAIN, now)
        problems += errors(found)
        if document is not None:
            documents.append((document, f"{f.name}.toml"))
    problems += errors(check_set(documents))
    if problems:
        raise ValueError("\n".join(p.render() for p in problems))
    docs = [d for d, _ in documents]
    rules = sum(len(d.rules) + len(d.rate_limits) for d in docs)
    selectors = [r.selector for d in docs for r in d.rules]
    selectors += [r.selector for d in docs for r in d.rate_limits]
    targets = {s.to for s in selectors} - {"*"}
    body = PolicyDocument(POLICY_VERSION, tuple(d.data for d in docs)).to_json()
    return Checked(body, rules, len(targets))


# ---------------------------------------------------------------- pushing it to meshd B


def push_policy(pki: Pki, admin: int, backend: int, upstream: int) -> None:
    """PUT the policy on B's admin API, then prove it is in force; ChainError if not.

    In force: /stats reports its version, and through the chain (A's upstream
    listener ``upstream``) a request the policy denies gets 403 from the rule
    that denies it, while the benchmarked request still gets 200.
    """
    try:
        body = checked(backend).wire
    except ValueError as e:
        raise ChainError(f"the bench policy does not validate:\n{e}") from e
    status, text = _admin(pki, admin, "PUT", "/policy", json.dumps(body).encode())
    if status != 200:
        raise ChainError(f"PUT /policy on meshd B: {status} {text[:400]}")
    status, text = _admin(pki, admin, "GET", "/stats")
    version = json.loads(text).get("documents", {}).get("policy") if status == 200 else None
    if version != POLICY_VERSION:
        raise ChainError(f"meshd B's /stats shows policy {version}, not {POLICY_VERSION}")
    _expect(upstream, DENIED_PATH, 403, DENIED_RULE)
    _expect(upstream, SMALL_PATH, 200, None)


def _admin(
    pki: Pki, port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, str]:
    """One admin API call as the bench's operator, retried while B's admin port is not up."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # B's leaf names SPIFFE IDs, not a host name
    ctx.load_verify_locations(pki.bundle)
    ctx.load_cert_chain(pki.operator_cert, pki.operator_key)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        conn = http.client.HTTPSConnection(LOCAL, port, timeout=10, context=ctx)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise ChainError(f"meshd B's admin API on port {port} never answered") from None
            time.sleep(0.1)
        finally:
            conn.close()


def _expect(port: int, path: str, status: int, rule: str | None) -> None:
    """A GET through the chain answers ``status``, naming ``rule`` in x-mesh-rule if given."""
    conn = http.client.HTTPConnection(LOCAL, port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "bench"})
        response = conn.getresponse()
        response.read()
        got = (response.status, response.getheader("x-mesh-rule"))
    finally:
        conn.close()
    if got[0] != status or (rule is not None and got[1] != rule):
        raise ChainError(
            f"GET {path} through meshd-policy: {got[0]} (x-mesh-rule {got[1]}), "
            f"expected {status}" + (f" from {rule}" if rule else "")
        )
