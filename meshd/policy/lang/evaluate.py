"""A request to a decision (§2.4-2.6): mTLS mode, then deny-overrides authorization.

``ServicePolicy`` holds one destination service's compiled rules (its own and
those for ``to = "*"``), each kind sorted by rule id, so the first matching
deny or allow is already ``min`` of §2.5 and the scan stops there. Decisions
that carry no would-deny are built at compile time: an allowed request
allocates only what the audit scan finds. ``explain`` is the offline entry
point (normalise, then evaluate) that ``meshctl policy explain`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from meshd.policy.lang.matchers import Matcher
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
            cache[(m.id, True)] = cache[(m.id, False)] = Decision(
                "allow", None, m.id, (), MATCHED_ALLOW
            )
        detail = NO_ALLOW if self.allows else DEFAULT_ALLOW_DISABLED
        cache[("", True)] = self._default(True, detail)
        cache[("", False)] = self._default(False, detail)
        cache[("mtls", False)] = Decision("reset", None, self.mode_rule, (), MTLS_REQUIRED)
        object.__setattr__(self, "_decisions", cache)

    def _default(self, http: bool, deny_detail: str) -> Decision:
        if self.default == "deny":
            return _deny(self.default_rule, http, deny_detail)
        detail = DEFAULT_AUDIT if self.default == "audit" else DEFAULT_ALLOW
        return Decision("allow", None, self.default_rule, (), detail)

    # -- evaluation ---------------------------------------------------------------

    def evaluate(self, request: Request) -> Decision:
        """§2.5 on a normalised request: mTLS, then deny > allow > default."""
        decisions = self._decisions
        source, port = request.source, request.port
        if source is None and self.mode == "strict":
            return decisions[("mtls", False)]
        method = request.method
        if method is None:
            return self._evaluate_tcp(decisions, source, port)
        path = request.path
        if len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        segments = path[1:].split("/") if self.segmented else ()
        headers = request.headers
        would = (
            tuple(
                m.id
                for m in self.audits
                if m.l4(source, port) and m.http(method, path, segments, headers)
            )
            if self.audits
            else ()
        )
        rule = ""
        for m in self.denies:
            if m.l4(source, port) and m.http(method, path, segments, headers):
                rule = m.id
                break
        else:
            for m in self.allows:
                if m.l4(source, port) and m.http(method, path, segments, headers):
                    rule = m.id
                    break
        return self._finish(decisions[(rule, True)], would)

    def _evaluate_tcp(
        self, decisions: dict[tuple[str, bool], Decision], source: str | None, port: int
    ) -> Decision:
        # Denies fail closed (HTTP-only fields are unknown: L4 decides); allows with
        # HTTP-only fields never match.
        would = tuple(m.id for m in self.audits if m.l4(source, port)) if self.audits else ()
        rule = next((m.id for m in self.denies if m.l4(source, port)), "")
        if not rule:
            rule = next((m.id for m in self.allows if not m.http_only and m.l4(source, port)), "")
        return self._finish(decisions[(rule, False)], would)

    def _finish(self, decision: Decision, would: tuple[str, ...]) -> Decision:
        if decision.detail == DEFAULT_AUDIT:
            would = tuple(sorted((*would, decision.rule)))
        return decision.with_would_deny(would)

    def rate_limits(self, request: Request) -> tuple[RateLimit, ...]:
        """The rate limits that apply (on TCP, those without HTTP-only fields)."""
        if not self.limits:
            return ()
        source, port, method = request.source, request.port, request.method
        if method is None:
            return tuple(r for m, r in self.limits if not m.http_only and m.l4(source, port))
        path = request.path
        if len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        segments = path[1:].split("/") if self.segmented else ()
        return tuple(
            r
            for m, r in self.limits
            if m.l4(source, port) and m.http(method, path, segments, request.headers)
        )

    def connection(self, source: str | None, port: int) -> Prejudge:
        """The L4 prejudge: "allow" (every HTTP request and TCP use from this peer on this
        port is allowed, with no would-deny and no rate limit), "deny" (every one is
        denied or reset) or "inspect". Conservative: when unsure, "inspect"."""
        if source is None and self.mode == "strict":
            return "deny"
        denies = [m for m in self.denies if m.l4(source, port)]
        if any(not m.http_only for m in denies):
            return "deny"
        if denies:
            return "inspect"
        allows = [m for m in self.allows if m.l4(source, port)]
        if not allows and self.default == "deny":
            return "deny"
        always = any(not m.http_only for m in allows) or self.default == "allow"
        if not always or any(m.l4(source, port) for m in self.audits):
            return "inspect"
        if any(m.l4(source, port) for m, _ in self.limits):
            return "inspect"
        return "allow"


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
