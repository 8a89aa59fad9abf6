"""The guard of a local service under policy: prejudge per connection, judgement per use."""

from __future__ import annotations

import pytest

from meshd.policy.decisions import LOCAL_SERVICES, Deliver
from meshd.policy.guard import MAX_JUDGED, Guard, Remembered
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.evaluate import Decision
from meshd.policy.lang.model import RateLimit, Rule
from meshd.policy.lang.ratelimit import Buckets, Limited
from meshd.proxy.http.plan import RequestHead
from tests.meshd.policy.lang.build import (
    TD,
    ZERO_TRUST,
    ZT,
    allow,
    deny,
    document,
    limit,
    selector,
    spiffe,
)

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
        assert admitted.guard is g and admitted.decided is not None  # HTTP: normalised
        assert (admitted.rule, admitted.decided.rule, admitted.decided.decision) == (
            wholesale,
            wholesale,
            "allow",
        )
        assert admitted == Deliver(service, port, wholesale, None, g, admitted.decided)
    assert g.inspect == Deliver(service, port, LOCAL_SERVICES, None, g)


def test_a_peer_allowed_wholesale_still_gets_its_target_normalised() -> None:
    # zero-trust: api -> db is an L4 allow; an HTTP request "GET /a/%2e%2e/b%2Fc" from api
    # must not reach db as sent: §2.3 says every HTTP request (review finding F3)
    g = guard("db", 5432)
    admitted = g.admit(API, 5432)
    assert admitted.guard is not None or (admitted.http is not None and admitted.http.hooks), (
        admitted
    )


@pytest.mark.parametrize(
    ("method", "target", "forward"),
    [
        ("GET", "/v1/orders?q=1", None),  # clean: forwarded as it came
        ("GET", "/a/%2e%2e/b?x=%2F", "/b?x=%2F"),  # the query is left alone
        ("POST", "/a//./b/", "/a/b/"),
        ("GET", "/a/%2Fb", "normalize/encoded-slash"),
        ("GET", "/a/%00", "normalize/encoded-nul"),
        ("GET", "/a/..;/b", "normalize/dot-segment-with-params"),
        ("get", "/a", "normalize/method-not-uppercase"),
        ("GET", "/a#b", "normalize/fragment"),
    ],
)
def test_a_peer_allowed_wholesale_has_its_requests_normalised_only(
    method: str, target: str, forward: str | None
) -> None:
    g = guard("db", 5432)
    found = g.normalise(method, target)
    if isinstance(found, Decision):
        assert (found.decision, found.status, found.rule) == ("bad-request", 400, forward)
        assert g.normalise(method, target) is found  # one 400 per reason and swap
    else:
        assert found == forward


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
        WEB, 8080, RequestHead(method, target), 0.0, Buckets()
    )
    assert (judged.decision, judged.rule, target_out, limited) == (decision, rule, forward, None)


def test_a_rate_limit_applies_to_allowed_requests_only() -> None:
    g, buckets = guard("api", 8080, LIMITED), Buckets()
    outcomes = [
        g.judge(WEB, 8080, RequestHead("GET", "/v1/orders", ()), 10.0, buckets)[2] for _ in range(3)
    ]
    assert outcomes == [None, None, Limited("lim/rate_limit/two", 1)]
    denied = g.judge(WEB, 8080, RequestHead("GET", "/v1/admin/x", ()), 10.0, buckets)
    assert (denied[0].decision, denied[2]) == ("deny", None)  # judged before any bucket
    assert (
        g.judge(WEB, 8080, RequestHead("GET", "/v1/orders", ()), 10.6, buckets)[2] is None
    )  # refilled


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
        g.judge(WEB, 8080, RequestHead("GET", "/v1/x", headers), 0.0, buckets)[0].decision
        for headers in (acme, other, acme)
    ]
    assert outcomes == ["allow", "deny", "allow"]
    plain = guard("api", 8080)
    first = plain.judge(WEB, 8080, RequestHead("GET", "/v1/orders", ()), 0.0, buckets)
    assert plain.judge(WEB, 8080, RequestHead("GET", "/v1/orders", ()), 0.0, buckets) is not None
    assert (
        plain.judge(API, 8080, RequestHead("GET", "/v1/orders", ()), 0.0, buckets)[0].rule
        != first[0].rule
    )


class Counting(Guard):
    """A guard that notes every judgement it works out (a remembered one is not noted)."""

    def __init__(self, service: str, port: int, policy: CompiledPolicy) -> None:
        super().__init__(service, port, policy.for_service(service), None)
        self.worked: list[tuple[str | None, str]] = []

    def _judge(
        self,
        source: str | None,
        port: int,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...],
    ) -> Remembered:
        self.worked.append((source, target))
        return super()._judge(source, port, method, target, headers)


TENANT = {"x-tenant": True}
FROM_API = allow("h", "tenants", "api", ["api"], headers=TENANT)  # reads headers, not WEB's
ANY_TENANT = deny("h", "no-tenant-x", "api", ["*"], headers={"x-tenant": "x"})


def tenant_limit(sources: list[str]) -> RateLimit:
    sel = selector("api", sources, None, None, None, TENANT)
    return RateLimit("h/rate_limit/t", "t", sel, 100, 1000, 100, "shared")


@pytest.mark.parametrize(
    ("rules", "limits", "source", "worked"),
    [
        ([], [], WEB, 1),  # no header rule anywhere: remembered
        ([FROM_API], [], WEB, 1),  # a header rule WEB cannot meet: still remembered for WEB
        ([FROM_API], [], API, 2),  # ... but API meets it: judged every time
        ([ANY_TENANT], [], WEB, 2),  # a deny reading headers that WEB meets
        ([deny("h", "aud", "api", ["web"], headers=TENANT, audit=True)], [], WEB, 2),
        ([allow("h", "web-t", "api", ["web"], port=[8080], headers=TENANT)], [], WEB, 2),
        ([allow("h", "web-t", "api", ["web"], port=[9], headers=TENANT)], [], WEB, 1),  # port
        ([], [tenant_limit(["web"])], WEB, 2),  # a rate limit reading headers
        ([], [tenant_limit(["api"])], WEB, 1),
    ],
)
def test_a_judgement_is_remembered_per_peer_unless_a_rule_it_can_meet_reads_headers(
    rules: list[Rule], limits: list[RateLimit], source: str, worked: int
) -> None:
    policy = CompiledPolicy.compile(
        [ZERO_TRUST, document("h", rules=rules, rate_limits=limits)], TD, 1
    )
    g, buckets = Counting("api", 8080, policy), Buckets()
    first = g.judge(
        source, 8080, RequestHead("GET", "/v1/orders", (("x-tenant", "a"),)), 0.0, buckets
    )
    again = g.judge(
        source, 8080, RequestHead("GET", "/v1/orders", (("x-tenant", "x"),)), 0.0, buckets
    )
    assert len(g.worked) == worked
    if worked == 1:  # nothing it can meet reads the header: the same judgement
        assert again == first


def test_headers_still_decide_for_the_peer_whose_rules_read_them() -> None:
    policy = CompiledPolicy.compile([ZERO_TRUST, document("h", rules=[FROM_API])], TD, 1)
    g, buckets = guard("api", 8080, policy), Buckets()
    outcomes = [
        g.judge(source, 8080, RequestHead("GET", "/v1/x", headers), 0.0, buckets)[0].rule
        for source, headers in [
            (WEB, ()),
            (API, (("X-Tenant", "a"),)),
            (API, ()),
            (WEB, (("X-Tenant", "a"),)),
            (API, (("X-Tenant", "a"),)),
        ]
    ]
    allowed, tenants, default = f"{ZT}/allow/web-to-api", "h/allow/tenants", f"{ZT}/authz/default"
    assert outcomes == [allowed, tenants, default, allowed, tenants]


def test_remembered_judgements_are_bounded_over_every_peer() -> None:
    g, buckets = Counting("api", 8080, POLICY), Buckets()
    peers = [spiffe(f"web-{i}") for i in range(3)]
    for i in range(MAX_JUDGED + 10):
        g.judge(peers[i % 3], 8080, RequestHead("GET", f"/v1/{i}", ()), 0.0, buckets)
    assert g.remembered() <= MAX_JUDGED
    before = len(g.worked)
    last = MAX_JUDGED + 9
    g.judge(peers[last % 3], 8080, RequestHead("GET", f"/v1/{last}", ()), 0.0, buckets)
    assert len(g.worked) == before  # the last judgement is still remembered
