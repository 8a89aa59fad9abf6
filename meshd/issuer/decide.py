"""Which identities an issuer signs for a caller, and from when: a pure function over values.

An issuer signs a renewal only for identities the caller's current
certificate holds *and* the current registry still assigns to the caller's
host: its host ID (which the CSR must ask for), and the ``svc`` IDs of
services that list that host among their endpoints. A service the registry
no longer assigns (the caller's registry may be older than the issuer's) is
left out of the certificate rather than refusing it all: the caller keeps
its host ID and the rest. Nothing of another trust domain, no other kind of
identity (operator, monitor, issuer), nothing for a revoked caller (by
serial, or by ID for a certificate started before the revocation's
``before``, while the revocation is in force). The leaf starts no earlier
than the registry's ``not_before_floor`` for it, so that a revocation by ID
never names it. The TLS handshake has already proved the caller's
certificate current and of our bundle; the CSR's own checks (signature, key
type, a CA request) are ``meshd.pki.sign_csr``'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshd.identity import SpiffeId, make_id
from meshd.registry import Registry

LEAF_KINDS = ("host", "svc")  # what an issuer signs; operators, monitors, issuers: meshctl only


@dataclass(frozen=True)
class Caller:
    """Who asks: its verified certificate's SPIFFE IDs, serial (upper-case hex) and notBefore
    (Unix seconds)."""

    ids: frozenset[SpiffeId]
    serial: str
    not_before: float


@dataclass(frozen=True)
class Grant:
    """What to sign: these identities, starting no earlier than ``not_before`` (Unix seconds);
    ``dropped`` says which asked-for ones were left out, and why."""

    ids: frozenset[SpiffeId]
    not_before: int = 0
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """Why an issuer does not sign: one sentence, naming the identity at fault."""

    reason: str


def grant(
    caller: Caller,
    requested: Iterable[SpiffeId],
    registry: Registry,
    trust_domain: str,
    now: float,
) -> Grant | Refusal:
    """The identities to sign for ``caller``: ``requested`` less the services its host lost."""
    host = caller_host(caller, trust_domain)
    if isinstance(host, Refusal):
        return host
    revoked = _revocation(caller, registry, now)
    if revoked is not None:
        return revoked
    wanted = frozenset(requested)
    for sid in sorted(wanted):
        problem = _problem(sid, caller, trust_domain)
        if problem is not None:
            return Refusal(problem)
    host_id = make_id(trust_domain, "host", host)
    if host_id not in wanted:
        return Refusal(f"the CSR does not ask for the caller's host identity {host_id}")
    lost = sorted(s for s in wanted if s.kind == "svc" and s.name not in registry.services_of(host))
    ids = wanted.difference(lost)
    floor = registry.not_before_floor(str(i) for i in ids)
    return Grant(ids, floor, tuple(_unassigned(sid, host, registry) for sid in lost))


def caller_host(caller: Caller, trust_domain: str) -> str | Refusal:
    """The host the caller's certificate names: exactly one host ID of our trust domain."""
    hosts = sorted(
        i.name for i in caller.ids if i.kind == "host" and i.trust_domain == trust_domain
    )
    if len(hosts) != 1:
        held = "no host identity" if not hosts else f"{len(hosts)} host identities"
        return Refusal(f"the caller's certificate holds {held} of {trust_domain}")
    return hosts[0]


def _revocation(caller: Caller, registry: Registry, now: float) -> Refusal | None:
    names = [str(i) for i in caller.ids]
    for entry in registry.revoked:
        if entry.until != 0 and now > entry.until:
            continue  # no longer in force: what it names has expired
        if entry.by_serial(caller.serial):
            why = "serial"
        elif entry.by_id(names, caller.not_before):
            why = "identity"
        else:
            continue
        return Refusal(
            f"the caller is revoked (host {entry.host}, by {why}) in registry version"
            f" {registry.version}"
        )
    return None


def _problem(sid: SpiffeId, caller: Caller, trust_domain: str) -> str | None:
    if sid.trust_domain != trust_domain:
        return f"{sid} is outside the trust domain {trust_domain}"
    if sid.kind not in LEAF_KINDS:
        return f"{sid} is not a host or service identity; an issuer signs only those"
    if sid not in caller.ids:
        return f"{sid} is not held by the caller's certificate"
    return None


def _unassigned(sid: SpiffeId, host: str, registry: Registry) -> str:
    return (
        f"{sid}: registry version {registry.version} no longer assigns service"
        f" {sid.name} to host {host}"
    )


def admitted_host(
    caller: Caller, registry: Registry, trust_domain: str, now: float
) -> str | Refusal:
    """The host whose issue session ``caller`` may open, or why it gets none (not exactly one
    host ID, revoked): asked before it takes a slot, so that a revoked host takes none."""
    host = caller_host(caller, trust_domain)
    if isinstance(host, Refusal):
        return host
    return _revocation(caller, registry, now) or host
