"""The applied documents merged into one policy, indexed by destination service (§2.4-2.5).

``CompiledPolicy.compile`` resolves the settings (a per-service value wins
over the mesh-wide one, which wins over the built-in) and compiles every
rule's selector once; ``for_service`` hands meshd the ``ServicePolicy`` of
one local service, so the cost of a decision never depends on the rules
written for other services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshd.policy.lang.evaluate import Decision, Request, ServicePolicy, explain
from meshd.policy.lang.matchers import Matcher
from meshd.policy.lang.model import ANY_SERVICE, Document, RateLimit, Setting

__all__ = ["CompiledPolicy", "Decision", "Request", "ServicePolicy", "explain"]

BUILTIN_MODE = Setting("strict", "builtin/mtls/mode")
BUILTIN_DEFAULT = Setting("deny", "builtin/authz/default")


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """The applied set: ``enforcing`` is False for "no policy" (no documents), and then
    meshd must not call the evaluator at all (a service with no policy pays nothing)."""

    version: int
    trust_domain: str
    documents: tuple[Document, ...]
    services: Mapping[str, ServicePolicy] = field(default_factory=dict, repr=False)
    _rules: tuple[tuple[str, tuple[Matcher, str, bool]], ...] = field(default=(), repr=False)
    _limits: tuple[tuple[str, tuple[Matcher, RateLimit]], ...] = field(default=(), repr=False)
    _settings: tuple[Setting, Setting, Mapping[str, Setting], Mapping[str, Setting]] = field(
        default=(BUILTIN_MODE, BUILTIN_DEFAULT, {}, {}), repr=False
    )

    @classmethod
    def compile(
        cls, documents: Sequence[Document], trust_domain: str, version: int = 0
    ) -> CompiledPolicy:
        docs = tuple(documents)
        rules = tuple(
            (r.selector.to, (Matcher(r.id, r.selector), r.kind, r.audit))
            for d in docs
            for r in d.rules
        )
        limits = tuple(
            (r.selector.to, (Matcher(r.id, r.selector), r)) for d in docs for r in d.rate_limits
        )
        settings = _settings(docs)
        named = {to for to, _ in rules} | {to for to, _ in limits}
        named |= set(settings[2]) | set(settings[3])
        named.discard(ANY_SERVICE)
        services = {s: _service(s, rules, limits, settings) for s in sorted(named)}
        return cls(version, trust_domain, docs, services, rules, limits, settings)

    @property
    def enforcing(self) -> bool:
        return bool(self.documents)

    def for_service(self, service: str) -> ServicePolicy:
        """The rules of ``service`` (its own and ``to = "*"``), with its mTLS mode and default."""
        found = self.services.get(service)
        if found is not None:
            return found
        return _service(service, self._rules, self._limits, self._settings)


def _service(
    service: str,
    rules: Sequence[tuple[str, tuple[Matcher, str, bool]]],
    limits: Sequence[tuple[str, tuple[Matcher, RateLimit]]],
    settings: tuple[Setting, Setting, Mapping[str, Setting], Mapping[str, Setting]],
) -> ServicePolicy:
    mode, default, mtls_services, authz_services = settings
    mode = mtls_services.get(service, mode)
    default = authz_services.get(service, default)
    wanted = (service, ANY_SERVICE)
    return ServicePolicy.build(
        service,
        (mode.value, mode.id),
        (default.value, default.id),
        [r for to, r in rules if to in wanted],
        [r for to, r in limits if to in wanted],
    )


def _settings(
    docs: Sequence[Document],
) -> tuple[Setting, Setting, Mapping[str, Setting], Mapping[str, Setting]]:
    """The settings in force. The validator lets one document own each (P040); should two
    still set one, the smallest id wins, so the outcome never depends on document order."""
    mode = _first([d.mtls_mode for d in docs], BUILTIN_MODE)
    default = _first([d.authz_default for d in docs], BUILTIN_DEFAULT)
    return (
        mode,
        default,
        _merge([d.mtls_services for d in docs]),
        _merge([d.authz_services for d in docs]),
    )


def _first(found: Sequence[Setting | None], builtin: Setting) -> Setting:
    present = [s for s in found if s is not None]
    return min(present, key=lambda s: s.id) if present else builtin


def _merge(maps: Sequence[Mapping[str, Setting]]) -> dict[str, Setting]:
    merged: dict[str, Setting] = {}
    for m in maps:
        for service, setting in m.items():
            if service not in merged or setting.id < merged[service].id:
                merged[service] = setting
    return merged
