"""The validator (POLICY.md §2.1-2.2, §2.4-2.7, §2.12): every code, with its line and field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.policy.lang.model import Document, HeaderMatch, Source
from meshd.policy.lang.problems import errors
from meshd.policy.lang.validate import check_data, check_set, check_text

NOW = datetime(2026, 8, 1, tzinfo=UTC)
MESH = "prod.mesh"
EXAMPLES = Path(__file__).parent / "examples"
HEAD = 'version = 1\nname = "t"\n'  # two lines: a body's first line is line 3


def check(body: str, head: str = HEAD) -> tuple[Document | None, list[tuple[int, str, str]]]:
    document, problems = check_text(head + body, "policy/t.toml", MESH, NOW)
    return document, [(p.line, p.code, p.field) for p in problems]


def messages(body: str, head: str = HEAD) -> list[str]:
    _, problems = check_text(head + body, "policy/t.toml", MESH, NOW)
    return [p.message for p in problems]


ALLOW = '[[allow]]\nname = "a"\nfrom = ["web"]\nto = "api"\n'  # lines 3-6

CASES: list[tuple[str, str, str, list[tuple[int, str, str]], str]] = [
    # (id, head, body, [(line, code, field)], a piece of the first message)
    ("P001", HEAD, "x = [1,\n\n", [(4, "P001", "(syntax)")], "(at end of document)"),
    ("P001-line", HEAD, "[mtls\nmode = 1\n", [(3, "P001", "(syntax)")], "(at line 3, column 6)"),
    (
        "P002-top",
        HEAD,
        'descripton = "x"\n',
        [(3, "P002", "descripton")],
        "did you mean 'description'",
    ),
    (
        "P002-rule",
        HEAD,
        '[[deny]]\nname = "x"\nto = "api"\nmethod = ["GET"]\n',
        [(6, "P002", 'deny."x".method')],
        "unknown field 'method' (did you mean 'methods'?)",
    ),
    ("P002-mtls", HEAD, '[mtls]\nmod = "strict"\n', [(4, "P002", "mtls.mod")], "'mode'"),
    (
        "P002-audit-on-allow",
        HEAD,
        ALLOW + "audit = true\n",
        [(7, "P002", 'allow."a".audit')],
        "audit",
    ),
    (
        "P002-kind",
        HEAD,
        '[[allows]]\nname = "a"\n',
        [(3, "P002", "allows")],
        "did you mean 'allow'",
    ),
    (
        "P002-route",
        HEAD,
        '[[route]]\nname = "r"\nto = "api"\n',
        [(3, "P002", 'route."r"')],
        "`[[route]]` is not supported by this meshctl yet (routes, faults and resilience come in a later version)",
    ),
    ("P002-fault", HEAD, "[[fault]]\n", [(3, "P002", "fault[0]")], "`[[fault]]` is not supported"),
    (
        "P002-resilience",
        HEAD,
        '[[resilience]]\nname = "x"\n[resilience.retries]\nattempts = 2\n',
        [(3, "P002", 'resilience."x"')],
        "`[[resilience]]` is not supported",
    ),
    (
        "P003-from",
        HEAD,
        '[[allow]]\nname = "a"\nfrom = "web"\nto = "api"\n',
        [(5, "P003", 'allow."a".from')],
        """expected an array of strings, e.g. ["web"], got str 'web'""",
    ),
    ("P003-version", 'version = "1"\nname = "t"\n', "", [(1, "P003", "version")], "an integer"),
    (
        "P003-version-bool",
        'version = true\nname = "t"\n',
        "",
        [(1, "P003", "version")],
        "got bool True",
    ),
    (
        "P003-port",
        HEAD,
        ALLOW + "ports = 8080\n",
        [(7, "P003", 'allow."a".ports')],
        "an array of ports",
    ),
    (
        "P003-port-bool",
        HEAD,
        ALLOW + "ports = [true]\n",
        [(7, "P003", 'allow."a".ports[0]')],
        "got bool",
    ),
    (
        "P003-empty",
        HEAD,
        ALLOW + "methods = []\n",
        [(7, "P003", 'allow."a".methods')],
        "matches nothing",
    ),
    (
        "P003-to",
        HEAD,
        '[[deny]]\nname = "d"\nto = ["api"]\n',
        [(5, "P003", 'deny."d".to')],
        "a string",
    ),
    (
        "P003-audit",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api"\naudit = "yes"\n',
        [(6, "P003", 'deny."d".audit')],
        "true or false",
    ),
    ("P003-allow-table", HEAD, '[allow]\nname = "a"\n', [(3, "P003", "allow")], "[[allow]]"),
    ("P003-mtls", HEAD, 'mtls = "strict"\n', [(3, "P003", "mtls")], "a table"),
    (
        "P003-limit",
        HEAD,
        '[[rate_limit]]\nname = "r"\nto = "api"\nlimit = 1.5\nper = "1s"\n',
        [(6, "P003", 'rate_limit."r".limit')],
        "an integer",
    ),
    (
        "P003-per",
        HEAD,
        '[[rate_limit]]\nname = "r"\nto = "api"\nlimit = 5\nper = 1\n',
        [(7, "P003", 'rate_limit."r".per')],
        "duration",
    ),
    ("P004-version", 'name = "t"\n', "", [(1, "P004", "version")], "version = 1"),
    ("P004-name", "version = 1\n", "", [(1, "P004", "name")], "name the document"),
    (
        "P004-from",
        HEAD,
        '[[allow]]\nname = "open"\nto = "api"\n',
        [(3, "P004", 'allow."open"')],
        'allow rules must name their sources: add from = ["*"] for any authenticated peer',
    ),
    ("P004-to", HEAD, '[[deny]]\nname = "d"\n', [(3, "P004", 'deny."d".to')], "destination"),
    (
        "P004-rule-name",
        HEAD,
        '[[deny]]\nto = "api"\n',
        [(3, "P004", "deny[0].name")],
        "unique name",
    ),
    (
        "P004-rate",
        HEAD,
        '[[rate_limit]]\nname = "r"\nto = "api"\n',
        [(3, "P004", 'rate_limit."r".limit'), (3, "P004", 'rate_limit."r".per')],
        "limit",
    ),
    (
        "P005",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api"\n[[deny]]\nname = "d"\nto = "db"\n',
        [(7, "P005", "deny[1].name")],
        'duplicate deny name "d" (first defined at line 3)',
    ),
    (
        "P006-doc",
        'version = 1\nname = "Zero_Trust"\n',
        "",
        [(2, "P006", "name")],
        "invalid document name 'Zero_Trust': use 1-63 of a-z, 0-9, '-'",
    ),
    ("P006-reserved", 'version = 1\nname = "builtin"\n', "", [(2, "P006", "name")], "reserved"),
    (
        "P006-rule",
        HEAD,
        '[[deny]]\nname = "No Admin"\nto = "api"\n',
        [(4, "P006", "deny[0].name")],
        "invalid deny name",
    ),
    (
        "P006-service",
        HEAD,
        '[mtls.services]\nApi = "strict"\n',
        [(4, "P006", "mtls.services.Api")],
        "invalid service name 'Api'",
    ),
    (
        "P006-trust-domain",
        HEAD,
        'trust_domain = "Prod"\n',
        [(3, "P006", "trust_domain")],
        "trust domain",
    ),
    (
        "P007",
        'version = 2\nname = "t"\n',
        "",
        [(1, "P007", "version")],
        "unsupported version 2: this meshctl understands version 1",
    ),
    (
        "P008-default",
        HEAD,
        '[authz]\ndefault = "permit"\n',
        [(4, "P008", "authz.default")],
        """'permit' is not one of "deny", "allow", "audit\"""",
    ),
    (
        "P008-mode",
        HEAD,
        '[mtls]\nmode = "off"\n',
        [(4, "P008", "mtls.mode")],
        '"strict", "permissive"',
    ),
    (
        "P008-service",
        HEAD,
        '[authz.services]\napi = "open"\n',
        [(4, "P008", "authz.services.api")],
        "'open'",
    ),
    (
        "P008-bucket",
        HEAD,
        '[[rate_limit]]\nname = "r"\nto = "api"\nlimit = 5\nper = "1s"\nbucket = "global"\n',
        [(8, "P008", 'rate_limit."r".bucket')],
        '"shared", "per-source"',
    ),
    (
        "P010-partial",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api"\nfrom = ["web", "web-*"]\n',
        [(6, "P010", 'deny."d".from[1]')],
        "partial wildcards are not supported ('web-*')",
    ),
    (
        "P010-middle",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api"\nfrom = ["spiffe://td/*/web"]\n',
        [(6, "P010", 'deny."d".from[0]')],
        "partial",
    ),
    (
        "P010-two-stars",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api"\nfrom = ["spiffe://td/*/*"]\n',
        [(6, "P010", 'deny."d".from[0]')],
        "partial wildcards are not supported ('spiffe://td/*/*')",
    ),
    (
        "P010-segment",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api"\nfrom = ["spiffe://td/svc/we*"]\n',
        [(6, "P010", 'deny."d".from[0]')],
        "partial",
    ),
    (
        "P010-bad-id",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api"\nfrom = ["spiffe://TD/svc/web"]\n',
        [(6, "P010", 'deny."d".from[0]')],
        "trust domain",
    ),
    (
        "P010-not-source",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api"\nfrom = ["svc/web"]\n',
        [(6, "P010", 'deny."d".from[0]')],
        "is not a source",
    ),
    (
        "P010-to",
        HEAD,
        '[[deny]]\nname = "d"\nto = "api-*"\n',
        [(5, "P010", 'deny."d".to')],
        "not a service name",
    ),
    (
        "P011-range",
        HEAD,
        ALLOW + "ports = [8080, 70000]\n",
        [(7, "P011", 'allow."a".ports[1]')],
        "70000 is out of range [1, 65535]",
    ),
    (
        "P011-zero",
        HEAD,
        ALLOW + "ports = [0]\n",
        [(7, "P011", 'allow."a".ports[0]')],
        "0 is out of range",
    ),
    (
        "P011-reversed",
        HEAD,
        ALLOW + 'ports = ["9100-9000"]\n',
        [(7, "P011", 'allow."a".ports[0]')],
        "lower port first",
    ),
    (
        "P011-text",
        HEAD,
        ALLOW + 'ports = ["http"]\n',
        [(7, "P011", 'allow."a".ports[0]')],
        "invalid port range 'http'",
    ),
    (
        "P012-case",
        HEAD,
        ALLOW + 'methods = ["GET", "get"]\n',
        [(7, "P012", 'allow."a".methods[1]')],
        'method "get" must be upper-case (did you mean "GET"?)',
    ),
    (
        "P012-unknown",
        HEAD,
        ALLOW + 'methods = ["GTE"]\n',
        [(7, "P012", 'allow."a".methods[0]')],
        'unknown method "GTE" (did you mean "GET"?)',
    ),
    (
        "P013-trailing",
        HEAD,
        ALLOW + 'paths = ["/admin/"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        'trailing "/" is not significant in "/admin/": write "/admin" (exact) or "/admin/**" (subtree)',
    ),
    (
        "P013-partial",
        HEAD,
        ALLOW + 'paths = ["/v1/user*"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "partial-segment wildcard",
    ),
    (
        "P013-double-star",
        HEAD,
        ALLOW + 'paths = ["/**/x"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        '"**" must be the last segment',
    ),
    (
        "P013-slashes",
        HEAD,
        ALLOW + 'paths = ["/a//b"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        '"//"',
    ),
    (
        "P013-dot",
        HEAD,
        ALLOW + 'paths = ["/a/../b"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "dot segments",
    ),
    (
        "P013-dot-params",
        HEAD,
        ALLOW + 'paths = ["/a/..;x/b"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "dot segments",
    ),
    (
        "P013-query",
        HEAD,
        ALLOW + 'paths = ["/a?b=1"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "query",
    ),
    (
        "P013-relative",
        HEAD,
        ALLOW + 'paths = ["v1"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "absolute",
    ),
    (
        "P013-lower-hex",
        HEAD,
        ALLOW + 'paths = ["/a%3ab"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        'upper-case hex: write "%3A"',
    ),
    (
        "P013-unreserved",
        HEAD,
        ALLOW + 'paths = ["/%7Euser"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        'encodes "~"',
    ),
    (
        "P013-slash",
        HEAD,
        ALLOW + 'paths = ["/a%2Fb"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "rejected (400)",
    ),
    (
        "P013-nul",
        HEAD,
        ALLOW + 'paths = ["/a%00"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "rejected (400)",
    ),
    (
        "P013-malformed",
        HEAD,
        ALLOW + 'paths = ["/a%zz"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "malformed",
    ),
    (
        "P013-space",
        HEAD,
        ALLOW + 'paths = ["/a b"]\n',
        [(7, "P013", 'allow."a".paths[0]')],
        "percent-encoded",
    ),
    (
        "P014-case",
        HEAD,
        ALLOW + 'headers = { "X-Tenant" = "acme" }\n',
        [(7, "P014", 'allow."a".headers."X-Tenant"')],
        'header names must be lower-case: write "x-tenant"',
    ),
    (
        "P014-pseudo",
        HEAD,
        ALLOW + 'headers = { ":authority" = "x" }\n',
        [(7, "P014", 'allow."a".headers.":authority"')],
        'use "host"',
    ),
    (
        "P014-matcher",
        HEAD,
        ALLOW + 'headers = { "x-a" = { regex = "a.*" } }\n',
        [(7, "P014", 'allow."a".headers."x-a"')],
        "regex",
    ),
    (
        "P014-present",
        HEAD,
        ALLOW + 'headers = { "x-a" = { present = "yes" } }\n',
        [(7, "P014", 'allow."a".headers."x-a"')],
        "present",
    ),
    (
        "P014-two",
        HEAD,
        ALLOW + 'headers = { "x-a" = { prefix = "a", present = true } }\n',
        [(7, "P014", 'allow."a".headers."x-a"')],
        "got { prefix, present }",
    ),
    ("P014-empty", HEAD, ALLOW + "headers = {}\n", [(7, "P014", 'allow."a".headers')], "empty"),
    *[
        (
            f"P030-{per}",
            HEAD,
            f'[[rate_limit]]\nname = "r"\nto = "api"\nlimit = 5\nper = "{per}"\n',
            [(7, "P030", 'rate_limit."r".per')],
            f'invalid duration "{per}": use an integer and one unit (ms, s, m, h), e.g. "250ms" or "5s"',
        )
        for per in ("5", "5 s", "1.5s", "1m30s", "")
    ],
    (
        "P030-zero",
        HEAD,
        '[[rate_limit]]\nname = "r"\nto = "api"\nlimit = 5\nper = "0ms"\n',
        [(7, "P030", 'rate_limit."r".per')],
        "at least 1ms",
    ),
    (
        "P031-limit",
        HEAD,
        '[[rate_limit]]\nname = "r"\nto = "api"\nlimit = 0\nper = "1s"\n',
        [(6, "P031", 'rate_limit."r".limit')],
        "0 is out of range [1, 1000000000]",
    ),
    (
        "P031-burst",
        HEAD,
        '[[rate_limit]]\nname = "r"\nto = "api"\nlimit = 5\nper = "1s"\nburst = 2000000000\n',
        [(8, "P031", 'rate_limit."r".burst')],
        "2000000000 is out of range",
    ),
    (
        "W001",
        HEAD,
        '[mtls.services]\napi = "strict"\n[[allow]]\nname = "a"\nfrom = ["unauthenticated"]\nto = "api"\n',
        [(5, "W001", 'allow."a".from')],
        '"unauthenticated" can never match: mtls mode for "api" is strict',
    ),
    (
        "W002",
        HEAD,
        '[authz]\ndefault = "allow"\n',
        [(4, "W002", "authz.default")],
        'default = "allow" admits every authenticated peer not denied by a rule',
    ),
]


@pytest.mark.parametrize(
    ("head", "body", "expected", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_every_code_with_its_line_and_field(
    head: str, body: str, expected: list[tuple[int, str, str]], message: str
) -> None:
    document, found = check(body, head)
    assert found == expected
    assert message in messages(body, head)[0]
    assert (document is None) == any(code.startswith("P") for _, code, _ in expected)


VALID = [
    (
        "sources",
        ALLOW.replace(
            '["web"]',
            '["web", "host/db1", "spiffe://other.td/svc/x", "spiffe://td/svc/*", "*", "unauthenticated"]',
        ),
    ),
    ("ports", ALLOW + 'ports = [1, 65535, "9000-9100", "80-80"]\n'),
    (
        "methods",
        ALLOW
        + 'methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]\n',
    ),
    (
        "paths",
        ALLOW
        + 'paths = ["/", "/**", "/v1/**", "/users/*/profile", "/a%2Ab", "/a;b=c", "/%3A", "/~me"]\n',
    ),
    (
        "headers",
        ALLOW
        + 'headers = { "x-tenant" = "acme", host = "a", "x-qa" = { prefix = "qa-" }, "x-no" = { present = false } }\n',
    ),
    (
        "settings",
        '[mtls]\nmode = "permissive"\n[mtls.services]\napi = "strict"\n[authz]\ndefault = "audit"\n[authz.services]\ndb = "deny"\n',
    ),
    (
        "rate-limit",
        '[[rate_limit]]\nname = "r"\nto = "*"\nlimit = 50\nper = "250ms"\nburst = 100\nbucket = "per-source"\n',
    ),
    ("deny-audit", '[[deny]]\nname = "d"\nto = "api"\naudit = true\n'),
    (
        "unauthenticated-permissive",
        '[mtls.services]\napi = "permissive"\n' + ALLOW.replace('"web"', '"unauthenticated"'),
    ),
    ("description", 'description = "free text"\ntrust_domain = "prod.example"\n'),
]


@pytest.mark.parametrize("body", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_documents_have_no_problem(body: str) -> None:
    document, found = check(body)
    assert found == []
    assert document is not None


SOURCES = [
    ("web", None, Source("web", "exact", "spiffe://prod.mesh/svc/web")),
    ("web", "prod.example", Source("web", "exact", "spiffe://prod.example/svc/web")),
    ("host/web1", None, Source("host/web1", "exact", "spiffe://prod.mesh/host/web1")),
    (
        "spiffe://other.td/svc/web",
        "x.td",
        Source("spiffe://other.td/svc/web", "exact", "spiffe://other.td/svc/web"),
    ),
    (
        "spiffe://prod.example/svc/*",
        None,
        Source("spiffe://prod.example/svc/*", "prefix", "spiffe://prod.example/svc/"),
    ),
    (
        "spiffe://prod.example/*",
        None,
        Source("spiffe://prod.example/*", "prefix", "spiffe://prod.example/"),
    ),
    ("*", None, Source("*", "any")),
    ("unauthenticated", None, Source("unauthenticated", "unauthenticated")),
]


@pytest.mark.parametrize(("text", "domain", "expected"), SOURCES)
def test_sources_resolve_against_the_documents_trust_domain(
    text: str, domain: str | None, expected: Source
) -> None:
    head = HEAD + (f'trust_domain = "{domain}"\n' if domain else "")
    document, found = check(ALLOW.replace('"web"', json.dumps(text)), head)
    assert found == []
    assert document is not None
    assert document.rules[0].selector.sources == (expected,)


def test_many_errors_are_all_reported_sorted_by_line() -> None:
    text = "\n".join(
        [
            "version = 2",  # 1 P007
            'name = "Bad_Name"',  # 2 P006
            "[authz]",
            'default = "permit"',  # 4 P008
            "[[allow]]",  # 5 P004 (no from)
            'name = "a"',
            'to = "api"',
            'methods = ["get"]',  # 8 P012
            "[[route]]",  # 9 P002
            'name = "r"',
            "[[deny]]",
            'name = "d"',
            'to = "api"',
            'paths = ["/admin/"]',  # 14 P013
            'headers = { "X-A" = "1" }',  # 15 P014
            "ports = [0]",  # 16 P011
            "[[deny]]",
            'name = "d"',  # 18 P005
            'to = "api"',
            'from = ["web-*"]',  # 20 P010
            "[[rate_limit]]",
            'name = "r"',
            'to = "api"',
            "limit = 0",  # 24 P031
            'per = "5"',  # 25 P030
            "lmit = 1",  # 26 P002
        ]
    )
    document, problems = check_text(text, "policy/t.toml", MESH, NOW)
    assert document is None
    assert [(p.line, p.code) for p in problems] == [
        (1, "P007"),
        (2, "P006"),
        (4, "P008"),
        (5, "P004"),
        (8, "P012"),
        (9, "P002"),
        (14, "P013"),
        (15, "P014"),
        (16, "P011"),
        (18, "P005"),
        (20, "P010"),
        (24, "P031"),
        (25, "P030"),
        (26, "P002"),
    ]


def test_the_example_line_of_section_2_12_exactly() -> None:
    text = 'version = 1\nname = "t"\n[[allow]]\nname = "ro"\nfrom = ["web"]\nto = "api"\nmethods = [\n  "GET",\n  "get",\n]\n'
    _, problems = check_text(text, "policy/t.toml", MESH, NOW)
    assert [p.render() for p in problems] == [
        'policy/t.toml:9: error[P012] allow."ro".methods[1]: method "get" must be upper-case (did you mean "GET"?)'
    ]
    assert problems[0].to_json() == {
        "file": "policy/t.toml",
        "line": 9,
        "code": "P012",
        "field": 'allow."ro".methods[1]',
        "message": 'method "get" must be upper-case (did you mean "GET"?)',
        "severity": "error",
    }


def test_zero_trust_example_is_clean() -> None:
    text = (EXAMPLES / "zero-trust.toml").read_text()
    document, problems = check_text(text, "policy/zero-trust.toml", MESH, NOW)
    assert problems == []
    assert document is not None
    assert check_set([(document, "policy/zero-trust.toml")]) == []
    assert [rule.id for rule in document.rules] == [
        "zero-trust/allow/web-to-api",
        "zero-trust/allow/api-to-db",
        "zero-trust/allow/metrics-scrape",
        "zero-trust/deny/no-admin-from-web",
        "zero-trust/deny/retire-web-deletes",
    ]
    assert document.trust_domain == "prod.example"
    assert document.rules[0].selector.sources == (
        Source("web", "exact", "spiffe://prod.example/svc/web"),
    )
    assert document.rules[0].line == 13
    assert document.rules[4].audit
    assert (
        document.authz_default is not None
        and document.authz_default.id == "zero-trust/authz/default"
    )
    assert document.mtls_mode is not None and document.mtls_mode.id == "zero-trust/mtls/mode"


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (
            "api-canary.toml",
            [(5, 'route."qa-pinned"'), (12, 'route."canary-10"'), (21, 'resilience."api-calls"')],
        ),
        ("chaos-search.toml", [(21, 'fault."slow-and-flaky"'), (30, 'fault."on-demand-500"')]),
    ],
)
def test_examples_with_later_tables_are_refused_per_table(
    example: str, expected: list[tuple[int, str]]
) -> None:
    document, problems = check_text(
        (EXAMPLES / example).read_text(), f"policy/{example}", MESH, NOW
    )
    assert document is None
    assert [(p.line, p.code, p.field) for p in problems] == [
        (line, "P002", field) for line, field in expected
    ]
    assert all("is not supported by this meshctl yet" in p.message for p in problems)


def test_settings_carry_their_ids() -> None:
    body = '[mtls]\nmode = "permissive"\n[mtls.services]\napi = "strict"\n[authz]\ndefault = "deny"\n[authz.services]\napi = "audit"\n'
    document, _ = check(body)
    assert document is not None
    assert document.mtls_mode is not None and (document.mtls_mode.id, document.mtls_mode.line) == (
        "t/mtls/mode",
        4,
    )
    assert document.mtls_services["api"].id == "t/mtls/services/api"
    assert document.authz_default is not None and document.authz_default.id == "t/authz/default"
    assert document.authz_services["api"].id == "t/authz/services/api"
    assert document.authz_services["api"].value == "audit"


def test_rate_limit_model() -> None:
    body = '[[rate_limit]]\nname = "r"\nto = "search"\npaths = ["/v1/**"]\nlimit = 50\nper = "2s"\n'
    document, _ = check(body)
    assert document is not None
    (limit,) = document.rate_limits
    assert (limit.id, limit.limit, limit.per_ms, limit.burst, limit.bucket, limit.line) == (
        "t/rate_limit/r",
        50,
        2000,
        50,
        "shared",
        3,
    )
    assert limit.rate == 25.0


def test_header_matchers_model() -> None:
    document, _ = check(
        ALLOW
        + 'headers = { "x-t" = "acme", "x-q" = { prefix = "qa-" }, "x-n" = { present = false } }\n'
    )
    assert document is not None
    assert document.rules[0].selector.headers == (
        HeaderMatch("x-t", exact="acme"),
        HeaderMatch("x-q", prefix="qa-"),
        HeaderMatch("x-n", present=False),
    )


def doc(name: str, body: str) -> Document:
    document, problems = check_text(
        f'version = 1\nname = "{name}"\n' + body, f"policy/{name}.toml", MESH, NOW
    )
    assert document is not None, problems
    return document


SETS = [
    (
        "P040-default",
        [("base", '[authz]\ndefault = "deny"\n'), ("other", '[authz]\ndefault = "allow"\n')],
        [
            (
                "policy/other.toml",
                4,
                "P040",
                "authz.default",
                'already set by document "base" (policy/base.toml:4)',
            )
        ],
    ),
    (
        "P040-service",
        [
            ("base", '[mtls.services]\napi = "strict"\n'),
            ("other", '[mtls.services]\napi = "strict"\ndb = "strict"\n'),
        ],
        [
            (
                "policy/other.toml",
                4,
                "P040",
                "mtls.services.api",
                'already set by document "base" (policy/base.toml:4)',
            )
        ],
    ),
    (
        "distinct",
        [("base", '[mtls]\nmode = "strict"\n'), ("other", '[mtls.services]\napi = "permissive"\n')],
        [],
    ),
    (
        "W001-set",
        [
            ("base", '[mtls]\nmode = "strict"\n'),
            ("other", ALLOW.replace('"web"', '"unauthenticated"')),
        ],
        [
            (
                "policy/other.toml",
                3,
                "W001",
                'allow."a".from',
                '"unauthenticated" can never match: mtls mode for "api" is strict',
            )
        ],
    ),
    (
        "W001-builtin",
        [("other", ALLOW.replace('"web"', '"unauthenticated"'))],
        [
            (
                "policy/other.toml",
                3,
                "W001",
                'allow."a".from',
                '"unauthenticated" can never match: mtls mode for "api" is strict',
            )
        ],
    ),
    (
        "W001-permissive-elsewhere",
        [
            ("base", '[mtls.services]\napi = "permissive"\n'),
            ("other", ALLOW.replace('"web"', '"unauthenticated"')),
        ],
        [],
    ),
    (
        "W001-any-service",
        [
            ("base", '[mtls.services]\ndb = "permissive"\n'),
            ("other", ALLOW.replace('"web"', '"unauthenticated"').replace('"api"', '"*"')),
        ],
        [],
    ),
]


@pytest.mark.parametrize(("documents", "expected"), [s[1:] for s in SETS], ids=[s[0] for s in SETS])
def test_check_set(
    documents: list[tuple[str, str]], expected: list[tuple[str, int, str, str, str]]
) -> None:
    pairs = [(doc(name, body), f"policy/{name}.toml") for name, body in documents]
    found = check_set(pairs)
    assert [(p.file, p.line, p.code, p.field, p.message) for p in found] == expected


def test_check_data_reports_without_lines() -> None:
    document, problems = check_data(
        {"version": 1, "name": "t", "allow": [{"name": "a", "to": "api"}]}, "pushed", MESH, NOW
    )
    assert document is None
    assert [p.render() for p in problems] == [
        'pushed:0: error[P004] allow."a": allow rules must name their sources: add from = ["*"] for any authenticated peer'
    ]


def test_check_data_refuses_a_non_table() -> None:
    document, problems = check_data(["x"], "pushed", MESH, NOW)  # type: ignore[arg-type]
    assert document is None
    assert [p.code for p in errors(problems)] == ["P003"]


# -- Document.data round-trips through check_data (hypothesis) ------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
SOURCES_ST = st.one_of(
    NAMES,
    NAMES.map(lambda n: f"host/{n}"),
    NAMES.map(lambda n: f"spiffe://other.td/svc/{n}"),
    st.sampled_from(["*", "unauthenticated", "spiffe://prod.example/svc/*"]),
)
PORTS = st.one_of(
    st.integers(1, 65535),
    st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda p: f"{min(p)}-{max(p)}"),
)
SEGMENTS = st.one_of(NAMES, st.just("*"), st.just("%3A"))
PATHS = st.one_of(
    st.just("/"),
    st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
    st.lists(NAMES, max_size=3).map(lambda s: "/" + "/".join([*s, "**"])),
)
MATCHERS = st.one_of(
    NAMES, NAMES.map(lambda v: {"prefix": v}), st.booleans().map(lambda b: {"present": b})
)


def selector_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"to": st.one_of(NAMES, st.just("*"))},
        optional={
            "ports": st.lists(PORTS, min_size=1, max_size=3),
            "methods": st.lists(
                st.sampled_from(["GET", "HEAD", "POST", "DELETE"]), min_size=1, max_size=3
            ),
            "paths": st.lists(PATHS, min_size=1, max_size=3),
            "headers": st.dictionaries(NAMES, MATCHERS, min_size=1, max_size=2),
        },
    )


def rules(kind: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    extra: dict[str, st.SearchStrategy[Any]] = {
        "from": st.lists(SOURCES_ST, min_size=1, max_size=3)
    }
    optional: dict[str, st.SearchStrategy[Any]] = {}
    if kind == "deny":
        optional = {"from": extra.pop("from"), "audit": st.booleans()}
    if kind == "rate_limit":
        extra = {"limit": st.integers(1, 10**9), "per": st.sampled_from(["1ms", "1s", "10m", "2h"])}
        optional = {
            "burst": st.integers(1, 10**9),
            "bucket": st.sampled_from(["shared", "per-source"]),
        }
    rule = st.tuples(selector_fields(), st.fixed_dictionaries(extra, optional=optional)).map(
        lambda t: {**t[0], **t[1]}
    )
    return st.lists(rule, max_size=3).map(
        lambda rs: [{"name": f"{kind[0]}{i}", **r} for i, r in enumerate(rs)]
    )


DOCUMENTS = st.fixed_dictionaries(
    {"version": st.just(1), "name": NAMES},
    optional={
        "trust_domain": st.sampled_from(["prod.example", "a.b"]),
        "description": st.text(max_size=20),
        "mtls": st.fixed_dictionaries(
            {},
            optional={
                "mode": st.sampled_from(["strict", "permissive"]),
                "services": st.dictionaries(
                    NAMES, st.sampled_from(["strict", "permissive"]), max_size=2
                ),
            },
        ),
        "authz": st.fixed_dictionaries(
            {},
            optional={
                "default": st.sampled_from(["deny", "audit"]),
                "services": st.dictionaries(
                    NAMES, st.sampled_from(["deny", "allow", "audit"]), max_size=2
                ),
            },
        ),
        "allow": rules("allow"),
        "deny": rules("deny"),
        "rate_limit": rules("rate_limit"),
    },
).filter(lambda d: d["name"] not in ("builtin", "normalize", "config", "registry"))


@settings(max_examples=150, deadline=None)
@given(DOCUMENTS)
def test_document_data_round_trips_through_check_data(data: dict[str, Any]) -> None:
    document, problems = check_data(data, "gen", MESH, NOW)
    assert errors(problems) == [], [p.render() for p in problems]
    assert document is not None
    assert json.loads(json.dumps(document.data)) == document.data  # JSON-safe: no tuples, no dates
    again, problems = check_data(json.loads(json.dumps(document.data)), "gen", MESH, NOW)
    assert errors(problems) == []
    assert again == document
