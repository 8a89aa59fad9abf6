"""The evaluator (§2.2, §2.4-2.6): selector matching, mTLS modes, deny-overrides, explain."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.evaluate import MAX_VIEWS, Decision, Request, explain
from meshd.policy.lang.model import Rule, Selector
from tests.meshd.policy.lang.build import (
    TD,
    ZERO_TRUST,
    allow,
    deny,
    document,
    limit,
    selector,
    spiffe,
)

WEB, API, PROM = spiffe("web"), spiffe("api"), spiffe("prometheus")
ZT = CompiledPolicy.compile([ZERO_TRUST], TD, version=3)


# -- POLICY.md §3.1: the decision table, through explain as meshctl runs it --------------


@pytest.mark.parametrize(
    ("source", "service", "port", "method", "target", "expected"),
    [
        (
            WEB,
            "api",
            8080,
            "GET",
            "/v1/orders",
            {
                "decision": "allow",
                "status": None,
                "rule": "zero-trust/allow/web-to-api",
                "would_deny": [],
            },
        ),
        (
            WEB,
            "api",
            8080,
            "GET",
            "/v1/admin/users",
            {
                "decision": "deny",
                "status": 403,
                "rule": "zero-trust/deny/no-admin-from-web",
                "would_deny": [],
            },
        ),
        (
            WEB,
            "api",
            8080,
            "DELETE",
            "/v1/orders/1",
            {
                "decision": "allow",
                "status": None,
                "rule": "zero-trust/allow/web-to-api",
                "would_deny": ["zero-trust/deny/retire-web-deletes"],
            },
        ),
        (
            API,
            "db",
            5432,
            None,
            "",
            {
                "decision": "allow",
                "status": None,
                "rule": "zero-trust/allow/api-to-db",
                "would_deny": [],
            },
        ),
        (
            WEB,
            "db",
            5432,
            None,
            "",
            {
                "decision": "reset",
                "status": None,
                "rule": "zero-trust/authz/default",
                "would_deny": [],
            },
        ),
        (
            PROM,
            "db",
            9102,
            "GET",
            "/metrics",
            {
                "decision": "allow",
                "status": None,
                "rule": "zero-trust/allow/metrics-scrape",
                "would_deny": [],
            },
        ),
        (
            None,
            "api",
            8080,
            "GET",
            "/v1/orders",
            {"decision": "reset", "status": None, "rule": "zero-trust/mtls/mode", "would_deny": []},
        ),
        (
            None,
            "api",
            8080,
            None,
            "",
            {"decision": "reset", "status": None, "rule": "zero-trust/mtls/mode", "would_deny": []},
        ),
    ],
)
def test_zero_trust_table(
    source: str | None,
    service: str,
    port: int,
    method: str | None,
    target: str,
    expected: dict[str, object],
) -> None:
    assert explain(ZT, service, port, source, method, target, ()).to_json() == expected


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("/v1/%61dmin/users", "zero-trust/deny/no-admin-from-web"),  # %61 is "a"
        ("/v1/public/%2e%2E/admin/users", "zero-trust/deny/no-admin-from-web"),
        ("//v1//admin//users", "zero-trust/deny/no-admin-from-web"),
        ("/v1/public/../admin/users", "zero-trust/deny/no-admin-from-web"),
        ("/v1/admin", "zero-trust/deny/no-admin-from-web"),
        ("/v1/admin/", "zero-trust/deny/no-admin-from-web"),
        ("/v1/ADMIN/users", "zero-trust/allow/web-to-api"),  # case-sensitive, as documented
        ("/v1/admin/..;/x", "normalize/dot-segment-with-params"),
        ("/v1/admin%2Fusers", "normalize/encoded-slash"),
        ("/v1/a%00", "normalize/encoded-nul"),
        ("/v1/a#x", "normalize/fragment"),
    ],
)
def test_encoded_tricks_do_not_pass_the_admin_deny(target: str, rule: str) -> None:
    decision = explain(ZT, "api", 8080, WEB, "GET", target, ())
    assert decision.rule == rule
    assert decision.decision == (
        "allow" if "allow" in rule else "bad-request" if "normalize" in rule else "deny"
    )


def test_bad_request_shape() -> None:
    decision = explain(ZT, "api", 8080, WEB, "get", "/v1/orders", ())
    assert decision.to_json() == {
        "decision": "bad-request",
        "status": 400,
        "rule": "normalize/method-not-uppercase",
        "would_deny": [],
    }


def test_strict_reset_comes_before_normalisation() -> None:
    assert explain(ZT, "api", 8080, None, "GET", "/a#b", ()).rule == "zero-trust/mtls/mode"


# -- §2.2 selector matching: one allow rule, default deny -------------------------------


def verdict(rule_selector: Selector, request: Request, kind: str = "allow") -> str:
    """The decision for ``request`` with only that rule, permissive mTLS and default deny."""
    rule = Rule(f"t/{kind}/r", kind, "r", rule_selector)  # type: ignore[arg-type]
    doc = document("t", [rule], mode="permissive", default="allow" if kind == "deny" else "deny")
    return CompiledPolicy.compile([doc], TD).for_service(request.service).evaluate(request).decision


def http(
    path: str = "/",
    method: str = "GET",
    port: int = 8080,
    source: str | None = WEB,
    headers: Sequence[tuple[str, str]] = (),
    service: str = "api",
) -> Request:
    return Request(service, port, source, method, path, tuple(headers))


def tcp(port: int = 8080, source: str | None = WEB, service: str = "api") -> Request:
    return Request(service, port, source)


MATCHING = [
    # paths: ** is a subtree (zero or more segments), * exactly one non-empty segment
    (selector("api", ["web"], paths=["/v1/**"]), http("/v1"), True),
    (selector("api", ["web"], paths=["/v1/**"]), http("/v1/"), True),
    (selector("api", ["web"], paths=["/v1/**"]), http("/v1/a/b"), True),
    (selector("api", ["web"], paths=["/v1/**"]), http("/v1x"), False),
    (selector("api", ["web"], paths=["/v1/**"]), http("/V1/a"), False),
    (selector("api", ["web"], paths=["/v1/**"]), http("/"), False),
    (selector("api", ["web"], paths=["/**"]), http("/"), True),
    (selector("api", ["web"], paths=["/**"]), http("/a/b/c/"), True),
    (selector("api", ["web"], paths=["/admin"]), http("/admin"), True),
    (selector("api", ["web"], paths=["/admin"]), http("/admin/"), True),
    (selector("api", ["web"], paths=["/admin"]), http("/admin/x"), False),
    (selector("api", ["web"], paths=["/admin"]), http("/Admin"), False),
    (selector("api", ["web"], paths=["/"]), http("/"), True),
    (selector("api", ["web"], paths=["/"]), http("/a"), False),
    (selector("api", ["web"], paths=["/users/*/profile"]), http("/users/7/profile"), True),
    (selector("api", ["web"], paths=["/users/*/profile"]), http("/users/7/profile/"), True),
    (selector("api", ["web"], paths=["/users/*/profile"]), http("/users/profile"), False),
    (selector("api", ["web"], paths=["/users/*/profile"]), http("/users/7/8/profile"), False),
    (selector("api", ["web"], paths=["/users/*"]), http("/users/7"), True),
    (selector("api", ["web"], paths=["/users/*"]), http("/users"), False),
    (selector("api", ["web"], paths=["/users/*"]), http("/users/"), False),
    (selector("api", ["web"], paths=["/users/*"]), http("/users/7/x"), False),
    (selector("api", ["web"], paths=["/*"]), http("/"), False),
    (selector("api", ["web"], paths=["/a/*/**"]), http("/a/b"), True),
    (selector("api", ["web"], paths=["/a/*/**"]), http("/a/b/c/d"), True),
    (selector("api", ["web"], paths=["/a/*/**"]), http("/a"), False),
    (selector("api", ["web"], paths=["/%2A"]), http("/%2A"), True),
    (selector("api", ["web"], paths=["/%2A"]), http("/x"), False),
    (selector("api", ["web"], paths=["/a", "/b/**"]), http("/b/c"), True),
    # methods: upper-case, GET does not imply HEAD
    (selector("api", ["web"], methods=["GET"]), http(method="GET"), True),
    (selector("api", ["web"], methods=["GET"]), http(method="HEAD"), False),
    (selector("api", ["web"], methods=["GET", "POST"]), http(method="POST"), True),
    # ports: values and inclusive ranges
    (selector("api", ["web"], port=[8080, "9000-9100"]), http(port=8080), True),
    (selector("api", ["web"], port=[8080, "9000-9100"]), http(port=9000), True),
    (selector("api", ["web"], port=[8080, "9000-9100"]), http(port=9050), True),
    (selector("api", ["web"], port=[8080, "9000-9100"]), http(port=9100), True),
    (selector("api", ["web"], port=[8080, "9000-9100"]), http(port=8081), False),
    (selector("api", ["web"], port=[8080, "9000-9100"]), http(port=8999), False),
    (selector("api", ["web"], port=[8080, "9000-9100"]), http(port=9101), False),
    # sources
    (selector("api", ["web"]), http(source=WEB), True),
    (selector("api", ["web"]), http(source=API), False),
    (selector("api", ["web"]), http(source=WEB + "x"), False),
    (selector("api", ["web"]), http(source="spiffe://other.td/svc/web"), False),
    (
        selector("api", ["spiffe://other.td/svc/web"]),
        http(source="spiffe://other.td/svc/web"),
        True,
    ),
    (selector("api", ["spiffe://prod.example/svc/*"]), http(source=API), True),
    (
        selector("api", ["spiffe://prod.example/svc/*"]),
        http(source="spiffe://prod.example/host/h1"),
        False,
    ),
    (selector("api", ["spiffe://prod.example/svc/*"]), http(source=None), False),
    (selector("api", ["*"]), http(source="spiffe://other.td/host/x"), True),
    (selector("api", ["*"]), http(source=None), False),
    (selector("api", ["unauthenticated"]), http(source=None), True),
    (selector("api", ["unauthenticated"]), http(source=WEB), False),
    (selector("api", ["web", "unauthenticated"]), http(source=None), True),
    # headers: case-insensitive names, values joined with "," in arrival order
    (
        selector("api", ["web"], headers={"x-tenant": "acme"}),
        http(headers=[("X-Tenant", "acme")]),
        True,
    ),
    (
        selector("api", ["web"], headers={"x-tenant": "acme"}),
        http(headers=[("x-tenant", "Acme")]),
        False,
    ),
    (
        selector("api", ["web"], headers={"x-tenant": "acme"}),
        http(headers=[("x-tenant", "acme"), ("X-TENANT", "acme")]),
        False,
    ),
    (
        selector("api", ["web"], headers={"x-tenant": "acme,beta"}),
        http(headers=[("x-tenant", "acme"), ("x-other", "1"), ("x-tenant", "beta")]),
        True,
    ),
    (
        selector("api", ["web"], headers={"x-tenant": "acme,beta"}),
        http(headers=[("x-tenant", "beta"), ("x-tenant", "acme")]),
        False,
    ),
    (selector("api", ["web"], headers={"x-tenant": "acme"}), http(), False),
    (
        selector("api", ["web"], headers={"x-env": ("prefix", "qa-")}),
        http(headers=[("x-env", "qa-7")]),
        True,
    ),
    (
        selector("api", ["web"], headers={"x-env": ("prefix", "qa-")}),
        http(headers=[("x-env", "prod")]),
        False,
    ),
    (selector("api", ["web"], headers={"x-env": ("prefix", "qa-")}), http(), False),
    (selector("api", ["web"], headers={"x-debug": True}), http(headers=[("X-Debug", "")]), True),
    (selector("api", ["web"], headers={"x-debug": True}), http(), False),
    (selector("api", ["web"], headers={"x-debug": False}), http(), True),
    (selector("api", ["web"], headers={"x-debug": False}), http(headers=[("x-debug", "1")]), False),
    (selector("api", ["web"], headers={"a": "1", "b": "2"}), http(headers=[("a", "1")]), False),
    (
        selector("api", ["web"], headers={"a": "1", "b": "2"}),
        http(headers=[("b", "2"), ("a", "1")]),
        True,
    ),
    # fields AND'ed
    (selector("api", ["web"], port=[8080], methods=["GET"], paths=["/v1/**"]), http("/v1/x"), True),
    (
        selector("api", ["web"], port=[8080], methods=["GET"], paths=["/v1/**"]),
        http("/v1/x", "POST"),
        False,
    ),
    # to: the rule's service or every service
    (selector("db", ["web"]), http(), False),
    (selector("*", ["web"]), http(), True),
    (selector("*", ["web"]), http(service="anything"), True),
    # opaque TCP: an allow with an HTTP-only field never matches
    (selector("api", ["web"], port=[8080]), tcp(8080), True),
    (selector("api", ["web"], port=[8080]), tcp(8081), False),
    (selector("api", ["web"], methods=["GET"]), tcp(), False),
    (selector("api", ["web"], paths=["/**"]), tcp(), False),
    (selector("api", ["web"], headers={"x-debug": False}), tcp(), False),
]


@pytest.mark.parametrize(("rule_selector", "request_", "allowed"), MATCHING)
def test_allow_rule_matching(rule_selector: Selector, request_: Request, allowed: bool) -> None:
    expected = "allow" if allowed else ("deny" if request_.method else "reset")
    assert verdict(rule_selector, request_) == expected


@pytest.mark.parametrize(
    ("rule_selector", "request_", "decision"),
    [
        # opaque TCP: HTTP-only fields are unknown, so a deny matches on its L4 fields
        (selector("api", ["web"], methods=["DELETE"]), tcp(), "reset"),
        (selector("api", ["web"], paths=["/admin/**"]), tcp(), "reset"),
        (selector("api", ["web"], headers={"x-debug": True}), tcp(), "reset"),
        (selector("api", ["web"], port=[9000], paths=["/admin/**"]), tcp(8080), "allow"),
        (selector("api", ["api"], paths=["/admin/**"]), tcp(), "allow"),
        (selector("api", ["web"], paths=["/admin/**"]), http("/other"), "allow"),
        (selector("api", ["web"], paths=["/admin/**"]), http("/admin"), "deny"),
        (selector("api"), http(source=None), "deny"),  # no `from`: plaintext included
        (selector("api"), tcp(source="spiffe://x/y"), "reset"),
    ],
)
def test_deny_rule_matching(rule_selector: Selector, request_: Request, decision: str) -> None:
    assert verdict(rule_selector, request_, kind="deny") == decision


# -- §2.4 mTLS modes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "services", "service", "decision", "rule"),
    [
        (None, None, "api", "reset", "builtin/mtls/mode"),
        ("strict", None, "api", "reset", "m/mtls/mode"),
        ("permissive", None, "api", "allow", "m/allow/any"),
        ("permissive", {"api": "strict"}, "api", "reset", "m/mtls/services/api"),
        ("strict", {"legacy": "permissive"}, "legacy", "allow", "m/allow/any"),
        ("strict", {"legacy": "permissive"}, "api", "reset", "m/mtls/mode"),
        (None, {"legacy": "permissive"}, "api", "reset", "builtin/mtls/mode"),
    ],
)
def test_mtls_modes_for_plaintext(
    mode: str | None, services: dict[str, str] | None, service: str, decision: str, rule: str
) -> None:
    doc = document(
        "m", [allow("m", "any", "*", ["unauthenticated"])], mode=mode, mtls_services=services
    )
    policy = CompiledPolicy.compile([doc], TD).for_service(service)
    got = policy.evaluate(http(source=None, service=service))
    assert (got.decision, got.rule) == (decision, rule)
    if decision == "reset":
        assert got.detail == "mtls-required"
        assert policy.mode == "strict" and policy.mode_rule == rule


def test_authenticated_peers_pass_strict_mode() -> None:
    doc = document("m", [allow("m", "any", "*", ["*"])], mode="strict")
    assert (
        CompiledPolicy.compile([doc], TD).for_service("api").evaluate(http()).rule == "m/allow/any"
    )


# -- §2.5 the algorithm and §2.6 what it reports ------------------------------------------


def decide(docs: Sequence[object], request: Request) -> Decision:
    return CompiledPolicy.compile(docs, TD).for_service(request.service).evaluate(request)  # type: ignore[arg-type]


def test_deny_wins_at_every_specificity() -> None:
    doc = document(
        "d",
        [
            deny("d", "broad", "*", ["*"]),
            allow(
                "d", "narrow", "api", ["batch"], port=[8080], methods=["GET"], paths=["/v1/report"]
            ),
        ],
    )
    got = decide([doc], http("/v1/report", source=spiffe("batch")))
    assert (got.decision, got.status, got.rule, got.detail) == (
        "deny",
        403,
        "d/deny/broad",
        "matched deny rule",
    )


@pytest.mark.parametrize("order", [1, -1])
def test_smallest_id_is_reported(order: int) -> None:
    denies = [
        deny("d", "zz", "api", ["web"]),
        deny("d", "aa", "*", ["web"]),
        deny("d", "mm", "api", ["web"]),
    ]
    allows = [
        allow("d", "b", "api", ["web"]),
        allow("d", "a", "*", ["web"]),
        allow("d", "c", "api", ["web"]),
    ]
    doc = document("d", (denies + allows)[::order])
    assert decide([doc], http()).rule == "d/deny/aa"
    assert decide([doc], http(source=API)).rule == "builtin/authz/default"
    got = decide([document("d", allows[::order])], http())
    assert (got.decision, got.rule, got.detail) == ("allow", "d/allow/a", "matched allow rule")


@pytest.mark.parametrize(
    ("default", "services", "decision", "rule", "would"),
    [
        (None, None, "deny", "builtin/authz/default", ("d/deny/audit",)),
        ("deny", None, "deny", "d/authz/default", ("d/deny/audit",)),
        ("allow", None, "allow", "d/authz/default", ("d/deny/audit",)),
        ("audit", None, "allow", "d/authz/default", ("d/authz/default", "d/deny/audit")),
        ("allow", {"api": "deny"}, "deny", "d/authz/services/api", ("d/deny/audit",)),
        (
            "deny",
            {"api": "audit"},
            "allow",
            "d/authz/services/api",
            ("d/authz/services/api", "d/deny/audit"),
        ),
        ("deny", {"db": "allow"}, "deny", "d/authz/default", ("d/deny/audit",)),
    ],
)
def test_defaults_and_would_deny(
    default: str | None,
    services: dict[str, str] | None,
    decision: str,
    rule: str,
    would: tuple[str, ...],
) -> None:
    doc = document(
        "d",
        [deny("d", "audit", "api", ["web"], audit=True)],
        default=default,
        authz_services=services,
    )
    got = decide([doc], http())
    assert (got.decision, got.rule, got.would_deny) == (decision, rule, would)


def test_audit_deny_enforces_nothing_and_is_reported_with_deny() -> None:
    doc = document(
        "d",
        [
            deny("d", "real", "api", ["web"], paths=["/x"]),
            deny("d", "dry-b", "api", ["web"], audit=True),
            deny("d", "dry-a", "*", audit=True),
            allow("d", "ok", "api", ["web"]),
        ],
    )
    assert decide([doc], http("/y")).to_json() == {
        "decision": "allow",
        "status": None,
        "rule": "d/allow/ok",
        "would_deny": ["d/deny/dry-a", "d/deny/dry-b"],
    }
    assert decide([doc], http("/x")).would_deny == ("d/deny/dry-a", "d/deny/dry-b")
    assert decide([doc], tcp()).to_json() == {  # audit denies fail closed on TCP too
        "decision": "reset",
        "status": None,
        "rule": "d/deny/real",
        "would_deny": ["d/deny/dry-a", "d/deny/dry-b"],
    }


@pytest.mark.parametrize(
    ("rules", "detail"),
    [
        ([], "default allow disabled"),
        ([allow("d", "other", "api", ["api"])], "no allow rule matched"),
    ],
)
def test_default_deny_detail(rules: list[Rule], detail: str) -> None:
    got = decide([document("d", rules)], http())
    assert (got.decision, got.status, got.detail) == ("deny", 403, detail)
    assert decide([document("d", rules)], tcp()).status is None


def test_rules_for_other_services_are_not_compiled_in() -> None:
    doc = document(
        "d",
        [allow("d", f"r{i}", f"svc{i}", ["web"]) for i in range(50)]
        + [allow("d", "mine", "api", ["web"]), allow("d", "all", "*", ["api"])],
    )
    policy = CompiledPolicy.compile([doc], TD)
    assert [m.id for m in policy.for_service("api").allows] == ["d/allow/all", "d/allow/mine"]
    assert [m.id for m in policy.for_service("unknown").allows] == ["d/allow/all"]
    assert policy.enforcing and not CompiledPolicy.compile([], TD).enforcing


def test_rate_limits_that_apply() -> None:
    limits = [
        limit("r", "all", "api", 5),
        limit("r", "get", "api", 5, methods=["GET"]),
        limit("r", "other", "db", 5),
        limit("r", "web", "*", 5, sources=["web"]),
    ]
    policy = CompiledPolicy.compile([document("r", rate_limits=limits)], TD).for_service("api")
    assert [r.id for r in policy.rate_limits(http())] == [
        "r/rate_limit/all",
        "r/rate_limit/get",
        "r/rate_limit/web",
    ]
    assert [r.id for r in policy.rate_limits(http(method="POST", source=API))] == [
        "r/rate_limit/all"
    ]
    assert [r.id for r in policy.rate_limits(tcp())] == ["r/rate_limit/all", "r/rate_limit/web"]


# -- the L4 prejudge ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "default", "source", "port", "expected"),
    [
        ([allow("c", "a", "api", ["web"], port=[8080])], None, WEB, 8080, "allow"),
        ([allow("c", "a", "api", ["web"], port=[8080])], None, WEB, 8081, "deny"),
        ([allow("c", "a", "api", ["web"], port=[8080])], None, None, 8080, "deny"),  # strict
        ([allow("c", "a", "api", ["web"], paths=["/v1/**"])], None, WEB, 8080, "inspect"),
        (
            [allow("c", "a", "api", ["web"]), deny("c", "d", "api", ["web"])],
            None,
            WEB,
            8080,
            "deny",
        ),
        (
            [allow("c", "a", "api", ["web"]), deny("c", "d", "api", ["web"], paths=["/x"])],
            None,
            WEB,
            8080,
            "inspect",
        ),
        (
            [allow("c", "a", "api", ["web"]), deny("c", "d", "api", ["web"], audit=True)],
            None,
            WEB,
            8080,
            "inspect",
        ),
        ([], "allow", WEB, 8080, "allow"),
        ([], "audit", WEB, 8080, "inspect"),
        ([], "deny", WEB, 8080, "deny"),
        ([deny("c", "d", "api", ["api"])], "allow", WEB, 8080, "allow"),
    ],
)
def test_connection_prejudge(
    rules: list[Rule], default: str | None, source: str | None, port: int, expected: str
) -> None:
    policy = CompiledPolicy.compile([document("c", rules, default=default)], TD).for_service("api")
    assert policy.connection(source, port) == expected


def test_prejudge_sees_rate_limits() -> None:
    doc = document("c", [allow("c", "a", "api", ["web"])], rate_limits=[limit("c", "l", "api", 5)])
    assert CompiledPolicy.compile([doc], TD).for_service("api").connection(WEB, 8080) == "inspect"


def test_per_peer_memo_is_keyed_by_port_and_bounded() -> None:
    doc = document("c", [allow("c", "a", "api", ["web"], port=[8080])])
    policy = CompiledPolicy.compile([doc], TD).for_service("api")
    assert [policy.evaluate(tcp(p)).decision for p in (8080, 8081, 8080)] == [
        "allow",
        "reset",
        "allow",
    ]
    assert [policy.connection(WEB, p) for p in (8081, 8080)] == ["deny", "allow"]
    for port in range(1, MAX_VIEWS + 10):
        policy.connection(WEB, port)
    assert len(policy._views) <= MAX_VIEWS
    assert policy.evaluate(tcp(8080)).decision == "allow"
