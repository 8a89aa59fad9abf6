"""The guard of a local service under policy: prejudge per connection, judgement per use."""

from __future__ import annotations

import pytest

from meshd.policy.decisions import LOCAL_SERVICES, Deliver
from meshd.policy.guard import Guard
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.ratelimit import Buckets, Limited
from tests.meshd.policy.lang.build import TD, ZERO_TRUST, ZT, allow, document, limit, spiffe

WEB, API = spiffe("web"), spiffe("api")
POLICY = CompiledPolicy.compile([ZERO_TRUST], TD, 1)
LIMITED = CompiledPolicy.compile(
    [
        ZERO_TRUST,
        document("lim", rate_limits=[limit("lim", "two", "api", 2, paths=["/v1/orders"])]),
    ],
    TD,
    2,
)


def guard(service: str, port: int, policy: CompiledPolicy = POLICY) -> Guard:
    return Guard(service, port, policy.for_service(service), None)


@pytest.mark.parametrize(
    ("service", "port", "source", "wholesale"),
    [
        ("db", 5432, API, f"{ZT}/allow/api-to-db"),  # an L4 allow: relayed as L4
        ("db", 5432, WEB, None),  # default deny: the first bytes decide how to say so
        ("api", 8080, WEB, None),  # L7 rules: every request is judged
        ("api", 8080, None, None),  # plaintext to a strict service (reset before, at accept)
    ],
)
def test_a_connection_is_allowed_wholesale_only_when_nothing_depends_on_the_request(
    service: str, port: int, source: str | None, wholesale: str | None
) -> None:
    g = guard(service, port)
    admitted = g.admit(source, port)
    assert g.admit(source, port) is admitted  # remembered: the next connection allocates nothing
    if wholesale is None:
        assert admitted is g.inspect and admitted.guard is g
    else:
        assert admitted.guard is None and admitted.decided is not None
        assert (admitted.rule, admitted.decided.rule, admitted.decided.decision) == (
            wholesale,
            wholesale,
            "allow",
        )
        assert admitted == Deliver(service, port, wholesale, None, None, admitted.decided)
    assert g.inspect == Deliver(service, port, LOCAL_SERVICES, None, g)


@pytest.mark.parametrize(
    ("method", "target", "decision", "rule", "forward"),
    [
        ("GET", "/v1/orders", "allow", f"{ZT}/allow/web-to-api", None),
        ("GET", "/v1//orders/./1?x=%2e", "allow", f"{ZT}/allow/web-to-api", "/v1/orders/1?x=%2e"),
        ("GET", "/v1/public/%2e%2E/admin/x", "deny", f"{ZT}/deny/no-admin-from-web", "/v1/admin/x"),
        ("GET", "/v1/admin%2fx", "bad-request", "normalize/encoded-slash", None),
        ("get", "/v1/orders", "bad-request", "normalize/method-not-uppercase", None),
        ("PATCH", "/v1/orders", "deny", f"{ZT}/authz/default", None),
    ],
)
def test_a_request_is_normalised_then_judged(
    method: str, target: str, decision: str, rule: str, forward: str | None
) -> None:
    judged, target_out, limited = guard("api", 8080).judge(
        WEB, 8080, method, target, (), 0.0, Buckets()
    )
    assert (judged.decision, judged.rule, target_out, limited) == (decision, rule, forward, None)


def test_a_rate_limit_applies_to_allowed_requests_only() -> None:
    g, buckets = guard("api", 8080, LIMITED), Buckets()
    outcomes = [g.judge(WEB, 8080, "GET", "/v1/orders", (), 10.0, buckets)[2] for _ in range(3)]
    assert outcomes == [None, None, Limited("lim/rate_limit/two", 1)]
    denied = g.judge(WEB, 8080, "GET", "/v1/admin/x", (), 10.0, buckets)
    assert (denied[0].decision, denied[2]) == ("deny", None)  # judged before any bucket
    assert g.judge(WEB, 8080, "GET", "/v1/orders", (), 10.6, buckets)[2] is None  # refilled


@pytest.mark.parametrize(
    ("service", "port", "source", "decision", "rule"),
    [
        ("db", 5432, API, "allow", f"{ZT}/allow/api-to-db"),
        ("db", 5432, WEB, "reset", f"{ZT}/authz/default"),
        ("api", 8080, WEB, "reset", f"{ZT}/deny/no-admin-from-web"),  # denies fail closed
    ],
)
def test_opaque_tcp_is_judged_on_its_l4_fields(
    service: str, port: int, source: str, decision: str, rule: str
) -> None:
    judged, limited = guard(service, port).tcp(source, port, 0.0, Buckets())
    assert (judged.decision, judged.rule, limited) == (decision, rule, None)


def test_a_judgement_by_target_is_remembered_only_where_no_rule_reads_headers() -> None:
    tenant = CompiledPolicy.compile(
        [
            document(
                "h",
                rules=[allow("h", "acme", "api", ["web"], headers={"x-tenant": "acme"})],
                default="deny",
            )
        ],
        TD,
        1,
    )
    g, buckets = guard("api", 8080, tenant), Buckets()
    acme, other = (("X-Tenant", "acme"),), (("X-Tenant", "evil"),)
    outcomes = [
        g.judge(WEB, 8080, "GET", "/v1/x", headers, 0.0, buckets)[0].decision
        for headers in (acme, other, acme)
    ]
    assert outcomes == ["allow", "deny", "allow"]
    plain = guard("api", 8080)
    first = plain.judge(WEB, 8080, "GET", "/v1/orders", (), 0.0, buckets)
    assert plain.judge(WEB, 8080, "GET", "/v1/orders", (), 0.0, buckets) is not None
    assert plain.judge(API, 8080, "GET", "/v1/orders", (), 0.0, buckets)[0].rule != first[0].rule
