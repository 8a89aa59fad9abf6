"""What a new policy set changes in decisions: representative probes, judged twice (pure).

``policy diff`` compares rules by id; this module says what those changes do.
It builds the requests the two sets can tell apart (every principal either set
names, plus one identity no rule names and a plaintext peer; every service
either set names, or the inventory's; the ports the rules name, or the
service's; opaque TCP, requests that use each method and each path pattern
of each L7 rule with header values it matches, and one request no L7 rule
matches), judges each with meshd's evaluator (``meshd.policy.lang.evaluate``,
as ``policy explain`` does) against the applied set and the new one, and
keeps those whose outcome changes. The probes are representatives, not every
possible request: a rule's pattern is exercised by one path, and requests that
combine the fields of two rules are not built.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from meshd.identity import make_id
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.evaluate import Request, Verdict, explain
from meshd.policy.lang.matchers import PathPattern
from meshd.policy.lang.model import ANY_SERVICE, Document, Selector
from meshd.policy.lang.normalize import Rejected, normalize

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")
OTHER_NAME = "other"  # the service name of "an identity no rule names", made unique
OTHER_SERVICE = "(other service)"  # not a valid service name, so it never collides
NO_POLICY = "(no policy)"  # the rule of an empty set: meshd enforces nothing, all pass
# Port 0 is no valid port in a rule (P011): it stands for "a port no rule names".
UNNAMED_PORT = 0
# Candidates for "a request no L7 rule matches"; the first that matches none is used.
UNMATCHED_PATHS = ("/", "/mesh-probe", "/mesh-probe/unmatched/x")
MAX_PAIRS = 16  # a rule's methods x paths probed in full up to this many, else covered
SAMPLE_SEGMENT = "x"  # what a `*` or `**` segment of a path pattern becomes in a probe

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Probe:
    """One request. ``source`` None: a plaintext peer; ``port`` None: a port no rule
    names; ``method`` None: opaque TCP; ``named`` False: an identity no rule names."""

    source: str | None
    destination: str
    port: int | None
    method: str | None = None
    path: str = "/"
    headers: Headers = ()
    named: bool = True

    @property
    def tcp(self) -> bool:
        return self.method is None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What meshd decides for a probe, and the rate limits that would count it."""

    decision: Verdict
    rule: str
    would_deny: tuple[str, ...] = ()
    rate_limits: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "rule": self.rule,
            "would_deny": list(self.would_deny),
            "rate_limits": list(self.rate_limits),
        }

    @property
    def key(self) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
        """What makes two outcomes the same outcome for an L4 reason: an HTTP deny (403)
        and a TCP reset by the same rule are one decision."""
        verdict = "deny" if self.decision == "reset" else self.decision
        return (verdict, self.rule, self.would_deny, self.rate_limits)


@dataclass(frozen=True, slots=True)
class DecisionChange:
    """A probe whose outcome differs between the applied set and the new one."""

    probe: Probe
    source: str  # the probe's source as `policy explain --from` takes it
    before: Outcome
    after: Outcome

    def to_json(self) -> dict[str, Any]:
        p = self.probe
        return {
            "source": self.source,
            "destination": p.destination,
            "port": p.port,
            "method": p.method,
            "path": None if p.tcp else p.path,
            "headers": [list(h) for h in p.headers],
            "tcp": p.tcp,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ChangeLine:
    """One line of the text view: a changed probe, or every probe of one (source,
    destination, port) when they all changed alike (``request`` is then None)."""

    source: str
    named: bool
    destination: str
    port: int | None
    request: str | None  # "tcp", "GET /v1/x", or None: every request
    before: Outcome
    after: Outcome


@dataclass(frozen=True, slots=True)
class DecisionDiff:
    """Every changed probe (``changes``), the same grouped for reading (``lines``), and
    how many probes were judged."""

    probes: int
    changes: tuple[DecisionChange, ...]
    lines: tuple[ChangeLine, ...]


def decision_diff(
    before: Sequence[Document],
    after: Sequence[Document],
    trust_domain: str,
    inventory: Mapping[str, Iterable[int]] | None = None,
    skip_same: bool = True,
) -> DecisionDiff:
    """Judge every probe against ``before`` (the applied set) and ``after`` (the set with
    the new documents in); ``inventory``: service -> its ports, where known. With
    ``skip_same``, a service whose rules and settings are the same in both sets is not
    probed: the same evaluator on the same input gives the same decisions."""
    ports = {s: sorted(set(p)) for s, p in (inventory or {}).items()}
    documents = [*before, *after]
    services = destinations(documents, ports)
    old = _indexed(CompiledPolicy.compile(before, trust_domain), services)
    new = _indexed(CompiledPolicy.compile(after, trust_domain), services)
    if skip_same:
        services = [s for s in services if _key(old, before, s) != _key(new, after, s)]
    domain = _label_domain(documents, trust_domain)
    found: list[tuple[Probe, Outcome, Outcome]] = []
    for probe in probes(documents, trust_domain, ports, services):
        found.append((probe, judge(old, probe), judge(new, probe)))
    changes = tuple(DecisionChange(p, label(p.source, domain), b, a) for p, b, a in found if b != a)
    return DecisionDiff(len(found), changes, tuple(_lines(found, domain)))


def _indexed(policy: CompiledPolicy, services: Sequence[str]) -> CompiledPolicy:
    """``policy`` with every probed service compiled once (``for_service`` compiles a
    service no rule names anew at each call)."""
    if not policy.enforcing:
        return policy
    missing = {s: policy.for_service(s) for s in services if s not in policy.services}
    return replace(policy, services={**policy.services, **missing})


def _key(policy: CompiledPolicy, documents: Sequence[Document], service: str) -> object:
    """All that decides a request to ``service``: its mTLS mode and authz default with where
    they were set, and its rules and rate limits (their ``to`` is it or "*"), by id."""
    if not policy.enforcing:
        return NO_POLICY
    sp = policy.for_service(service)
    wanted = (service, ANY_SERVICE)
    rules = [(r.id, r.kind, r.audit, r.selector) for d in documents for r in d.rules]
    limits = [
        (r.id, r.selector, r.limit, r.per_ms, r.burst, r.bucket)
        for d in documents
        for r in d.rate_limits
    ]
    return (
        (sp.mode, sp.mode_rule, sp.default, sp.default_rule),
        sorted((r for r in rules if r[3].to in wanted), key=lambda r: r[0]),
        sorted((r for r in limits if r[1].to in wanted), key=lambda r: r[0]),
    )


# -- probes --------------------------------------------------------------------


def probes(
    documents: Sequence[Document],
    trust_domain: str,
    inventory: Mapping[str, Sequence[int]],
    services: Sequence[str] | None = None,
) -> list[Probe]:
    """Every source, destination, port, request the documents can tell apart; ``services``:
    only these destinations (default: ``destinations``)."""
    selectors = _selectors(documents)
    sources = principals(documents, trust_domain)
    found: list[Probe] = []
    for service in destinations(documents, inventory) if services is None else services:
        wanted = [s for s in selectors if s.to in (service, ANY_SERVICE)]
        requests = representative_requests(wanted)
        for port in service_ports(wanted, inventory.get(service, ())):
            for source, named in sources:
                for method, path, headers in requests:
                    found.append(Probe(source, service, port, method, path, headers, named))
    return found


def _selectors(documents: Sequence[Document]) -> list[Selector]:
    rules = [r.selector for d in documents for r in d.rules]
    return rules + [r.selector for d in documents for r in d.rate_limits]


def principals(documents: Sequence[Document], trust_domain: str) -> list[tuple[str | None, bool]]:
    """(source, named): every identity a ``from`` names (a prefix by one identity under
    it), one identity no rule names per trust domain, and a plaintext peer (None)."""
    named: set[str] = set()
    under: set[str] = set()
    for selector in _selectors(documents):
        for source in selector.sources or ():
            if source.kind == "exact":
                named.add(source.value)
            elif source.kind == "prefix":
                under.add(source.value)
    others = {
        _unnamed(d, named) for d in sorted({trust_domain, *(d.trust_domain for d in documents)})
    }
    prefixed = {p + OTHER_NAME for p in under} - named
    found: list[tuple[str | None, bool]] = [(s, True) for s in sorted(named)]
    found += [(s, False) for s in sorted(others | prefixed)]
    return [*found, (None, True)]


def _unnamed(trust_domain: str, named: set[str]) -> str:
    name, n = OTHER_NAME, 1
    while str(make_id(trust_domain, "svc", name)) in named:
        n += 1
        name = f"{OTHER_NAME}-{n}"
    return str(make_id(trust_domain, "svc", name))


def destinations(
    documents: Sequence[Document], inventory: Mapping[str, Sequence[int]]
) -> list[str]:
    """Every service a rule or setting names, and the inventory's services; without an
    inventory, one service nothing names (what ``to = "*"`` and defaults reach)."""
    found = {s.to for s in _selectors(documents)} - {ANY_SERVICE}
    for d in documents:
        found |= set(d.mtls_services) | set(d.authz_services)
    found |= set(inventory)
    return sorted(found) + ([] if inventory else [OTHER_SERVICE])


def service_ports(selectors: Sequence[Selector], known: Sequence[int]) -> list[int | None]:
    """The service's ports when the inventory knows them; otherwise every port (or range's
    first port) its rules name, and None: a port no rule names."""
    if known:
        return list(known)
    named = {lo for s in selectors for lo, _ in s.ports or ()}
    return [*sorted(named), None]


def representative_requests(
    selectors: Sequence[Selector],
) -> list[tuple[str | None, str, Headers]]:
    """Opaque TCP, the requests of each selector with HTTP fields (``rule_requests``), and
    one request none of them matches."""
    found: list[tuple[str | None, str, Headers]] = [(None, "/", ())]
    l7 = [s for s in selectors if s.http_only]
    for s in l7:
        headers = sample_headers(s)
        found += [(method, path, headers) for method, path in rule_requests(s)]
    found.append(_unmatched(l7))
    return list(dict.fromkeys(found))


def rule_requests(selector: Selector) -> list[tuple[str, str]]:
    """(method, path) pairs a selector matches, so that each of its methods and each of its
    patterns is probed (an edit that drops one shows): every pair while they are few, else
    a cover that uses each method and each pattern at least once."""
    methods = [m for m in METHODS if m in selector.methods] if selector.methods else ["GET"]
    paths = [sample_path(p) for p in selector.paths] if selector.paths else ["/"]
    if len(methods) * len(paths) <= MAX_PAIRS:
        return [(m, p) for m in methods for p in paths]
    width = max(len(methods), len(paths))
    return [(methods[i % len(methods)], paths[i % len(paths)]) for i in range(width)]


def sample_path(pattern: str) -> str:
    """A path ``pattern`` matches: each wildcard segment becomes a plain one."""
    parts = [SAMPLE_SEGMENT if p in ("*", "**") else p for p in pattern[1:].split("/")]
    return "/" + "/".join(parts)


def sample_headers(selector: Selector) -> Headers:
    found = []
    for h in selector.headers or ():
        if h.present is False:
            continue
        value = h.exact if h.exact is not None else h.prefix
        found.append((h.name, SAMPLE_SEGMENT if value is None else value))
    return tuple(found)


def _unmatched(selectors: Sequence[Selector]) -> tuple[str | None, str, Headers]:
    used = {m for s in selectors for m in s.methods or ()}
    method = next((m for m in METHODS if m not in used), "GET")
    patterns = [PathPattern.compile(p) for s in selectors for p in s.paths or ()]
    path = next(
        (p for p in UNMATCHED_PATHS if not any(_matches(pat, p) for pat in patterns)),
        UNMATCHED_PATHS[-1],
    )
    return (method, path, ())


def _matches(pattern: PathPattern, path: str) -> bool:
    trimmed = path[:-1] if len(path) > 1 and path.endswith("/") else path
    return pattern.matches(trimmed, trimmed[1:].split("/"))


# -- judging -------------------------------------------------------------------


def judge(policy: CompiledPolicy, probe: Probe) -> Outcome:
    """meshd's decision for ``probe`` (explain's evaluator) and, when allowed, the rate
    limits that would count it. An empty set enforces nothing (meshd skips it)."""
    if not policy.enforcing:
        return Outcome("allow", NO_POLICY)
    port = UNNAMED_PORT if probe.port is None else probe.port
    service, source, method = probe.destination, probe.source, probe.method
    d = explain(policy, service, port, source, method, probe.path, probe.headers)
    if d.decision != "allow":
        return Outcome(d.decision, d.rule, d.would_deny)
    request = Request(service, port, source)
    if method is not None:
        normalized = normalize(method, probe.path)
        assert not isinstance(normalized, Rejected)  # it was allowed, so it normalised
        request = Request(service, port, source, method, normalized.path, probe.headers)
    limits = policy.for_service(service).rate_limits(request)
    return Outcome(d.decision, d.rule, d.would_deny, tuple(sorted(r.id for r in limits)))


# -- reading -------------------------------------------------------------------


def _label_domain(documents: Sequence[Document], trust_domain: str) -> str:
    """The trust domain short names mean, as ``policy explain --from`` resolves them."""
    domains = {d.trust_domain for d in documents}
    return domains.pop() if len(domains) == 1 else trust_domain


def label(source: str | None, trust_domain: str) -> str:
    """``source`` as ``policy explain --from`` takes it: "web", "host/web1", a SPIFFE ID
    of another trust domain, or "unauthenticated"."""
    if source is None:
        return "unauthenticated"
    for kind, short in (("svc", ""), ("host", "host/")):
        prefix = f"spiffe://{trust_domain}/{kind}/"
        rest = source[len(prefix) :]
        if source.startswith(prefix) and rest and "/" not in rest:
            return short + rest
    return source


def _lines(found: Sequence[tuple[Probe, Outcome, Outcome]], domain: str) -> list[ChangeLine]:
    """Changed probes, with the probes of one (source, destination, port) folded into one
    line when every one of them changed, all from one outcome to one outcome (L4 decides)."""
    groups: dict[tuple[str | None, str, int | None], list[tuple[Probe, Outcome, Outcome]]] = {}
    for item in found:
        p = item[0]
        groups.setdefault((p.source, p.destination, p.port), []).append(item)
    lines: list[ChangeLine] = []
    for (source, service, port), items in groups.items():
        changed = [(p, b, a) for p, b, a in items if b != a]
        if not changed:
            continue
        name, named = label(source, domain), items[0][0].named
        if len(items) > 1 and len(changed) == len(items) and _alike(items):
            p, b, a = next((i for i in items if not i[0].tcp), items[0])
            lines.append(ChangeLine(name, named, service, port, None, b, a))
            continue
        for p, b, a in changed:
            request = "tcp" if p.tcp else f"{p.method} {p.path}" + _headers_text(p.headers)
            lines.append(ChangeLine(name, named, service, port, request, b, a))
    return lines


def _alike(items: Sequence[tuple[Probe, Outcome, Outcome]]) -> bool:
    return len({b.key for _, b, _ in items}) == 1 and len({a.key for _, _, a in items}) == 1


def _headers_text(headers: Headers) -> str:
    return "".join(f" [{n}: {v}]" for n, v in headers)
