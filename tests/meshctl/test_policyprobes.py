"""What a new policy set changes in decisions: the probes and the changes they find (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings

from meshctl.policyprobes import (
    NO_POLICY,
    OTHER_SERVICE,
    DecisionChange,
    Outcome,
    Probe,
    decision_diff,
    label,
    principals,
    representative_requests,
    rule_requests,
    sample_path,
)
from meshd.policy.lang.model import Document, Rule
from meshd.policy.lang.validate import check_text
from tests.meshd.policy.lang.build import TD, selector
from tests.meshd.policy.lang.test_properties import defaults, modes, policy_doc, rule_lists

NOW = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
EXAMPLES = Path(__file__).parents[1] / "meshd" / "policy" / "lang" / "examples"
ZERO_TRUST = (EXAMPLES / "zero-trust.toml").read_text()
INVENTORY = {"web": [8080], "api": [8080], "db": [5432]}
DEMO = Path(__file__).parents[2] / "examples" / "policies"
DEMO_INVENTORY = {"web": [8080], "api": [8081], "db": [8082]}


def doc(text: str) -> Document:
    found, problems = check_text(text, "t.toml", TD, NOW)
    assert found is not None, problems
    return found


def without(text: str, block: str) -> str:
    assert block in text
    return text.replace(block, "")


API_TO_DB = '[[allow]]\nname = "api-to-db"\nfrom = ["api"]\nto = "db"\n'
API_TO_DB += "ports = [5432]              # opaque TCP: only L4 fields may be used in allows\n"
NO_ADMIN = (
    '[[deny]]\nname = "no-admin-from-web"  # deny always beats allow\nfrom = ["web"]\n'
    'to = "api"\npaths = ["/v1/admin/**"]\n'
)
RETIRE = "audit = true                # dry run: logged as would-deny, nothing enforced\n"
Line = tuple[str, str, int | None, str | None, tuple[str, str], tuple[str, str]]

# (before, after, inventory) -> the text lines: (source, destination, port, request,
# (decision, rule) before, (decision, rule) after); request None: every request
CASES: list[tuple[str, str, str, Mapping[str, list[int]] | None, list[Line]]] = [
    (
        "removing an allow: exactly that caller loses every request",
        ZERO_TRUST,
        without(ZERO_TRUST, API_TO_DB),
        INVENTORY,
        [
            (
                "api",
                "db",
                5432,
                None,
                ("allow", "zero-trust/allow/api-to-db"),
                ("deny", "zero-trust/authz/default"),
            )
        ],
    ),
    (
        "removing a path deny: the request under it, and TCP (it failed closed)",
        ZERO_TRUST,
        without(ZERO_TRUST, NO_ADMIN),
        INVENTORY,
        [
            (
                "web",
                "api",
                8080,
                "GET /v1/admin/x",
                ("deny", "zero-trust/deny/no-admin-from-web"),
                ("allow", "zero-trust/allow/web-to-api"),
            ),
            (  # opaque TCP: the deny failed closed on L4 fields (§2.2); now the default does
                "web",
                "api",
                8080,
                "tcp",
                ("reset", "zero-trust/deny/no-admin-from-web"),
                ("reset", "zero-trust/authz/default"),
            ),
        ],
    ),
    (
        "permissive mTLS: plaintext is judged instead of reset",
        ZERO_TRUST,
        ZERO_TRUST.replace('mode = "strict"', 'mode = "permissive"'),
        INVENTORY,
        [
            (
                "unauthenticated",
                service,
                port,
                None,
                ("reset", "zero-trust/mtls/mode"),
                ("deny", "zero-trust/authz/default"),
            )
            for service, [port] in INVENTORY.items()
        ],
    ),
    (
        "a header rule is probed with a header value that matches",
        'version = 1\nname = "h"\n[authz]\ndefault = "deny"\n',
        'version = 1\nname = "h"\n[authz]\ndefault = "deny"\n[[allow]]\nname = "acme"\n'
        'from = ["web"]\nto = "api"\nheaders = { x-tenant = "acme" }\n',
        {"api": [8080]},
        [
            (
                "web",
                "api",
                8080,
                "GET / [x-tenant: acme]",
                ("deny", "h/authz/default"),
                ("allow", "h/allow/acme"),
            )
        ],
    ),
    (
        "a first policy: everything passed, now the default denies",
        "",
        'version = 1\nname = "m"\n[authz]\ndefault = "deny"\n',
        None,
        [
            (
                "unauthenticated",
                OTHER_SERVICE,
                None,
                None,
                ("allow", NO_POLICY),
                ("reset", "builtin/mtls/mode"),
            ),
            (
                "other",
                OTHER_SERVICE,
                None,
                None,
                ("allow", NO_POLICY),
                ("deny", "m/authz/default"),
            ),
        ],
    ),
]


def lines_of(before: str, after: str, inventory: Mapping[str, list[int]] | None) -> list[Line]:
    old = [doc(before)] if before else []
    found = decision_diff(old, [doc(after)], TD, inventory)
    return [
        (
            line.source,
            line.destination,
            line.port,
            line.request,
            (line.before.decision, line.before.rule),
            (line.after.decision, line.after.rule),
        )
        for line in found.lines
    ]


@pytest.mark.parametrize(
    ("before", "after", "inventory", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_changed_decisions(
    before: str, after: str, inventory: Mapping[str, list[int]] | None, expected: list[Line]
) -> None:
    assert sorted(lines_of(before, after, inventory), key=str) == sorted(expected, key=str)


def test_removing_an_allow_names_that_callers_probes_and_no_other() -> None:
    found = decision_diff([doc(ZERO_TRUST)], [doc(without(ZERO_TRUST, API_TO_DB))], TD, INVENTORY)
    assert {(c.source, c.probe.destination, c.probe.port) for c in found.changes} == {
        ("api", "db", 5432)
    }
    tcp = next(c for c in found.changes if c.probe.tcp)
    assert tcp.to_json() == {
        "source": "api",
        "destination": "db",
        "port": 5432,
        "method": None,
        "path": None,
        "headers": [],
        "tcp": True,
        "before": {
            "decision": "allow",
            "rule": "zero-trust/allow/api-to-db",
            "would_deny": [],
            "rate_limits": [],
        },
        "after": {
            "decision": "reset",
            "rule": "zero-trust/authz/default",
            "would_deny": [],
            "rate_limits": [],
        },
    }


def test_dropping_a_method_from_an_allow_shows_each_pattern_with_that_method() -> None:
    mesh = doc((DEMO / "mesh.toml").read_text())
    text = (DEMO / "web-api-db.toml").read_text()
    before = doc(text)
    after = doc(
        text.replace(
            'ports = [8082]\nmethods = ["GET", "POST"]', 'ports = [8082]\nmethods = ["GET"]'
        )
    )
    found = decision_diff([mesh, before], [mesh, after], TD, DEMO_INVENTORY)
    assert [
        (c.source, c.probe.destination, c.probe.method, c.probe.path) for c in found.changes
    ] == [
        ("api", "db", "POST", "/items"),
        ("api", "db", "POST", "/items/x"),
    ]
    assert {(c.after.decision, c.after.rule) for c in found.changes} == {
        ("deny", "mesh/authz/default")
    }


def test_removing_an_audit_rule_changes_only_the_would_deny_list() -> None:
    after = ZERO_TRUST.replace(RETIRE, "").replace('name = "retire-web-deletes"', 'name = "x"')
    after = without(
        after, '[[deny]]\nname = "x"\nfrom = ["web"]\nto = "api"\nmethods = ["DELETE"]\n'
    )
    found = decision_diff([doc(ZERO_TRUST)], [doc(after)], TD, INVENTORY)
    # opaque TCP (the audit deny fails closed too, §2.2), web-to-api's DELETE (allowed) and
    # the audit rule's own probe, DELETE / (outside web-to-api's /v1/**, so denied)
    assert [(c.source, c.probe.method, c.probe.path) for c in found.changes] == [
        ("web", None, "/"),
        ("web", "DELETE", "/v1/x"),
        ("web", "DELETE", "/"),
    ]
    for change in found.changes:
        assert (change.before.decision, change.before.rule) == (
            change.after.decision,
            change.after.rule,
        )
        assert change.before.would_deny == ("zero-trust/deny/retire-web-deletes",)
        assert change.after.would_deny == ()


def test_a_rate_limit_shows_on_the_requests_it_counts() -> None:
    limit = '[[rate_limit]]\nname = "slow"\nto = "api"\nlimit = 5\nper = "1s"\n'
    found = decision_diff([doc(ZERO_TRUST)], [doc(ZERO_TRUST + limit)], TD, INVENTORY)
    assert found.changes
    for change in found.changes:
        assert change.before == Outcome("allow", change.before.rule, change.before.would_deny)
        assert change.after.rate_limits == ("zero-trust/rate_limit/slow",)
        assert change.probe.destination == "api"


def test_a_changed_document_with_the_same_decisions_changes_none() -> None:
    renamed = ZERO_TRUST.replace('description = "Only', 'description = "Still only')
    found = decision_diff([doc(ZERO_TRUST)], [doc(renamed)], TD, INVENTORY, skip_same=False)
    assert found.probes > 0 and found.changes == () and found.lines == ()
    # every service has the same rules and settings: none needs probing
    assert decision_diff([doc(ZERO_TRUST)], [doc(renamed)], TD, INVENTORY).probes == 0


@settings(max_examples=60, deadline=None)
@given(rule_lists, modes, defaults)
def test_the_same_set_changes_no_decision(
    found: list[Rule], mode: str | None, default: str | None
) -> None:
    documents = [policy_doc(found, mode, default)]
    same = [policy_doc(list(found), mode, default)]
    result = decision_diff(documents, same, TD, skip_same=False)  # judge every probe
    assert result.changes == () and result.lines == ()
    assert result.probes >= 2  # a plaintext peer and an unnamed identity, at least


@settings(max_examples=60, deadline=None)
@given(rule_lists, rule_lists, modes, modes, defaults, defaults)
def test_skipping_services_with_the_same_rules_loses_no_change(
    old_rules: list[Rule],
    new_rules: list[Rule],
    old_mode: str | None,
    new_mode: str | None,
    old_default: str | None,
    new_default: str | None,
) -> None:
    before = [policy_doc(old_rules, old_mode, old_default)]
    after = [policy_doc(new_rules, new_mode, new_default)]
    inventory = {"api": [8080], "db": [9000], "web": [9102]}
    fast = decision_diff(before, after, TD, inventory)
    full = decision_diff(before, after, TD, inventory, skip_same=False)
    assert fast.changes == full.changes and fast.lines == full.lines
    assert fast.probes <= full.probes


@settings(max_examples=60, deadline=None)
@given(rule_lists, modes, defaults)
def test_a_default_flip_changes_the_unnamed_identity_on_an_unnamed_service(
    found: list[Rule], mode: str | None, default: str | None
) -> None:
    """The probes reach what no rule names: with no rule for it, the unnamed identity on a
    service no rule names gets the default, so flipping the default changes its decision."""
    free = [r for r in found if r.selector.to != "*"]
    old = decision_diff([policy_doc(free, mode, "deny")], [policy_doc(free, mode, "allow")], TD)
    other = f"spiffe://{TD}/svc/other"
    assert any(
        c.probe.source == other and c.probe.destination == OTHER_SERVICE for c in old.changes
    )


@pytest.mark.parametrize(
    ("pattern", "path"),
    [("/", "/"), ("/v1/**", "/v1/x"), ("/**", "/x"), ("/users/*/profile", "/users/x/profile")],
)
def test_sample_path_is_matched_by_its_pattern(pattern: str, path: str) -> None:
    assert sample_path(pattern) == path


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        ([], [(None, "/", ()), ("GET", "/", ())]),
        (
            [selector("api", ["web"], methods=["DELETE", "GET"], paths=["/v1/**"])],
            [(None, "/", ()), ("GET", "/v1/x", ()), ("DELETE", "/v1/x", ()), ("POST", "/", ())],
        ),
        (
            [selector("api", paths=["/**"]), selector("api", headers={"x-t": ("prefix", "qa-")})],
            [
                (None, "/", ()),
                ("GET", "/x", ()),
                ("GET", "/", (("x-t", "qa-"),)),
                ("GET", "/mesh-probe/unmatched/x", ()),
            ],
        ),
        (
            [selector("api", paths=["/", "/*"])],
            [
                (None, "/", ()),
                ("GET", "/", ()),
                ("GET", "/x", ()),
                ("GET", "/mesh-probe/unmatched/x", ()),
            ],
        ),
    ],
)
def test_representative_requests(selectors: list[object], expected: list[object]) -> None:
    assert representative_requests(selectors) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("methods", "paths", "expected"),
    [
        (None, None, [("GET", "/")]),
        (
            ["POST", "GET"],
            ["/items", "/items/*"],
            [("GET", "/items"), ("GET", "/items/x"), ("POST", "/items"), ("POST", "/items/x")],
        ),
        (  # 5 x 4 > MAX_PAIRS: a cover that uses each method and each path once
            ["GET", "POST", "PUT", "DELETE", "PATCH"],
            ["/a", "/b", "/c", "/d"],
            [("GET", "/a"), ("POST", "/b"), ("PUT", "/c"), ("DELETE", "/d"), ("PATCH", "/a")],
        ),
    ],
)
def test_rule_requests_use_each_method_and_pattern(
    methods: list[str] | None, paths: list[str] | None, expected: list[tuple[str, str]]
) -> None:
    assert rule_requests(selector("api", methods=methods, paths=paths)) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, "unauthenticated"),
        (f"spiffe://{TD}/svc/web", "web"),
        (f"spiffe://{TD}/host/web1", "host/web1"),
        ("spiffe://other.td/svc/web", "spiffe://other.td/svc/web"),
        (f"spiffe://{TD}/svc/a/b", f"spiffe://{TD}/svc/a/b"),
    ],
)
def test_label_is_what_explain_takes(source: str | None, expected: str) -> None:
    assert label(source, TD) == expected


def test_principals_name_every_source_one_unnamed_per_domain_and_plaintext() -> None:
    text = (
        'version = 1\nname = "p"\n[[allow]]\nname = "a"\nto = "api"\n'
        'from = ["web", "host/h1", "spiffe://x.td/svc/*", "spiffe://x.td/svc/b", "other"]\n'
    )
    assert principals([doc(text)], TD) == [
        ("spiffe://prod.example/host/h1", True),
        ("spiffe://prod.example/svc/other", True),
        ("spiffe://prod.example/svc/web", True),
        ("spiffe://x.td/svc/b", True),
        ("spiffe://prod.example/svc/other-2", False),
        ("spiffe://x.td/svc/other", False),
        (None, True),
    ]


def test_change_json_for_http() -> None:
    change = DecisionChange(
        Probe("spiffe://td/svc/web", "api", None, "GET", "/v1", (("x-t", "a"),)),
        "web",
        Outcome("deny", "d/authz/default"),
        Outcome("allow", "d/allow/a", ("d/deny/w",), ("d/rate_limit/r",)),
    )
    got = change.to_json()
    assert (got["method"], got["path"], got["port"], got["tcp"]) == ("GET", "/v1", None, False)
    assert got["headers"] == [["x-t", "a"]]
    assert got["after"]["would_deny"] == ["d/deny/w"]
