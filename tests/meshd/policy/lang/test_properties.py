"""Property tests: the invariants of §2.5, the soundness of the L4 prejudge, normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.evaluate import Decision, Request
from meshd.policy.lang.model import Document, RateLimit, Rule, Selector
from meshd.policy.lang.normalize import Normalized, normalize, normalize_target
from tests.meshd.policy.lang.build import TD, document, limit, selector, spiffe

SERVICES = ["api", "db"]
PEERS = [
    spiffe("web"),
    spiffe("api"),
    spiffe("batch"),
    "spiffe://other.td/svc/web",
    f"spiffe://{TD}/host/h1",
    None,
]
PORTS = [8080, 9000, 9050, 9102]
METHODS = ["GET", "HEAD", "POST", "DELETE"]
PATHS = ["/", "/v1", "/v1/", "/v1/a/x", "/v1/a/y", "/admin", "/admin/", "/a/b", "/v1x"]
HEADERS: list[tuple[tuple[str, str], ...]] = [
    (),
    (("X-T", "a"),),
    (("x-t", "ab"),),
    (("x-t", "a"), ("x-t", "b")),
]

SOURCE_TEXTS = [
    "web",
    "api",
    "*",
    "unauthenticated",
    "spiffe://prod.example/svc/*",
    "spiffe://other.td/svc/web",
]
PORT_SPECS: list[list[int | str]] = [[8080], [9000], ["9000-9100"], [8080, "9050-9102"]]
PATTERNS = ["/", "/v1", "/v1/**", "/v1/*/x", "/**", "/admin", "/a/*", "/admin/**"]
HEADER_SPECS: list[dict[str, str | bool | tuple[str, str]]] = [
    {"x-t": "a"},
    {"x-t": True},
    {"x-t": False},
    {"x-t": ("prefix", "a")},
]


# Fields are left out more often than set, so that several rules often match one
# request: that is where the order of rules could leak into a decision.
UNSET = st.sampled_from([None, None])
SOURCE_LISTS = st.lists(st.sampled_from(SOURCE_TEXTS), min_size=1, max_size=3)
ANY_SOURCES = st.one_of(UNSET, SOURCE_LISTS)
ANY_PORTS = st.one_of(UNSET, UNSET, st.sampled_from(PORT_SPECS))
ANY_METHODS = st.one_of(UNSET, UNSET, st.lists(st.sampled_from(METHODS), min_size=1, max_size=2))
ANY_PATHS = st.one_of(UNSET, st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2))
ANY_HEADERS = st.one_of(UNSET, UNSET, UNSET, st.sampled_from(HEADER_SPECS))
TOS = st.sampled_from([*SERVICES, "*", "*"])


@st.composite
def selectors(draw: st.DrawFn, needs_from: bool) -> Selector:
    return selector(
        draw(TOS),
        draw(SOURCE_LISTS if needs_from else ANY_SOURCES),
        draw(ANY_PORTS),
        draw(ANY_METHODS),
        draw(ANY_PATHS),
        draw(ANY_HEADERS),
    )


@st.composite
def rules(draw: st.DrawFn, kind: str | None = None, audit: bool | None = None) -> Rule:
    kind = kind or draw(st.sampled_from(["allow", "deny"]))
    name = draw(st.text("abcdefghij", min_size=1, max_size=6))
    is_audit = kind == "deny" and (draw(st.booleans()) if audit is None else audit)
    return Rule(f"p/{kind}/{name}", kind, name, draw(selectors(kind == "allow")), audit=is_audit)  # type: ignore[arg-type]


def unique(found: Sequence[Rule]) -> list[Rule]:
    return list({r.id: r for r in found}.values())


def fresh(rule: Rule) -> Rule:
    """``rule`` under an id no generated rule has (an added rule, not a replaced one)."""
    return replace(rule, id=rule.id + "-new", name=rule.name + "-new")


rule_lists = st.lists(rules(), max_size=10).map(unique)
modes = st.sampled_from([None, "strict", "permissive"])
defaults = st.sampled_from([None, "deny", "allow", "audit"])


@st.composite
def requests(draw: st.DrawFn) -> Request:
    service, port, source = (
        draw(st.sampled_from(SERVICES)),
        draw(st.sampled_from(PORTS)),
        draw(st.sampled_from(PEERS)),
    )
    if draw(st.booleans()):
        return Request(service, port, source)
    return Request(
        service,
        port,
        source,
        draw(st.sampled_from(METHODS)),
        draw(st.sampled_from(PATHS)),
        draw(st.sampled_from(HEADERS)),
    )


def policy_doc(
    found: Sequence[Rule], mode: str | None, default: str | None, name: str = "p"
) -> Document:
    return document(name, found, mode=mode, default=default)


def decide(docs: Sequence[Document], request: Request) -> Decision:
    return CompiledPolicy.compile(docs, TD).for_service(request.service).evaluate(request)


def is_deny(decision: Decision) -> bool:
    return decision.decision in ("deny", "reset")


@settings(max_examples=200)
@given(
    rule_lists, modes, defaults, requests(), st.randoms(use_true_random=False), st.integers(1, 4)
)
def test_order_independence(
    found: list[Rule],
    mode: str | None,
    default: str | None,
    request: Request,
    rnd: Random,
    parts: int,
) -> None:
    expected = decide([policy_doc(found, mode, default)], request)
    shuffled = list(found)
    rnd.shuffle(shuffled)
    split: list[list[Rule]] = [[] for _ in range(parts)]
    for rule in shuffled:
        split[rnd.randrange(parts)].append(rule)
    docs = [policy_doc(split[0], mode, default)] + [
        policy_doc(s, None, None, f"q{i}") for i, s in enumerate(split[1:])
    ]
    rnd.shuffle(docs)
    assert decide(docs, request) == expected


@settings(max_examples=200)
@given(rule_lists, modes, defaults, requests(), rules("deny", audit=False))
def test_deny_monotonicity(
    found: list[Rule], mode: str | None, default: str | None, request: Request, extra: Rule
) -> None:
    before = decide([policy_doc(found, mode, default)], request)
    after = decide([policy_doc([*found, fresh(extra)], mode, default)], request)
    if is_deny(before):
        assert is_deny(after)


@settings(max_examples=200)
@given(rule_lists, modes, defaults, requests(), rules("allow"))
def test_allow_monotonicity(
    found: list[Rule], mode: str | None, default: str | None, request: Request, extra: Rule
) -> None:
    before = decide([policy_doc(found, mode, default)], request)
    after = decide([policy_doc([*found, fresh(extra)], mode, default)], request)
    if before.decision == "allow":
        assert after.decision == "allow"


@settings(max_examples=200)
@given(rule_lists, modes, defaults, requests())
def test_audit_transparency(
    found: list[Rule], mode: str | None, default: str | None, request: Request
) -> None:
    before = decide([policy_doc(found, mode, default)], request)
    enforced = [r for r in found if not r.audit]
    after = decide([policy_doc(enforced, mode, default)], request)
    assert (after.decision, after.status, after.rule) == (
        before.decision,
        before.status,
        before.rule,
    )
    assert set(after.would_deny) <= set(before.would_deny)


LIMITS = st.lists(
    st.builds(
        lambda i, to, sources, port, methods: limit(
            "p", f"l{i}", to, 5, sources=sources, port=port, methods=methods
        ),
        st.integers(0, 3),
        st.sampled_from([*SERVICES, "*"]),
        ANY_SOURCES,
        ANY_PORTS,
        ANY_METHODS,
    ),
    max_size=2,
)


@settings(max_examples=200)
@given(
    rule_lists,
    modes,
    defaults,
    LIMITS,
    st.sampled_from(SERVICES),
    st.sampled_from(PEERS),
    st.sampled_from(PORTS),
)
def test_connection_prejudge_is_sound(
    found: list[Rule],
    mode: str | None,
    default: str | None,
    limits: list[RateLimit],
    service: str,
    source: str | None,
    port: int,
) -> None:
    doc = document(
        "p", found, mode=mode, default=default, rate_limits=list({r.id: r for r in limits}.values())
    )
    policy = CompiledPolicy.compile([doc], TD).for_service(service)
    verdict = policy.connection(source, port)
    every = [Request(service, port, source)] + [
        Request(service, port, source, m, p, h) for m in METHODS for p in PATHS for h in HEADERS
    ]
    for request in every:
        decision = policy.evaluate(request)
        if verdict == "deny":
            assert is_deny(decision), request
        elif verdict == "allow":
            assert decision.decision == "allow" and not decision.would_deny, request
            assert policy.rate_limits(request) == (), request


PIECES = [
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E",
    "%7e",
    "%3a",
    "a",
    "B",
    ";",
    "..;",
    "%",
    "%41",
    "~",
    "?q=%2F",
    "*",
]


@settings(max_examples=200)
@given(st.lists(st.sampled_from(PIECES), max_size=10))
def test_normalised_paths_are_fixed_points(pieces: list[str]) -> None:
    target = "/" + "".join(pieces)
    result = normalize("GET", target)
    if isinstance(result, Normalized):
        again = normalize("GET", result.path)
        assert again == Normalized(result.path, result.path)
        segments = result.path.split("/")[1:]
        assert "//" not in result.path and "." not in segments and ".." not in segments
        assert result.target.startswith(result.path)


@settings(max_examples=300)
@given(st.text(st.characters(min_codepoint=0, max_codepoint=0x80), max_size=12), st.booleans())
def test_fast_path_agrees_with_the_long_way(text: str, rooted: bool) -> None:
    target = "/" + text if rooted else text
    assert normalize("GET", target) == normalize_target(target)
