"""A request to a decision (§2.4-2.6): mTLS mode, then deny-overrides authorization.

``ServicePolicy`` holds one destination service's compiled rules (its own and
those for ``to = "*"``), each kind sorted by rule id, so the first matching
deny or allow is already ``min`` of §2.5 and the scan stops there. The rules
one peer can meet on one port (their L4 fields match) are worked out once and
remembered, with the opaque TCP decision and the L4 prejudge; a request then
tests only HTTP fields. Decisions that carry no would-deny are built at
compile time: an allowed request allocates only what the audit scan finds.
``explain`` is the offline entry point (normalise, then evaluate) that
``meshctl policy explain`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from meshd.policy.lang.matchers import Headers, Matcher
from meshd.policy.lang.model import RateLimit
from meshd.policy.lang.normalize import Rejected, normalize

if TYPE_CHECKING:
    from meshd.policy.lang.compiled import CompiledPolicy

Verdict = Literal["allow", "deny", "reset", "bad-request"]
Prejudge = Literal["allow", "deny", "inspect"]

MATCHED_DENY = "matched deny rule"
MATCHED_ALLOW = "matched allow rule"
NO_ALLOW = "no allow rule matched"
DEFAULT_ALLOW_DISABLED = "default allow disabled"
DEFAULT_ALLOW = "default allow"
DEFAULT_AUDIT = "default audit"
MTLS_REQUIRED = "mtls-required"


@dataclass(frozen=True, slots=True)
class Request:
    """What authz sees of one request (``method`` None: opaque TCP, judged at accept)."""

    service: str
    port: int
    source: str | None  # the peer's verified SPIFFE ID; None: a plaintext peer
    method: str | None = None
    path: str = "/"  # normalised (Normalized.path)
    headers: tuple[tuple[str, str], ...] = ()  # as received, in arrival order


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome and the rule that decided it; ``would_deny``: audit rules that matched."""

    decision: Verdict
    status: int | None  # 403 (HTTP deny), 400 (bad-request), None (allow, reset)
    rule: str
    would_deny: tuple[str, ...] = ()
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "status": self.status,
            "rule": self.rule,
            "would_deny": list(self.would_deny),
        }

    def with_would_deny(self, would_deny: tuple[str, ...]) -> Decision:
        if not would_deny:
            return self
        return Decision(self.decision, self.status, self.rule, would_deny, self.detail)


def _deny(rule: str, http: bool, detail: str) -> Decision:
    return (
        Decision("deny", 403, rule, (), detail)
        if http
        else Decision("reset", None, rule, (), detail)
    )


MAX_VIEWS = 4096  # (peer, port) pairs remembered per service; peers are verified identities
_MTLS = ("mtls", False)


class _View:
    """What one peer on one port can meet: the service's rules whose L4 fields match,
    and what follows from L4 alone (the opaque TCP decision, the prejudge)."""

    __slots__ = ("allows", "audits", "denies", "limits", "prejudge", "tcp", "tcp_limits")

    def __init__(self, policy: ServicePolicy, source: str | None, port: int) -> None:
        self.denies = tuple(m for m in policy.denies if m.l4(source, port))
        self.audits = tuple(m for m in policy.audits if m.l4(source, port))
        self.allows = tuple(m for m in policy.allows if m.l4(source, port))
        self.limits = tuple((m, r) for m, r in policy.limits if m.l4(source, port))
        self.tcp_limits = tuple(r for m, r in self.limits if not m.http_only)
        # Opaque TCP: denies fail closed (HTTP-only fields are unknown, L4 decides);
        # allows with HTTP-only fields never match.
        rule = next((m.id for m in self.denies), "")
        rule = rule or next((m.id for m in self.allows if not m.http_only), "")
        self.tcp = policy.finish(rule, False, tuple(m.id for m in self.audits))
        self.prejudge = self._prejudge(policy.default)

    def _prejudge(self, default: str) -> Prejudge:
        if any(not m.http_only for m in self.denies):
            return "deny"  # every request and the TCP use match an enforced deny
        if self.denies:
            return "inspect"
        if not self.allows and default == "deny":
            return "deny"
        always = default == "allow" or any(not m.http_only for m in self.allows)
        return "allow" if always and not self.audits and not self.limits else "inspect"


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """One destination service's rules, compiled; built by ``CompiledPolicy.for_service``."""

    service: str
    mode: str  # "strict" | "permissive"
    mode_rule: str  # where it was set, or builtin/mtls/mode
    default: str  # "deny" | "allow" | "audit"
    default_rule: str  # where it was set, or builtin/authz/default
    denies: tuple[Matcher, ...]  # enforced, sorted by id
    audits: tuple[Matcher, ...]  # audit = true, sorted by id
    allows: tuple[Matcher, ...]  # sorted by id
    limits: tuple[tuple[Matcher, RateLimit], ...]
    segmented: bool  # some path pattern needs the request's segments
    _decisions: dict[tuple[str, bool], Decision] = field(init=False, repr=False, compare=False)
    _views: dict[tuple[str | None, int], _View] = field(init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        service: str,
        mode: tuple[str, str],
        default: tuple[str, str],
        rules: Sequence[tuple[Matcher, str, bool]],
        limits: Sequence[tuple[Matcher, RateLimit]],
    ) -> ServicePolicy:
        """``rules``: (matcher, kind, audit) of every rule whose ``to`` is ``service`` or "*"."""
        ordered = sorted(rules, key=lambda r: r[0].id)
        denies = tuple(m for m, kind, audit in ordered if kind == "deny" and not audit)
        audits = tuple(m for m, kind, audit in ordered if kind == "deny" and audit)
        allows = tuple(m for m, kind, _ in ordered if kind == "allow")
        segmented = any(m.segmented for m, _, _ in rules) or any(m.segmented for m, _ in limits)
        return cls(service, *mode, *default, denies, audits, allows, tuple(limits), segmented)

    def __post_init__(self) -> None:
        # Decisions without would-deny, built once: the common case allocates nothing.
        cache: dict[tuple[str, bool], Decision] = {}
        for m in self.denies:
            cache[(m.id, True)] = _deny(m.id, True, MATCHED_DENY)
            cache[(m.id, False)] = _deny(m.id, False, MATCHED_DENY)
        for m in self.allows:
            allowed = Decision("allow", None, m.id, (), MATCHED_ALLOW)
            cache[(m.id, True)] = cache[(m.id, False)] = allowed
        detail = NO_ALLOW if self.allows else DEFAULT_ALLOW_DISABLED
        cache[("", True)] = self._default(True, detail)
        cache[("", False)] = self._default(False, detail)
        cache[_MTLS] = Decision("reset", None, self.mode_rule, (), MTLS_REQUIRED)
        object.__setattr__(self, "_decisions", cache)
        object.__setattr__(self, "_views", {})

    def _default(self, http: bool, deny_detail: str) -> Decision:
        if self.default == "deny":
            return _deny(self.default_rule, http, deny_detail)
        detail = DEFAULT_AUDIT if self.default == "audit" else DEFAULT_ALLOW
        return Decision("allow", None, self.default_rule, (), detail)

    def finish(self, rule: str, http: bool, would: tuple[str, ...]) -> Decision:
        """The decision for ``rule`` ("" for the default), with the would-deny list."""
        decision = self._decisions[(rule, http)]
        if decision.detail == DEFAULT_AUDIT:
            would = tuple(sorted((*would, decision.rule)))
        return decision.with_would_deny(would)

    def _view(self, source: str | None, port: int) -> _View:
        views = self._views
        view = views.get((source, port))
        if view is None:
            if len(views) >= MAX_VIEWS:
                views.clear()  # bounded; rebuilding a view is cheap
            view = views[(source, port)] = _View(self, source, port)
        return view

    # -- evaluation ---------------------------------------------------------------

    def evaluate(self, request: Request) -> Decision:
        """§2.5 on a normalised request: mTLS, then deny > allow > default."""
        source = request.source
        if source is None and self.mode == "strict":
            return self._decisions[_MTLS]
        view = self._view(source, request.port)
        method = request.method
        if method is None:
            return view.tcp
        path = request.path
        if len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        segments = path[1:].split("/") if self.segmented else ()
        headers = request.headers
        would = _all(view.audits, method, path, segments, headers) if view.audits else ()
        rule = _first(view.denies, method, path, segments, headers)
        if not rule:
            rule = _first(view.allows, method, path, segments, headers)
        return self.finish(rule, True, would)

    def rate_limits(self, request: Request) -> tuple[RateLimit, ...]:
        """The rate limits that apply (on TCP, those without HTTP-only fields)."""
        if not self.limits or (request.source is None and self.mode == "strict"):
            return ()
        view = self._view(request.source, request.port)
        method = request.method
        if method is None or not view.limits:
            return view.tcp_limits if method is None else ()
        path = request.path
        if len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        segments = path[1:].split("/") if self.segmented else ()
        headers = request.headers
        return tuple(r for m, r in view.limits if m.http(method, path, segments, headers))

    def connection(self, source: str | None, port: int) -> Prejudge:
        """The L4 prejudge: "allow" (every HTTP request and TCP use from this peer on this
        port is allowed, with no would-deny and no rate limit), "deny" (every one is
        denied or reset) or "inspect". Conservative: when unsure, "inspect"."""
        if source is None and self.mode == "strict":
            return "deny"
        return self._view(source, port).prejudge


def _first(
    matchers: tuple[Matcher, ...], method: str, path: str, segments: Sequence[str], headers: Headers
) -> str:
    """The id of the first (smallest) matcher the request matches, or ""."""
    for m in matchers:
        if m.http(method, path, segments, headers):
            return m.id
    return ""


def _all(
    matchers: tuple[Matcher, ...], method: str, path: str, segments: Sequence[str], headers: Headers
) -> tuple[str, ...]:
    return tuple([m.id for m in matchers if m.http(method, path, segments, headers)])


def bad_request(rejected: Rejected) -> Decision:
    return Decision(
        "bad-request", 400, rejected.rule, (), "normalization rejected: " + rejected.reason
    )


def explain(
    policy: CompiledPolicy,
    service: str,
    port: int,
    source: str | None,
    method: str | None,
    target: str,
    headers: Sequence[tuple[str, str]],
) -> Decision:
    """What meshd would decide: mTLS, then (HTTP) normalise, then authz. ``method`` None: TCP."""
    sp = policy.for_service(service)
    if method is None or (source is None and sp.mode == "strict"):
        return sp.evaluate(Request(service, port, source))
    normalized = normalize(method, target)
    if isinstance(normalized, Rejected):
        return bad_request(normalized)
    return sp.evaluate(Request(service, port, source, method, normalized.path, tuple(headers)))
