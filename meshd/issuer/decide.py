"""Which identities an issuer signs for a caller: a pure function over values.

An issuer signs a renewal only for identities the caller's current
certificate holds *and* the current registry still assigns to the caller's
host: its host ID, and the ``svc`` IDs of services that list that host among
their endpoints. Nothing of another trust domain, no other kind of identity
(operator, monitor, issuer), nothing for a revoked caller (by ID or serial,
while the revocation is in force). The TLS handshake has already proved the
caller's certificate current and of our bundle; the CSR's own checks
(signature, key type, a CA request) are ``meshd.pki.sign_csr``'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshd.identity import SpiffeId
from meshd.registry import Registry

LEAF_KINDS = ("host", "svc")  # what an issuer signs; operators, monitors, issuers: meshctl only


@dataclass(frozen=True)
class Caller:
    """Who asks: the SPIFFE IDs of its verified certificate and its serial (upper-case hex)."""

    ids: frozenset[SpiffeId]
    serial: str


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
) -> frozenset[SpiffeId] | Refusal:
    """The identities to sign for ``caller``, exactly ``requested``; or why not."""
    host = caller_host(caller, trust_domain)
    if isinstance(host, Refusal):
        return host
    revoked = _revocation(caller, registry, now)
    if revoked is not None:
        return revoked
    wanted = frozenset(requested)
    if not wanted:
        return Refusal("the CSR asks for no SPIFFE ID")
    for sid in sorted(wanted):
        problem = _problem(sid, caller, host, registry, trust_domain)
        if problem is not None:
            return Refusal(problem)
    return wanted


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
    serial = serial_key(caller.serial)
    for entry in registry.revoked:
        in_force = entry.until == 0 or now <= entry.until
        by_serial = any(serial_key(s) == serial for s in entry.serials)
        if in_force and (by_serial or entry.names(names, caller.serial)):
            why = "serial" if by_serial else "identity"
            return Refusal(
                f"the caller is revoked (host {entry.host}, by {why}) in registry version"
                f" {registry.version}"
            )
    return None


def serial_key(serial: str) -> str:
    """A serial as compared: ``ssl`` spells 0x0A1B "0A1B", ``format(n, "X")`` "A1B"."""
    return serial.upper().lstrip("0") or "0"


def _problem(
    sid: SpiffeId, caller: Caller, host: str, registry: Registry, trust_domain: str
) -> str | None:
    if sid.trust_domain != trust_domain:
        return f"{sid} is outside the trust domain {trust_domain}"
    if sid.kind not in LEAF_KINDS:
        return f"{sid} is not a host or service identity; an issuer signs only those"
    if sid not in caller.ids:
        return f"{sid} is not held by the caller's certificate"
    if sid.kind == "svc" and sid.name not in registry.services_of(host):
        return (
            f"{sid}: registry version {registry.version} no longer assigns service"
            f" {sid.name} to host {host}"
        )
    return None


def admitted_host(
    caller: Caller, registry: Registry, trust_domain: str, now: float
) -> str | Refusal:
    """The host whose issue session ``caller`` may open, or why it gets none (not exactly one
    host ID, revoked): asked before it takes a slot, so that a revoked host takes none."""
    host = caller_host(caller, trust_domain)
    if isinstance(host, Refusal):
        return host
    return _revocation(caller, registry, now) or host
