"""The compiled bundle every admission decision is made over: one frozen, versioned value.

``Bundle.compile`` runs once per swap of the running state (start, SIGHUP, a
pushed registry, config or policy: ``Runtime.recompile``), never per
connection. It indexes by destination what the decisions need, so that
deciding is a few lookups: the registry's routes (a VIP or an endpoint's
address and port) and services (upstream listeners), the local services
streams and plaintext are delivered to, the limits, the mTLS mode and the
registry's revocations (the SPIFFE IDs, with the notBefore a certificate
carrying one must reach, and the serials no link may carry).

A policy in force (an ``AppliedPolicy`` with documents: ``meshd.documents``
checked it) is compiled here too (``CompiledPolicy``), and each local
service gets a ``Guard`` around its ``ServicePolicy`` on its ``Deliver``:
a push swaps the whole bundle, so no connection is ever judged by half a
policy. The mTLS mode of plaintext then comes from the policy, per service.
With no policy (version 0, or no documents) nothing of it is compiled and
every decision is made as before. Routes and resilience settings will be
compiled into the same indexes (per destination service).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshd.config import MeshdConfig
from meshd.policy.decisions import (
    LOCAL_SERVICES,
    MTLS_MODE,
    MTLS_STRICT,
    REGISTRY_SERVICES,
    Deliver,
    Forward,
    Inbound,
    Refuse,
)
from meshd.policy.guard import Guard
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.model import Document
from meshd.proxy.http.plan import HttpPlan, HttpRules
from meshd.registry import Registry, Revocation, Service, serial_key

NO_HTTP_RULES = HttpRules()

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class AppliedPolicy:
    """The pushed ``/policy`` document meshd runs: its version and its checked documents.

    No documents (``{"version": N}`` alone, or nothing pushed): no policy in force.
    """

    version: int = 0
    documents: tuple[Document, ...] = ()


NO_POLICY = AppliedPolicy()


@dataclass(frozen=True, slots=True)
class Bundle:
    """What meshd decides with: the registry and config, compiled (see the module docstring)."""

    registry_version: int
    policy_version: int
    trust_domain: str
    max_connections: int
    max_streams_per_peer: int
    max_links_per_peer: int
    routes: Mapping[Address, Forward]  # an app's original destination
    services: Mapping[str, Forward]  # an upstream listener's service, by name
    local: Mapping[str, Deliver]  # a stream's service, by name (its port must match)
    plaintext: Mapping[int, Inbound]  # a connection from outside the mesh, by its port
    # SPIFFE IDs, as text: a link may carry one only with a certificate whose notBefore is
    # at least this (Unix seconds; math.inf: never)
    revoked_ids: Mapping[str, float] = field(default_factory=dict)
    revoked_serials: frozenset[str] = frozenset()  # certificate serials, as serial_key spells them
    policy: CompiledPolicy | None = None  # None: no policy in force

    @classmethod
    def compile(
        cls,
        config: MeshdConfig,
        registry: Registry,
        policy: AppliedPolicy = NO_POLICY,
        http: HttpRules = NO_HTTP_RULES,
    ) -> Bundle:
        limits = config.limits
        trust_domain = config.identity.trust_domain
        compiled = (
            CompiledPolicy.compile(policy.documents, trust_domain, policy.version)
            if policy.documents
            else None
        )
        plans = {s.name: _outbound_plan(config, http, s.name) for s in registry.services}
        services = {
            s.name: Forward(s, s.endpoints, REGISTRY_SERVICES, plans[s.name])
            for s in registry.services
        }
        return cls(
            registry_version=registry.version,
            policy_version=policy.version,
            trust_domain=trust_domain,
            max_connections=limits.max_connections,
            max_streams_per_peer=limits.max_streams_per_peer,
            max_links_per_peer=limits.max_links_per_peer,
            routes=_routes(registry.services, services),
            services=services,
            local=_local(config, http, compiled),
            plaintext=_plaintext(config, http, compiled),
            revoked_ids=_revoked_ids(registry.revoked),
            revoked_serials=frozenset(serial_key(s) for r in registry.revoked for s in r.serials),
            policy=compiled,
        )


def _local(
    config: MeshdConfig, http: HttpRules, policy: CompiledPolicy | None
) -> dict[str, Deliver]:
    """Per local service, its delivery: as it is, or (under a policy) its guard's inspection."""
    local: dict[str, Deliver] = {}
    for s in config.services:
        plan = http.inbound_plan(s.name)
        if policy is None:
            local[s.name] = Deliver(s.name, s.port, LOCAL_SERVICES, plan)
        else:
            local[s.name] = Guard(s.name, s.port, policy.for_service(s.name), plan).inspect
    return local


def _revoked_ids(entries: Iterable[Revocation]) -> dict[str, float]:
    """Each revoked ID and the notBefore a certificate carrying it must reach (the latest)."""
    starts: dict[str, float] = {}
    for r in entries:
        start = r.before or math.inf  # 0: every certificate carrying it
        for i in r.ids:
            starts[i] = max(starts.get(i, 0.0), start)
    return starts


def _routes(services: tuple[Service, ...], forwards: dict[str, Forward]) -> dict[Address, Forward]:
    """A VIP goes to any endpoint of its service; an endpoint's own address, to that endpoint."""
    routes: dict[Address, Forward] = {}
    for s in services:
        routes[(s.vip, s.port)] = forwards[s.name]
        for e in s.endpoints:
            pinned = Forward(s, (e,), REGISTRY_SERVICES, forwards[s.name].http)
            for address in e.addresses:
                routes[(address, e.port)] = pinned
    return routes


def _plaintext(
    config: MeshdConfig, http: HttpRules, policy: CompiledPolicy | None
) -> dict[int, Inbound]:
    """Per local port: refused while mTLS is strict, else delivered (the first service on it).

    Under a policy the service's mode decides (the policy's setting, or its built-in
    strict), and a permissive service's plaintext is judged by its guard.
    """
    plaintext: dict[int, Inbound] = {}
    for s in config.services:
        plan = http.inbound_plan(s.name)
        if policy is None:
            deliver = Deliver(s.name, s.port, MTLS_MODE, plan)
            plaintext.setdefault(s.port, MTLS_STRICT if config.mtls == "strict" else deliver)
            continue
        judged = policy.for_service(s.name)
        if judged.mode == "strict":
            why = f"mtls is strict for {s.name} (mtls-required)"
            plaintext.setdefault(s.port, Refuse("plaintext", why, judged.mode_rule))
        else:
            plaintext.setdefault(s.port, Guard(s.name, s.port, judged, plan).inspect)
    return plaintext


def _outbound_plan(config: MeshdConfig, http: HttpRules, service: str) -> HttpPlan | None:
    """HTTP to ``service`` is observed where ``[mesh] http`` says so, or where a rule needs it."""
    if service in http.outbound or config.http:
        return http.outbound_plan(service)
    return None
