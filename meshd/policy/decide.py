"""The admission decisions: pure functions over the bundle, one per admission point.

Each takes the bundle in force and what the rules count (connections in use,
the peer's streams or links), passed in as plain values, and returns a
decision (``meshd.policy.decisions``); the caller carries it out, counts,
logs and publishes it. The checks run in the order meshd has always made
them, which decides the code a peer sees when several rules would refuse.
Admitting a connection or a stream returns a value compiled into the
bundle: it allocates nothing (a refusal, or a link, builds its decision).
Under a policy, the local service's ``Guard`` (``meshd.policy.guard``) has
the last word on a stream or a plaintext connection: a delivery as L4 when
the policy allows this peer on this port wholesale (remembered per peer and
port), else its inspection (the first bytes say whether to judge requests
or the connection).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Set

from meshd.identity import SpiffeId
from meshd.netfacts import fmt
from meshd.policy.bundle import Address, Bundle
from meshd.policy.decisions import (
    CONNECTION_LIMIT,
    HOST_IDENTITY,
    LOCAL_SERVICES,
    MAX_LINKS_PER_PEER,
    MAX_STREAMS_PER_PEER,
    REGISTRY_REVOKED,
    REGISTRY_SERVICES,
    SOURCE_IN_CERTIFICATE,
    AcceptLink,
    Inbound,
    LinkDecision,
    Outbound,
    Refuse,
)
from meshd.proxy.frames import OpenRequest
from meshd.registry import serial_key


def outbound(bundle: Bundle, active: int, upstream: str | None, dst: Address | None) -> Outbound:
    """An app's connection, before an endpoint is picked.

    It came to an upstream listener of service ``upstream``, or was redirected
    on its way to ``dst`` (None: it was not). ``active``: connections relayed now.
    """
    if active >= bundle.max_connections:
        return CONNECTION_LIMIT
    if upstream is not None:
        forward = bundle.services.get(upstream)
    else:
        forward = bundle.routes.get(dst) if dst is not None else None
    if forward is not None:
        return forward
    what = f"{fmt(dst)} is not a mesh service" if dst is not None else "it was not redirected"
    return Refuse("unknown_destination", what, REGISTRY_SERVICES)


def stream(
    bundle: Bundle,
    request: OpenRequest,
    peer: str,
    peer_names: Set[str],
    peer_streams: int,
    active: int,
) -> Inbound:
    """A stream the mesh host ``peer`` OPENed over its link.

    ``peer_names``: the identities its certificate holds; ``peer_streams``: the
    streams it has relayed here now; ``active``: connections relayed now.
    """
    # compared as strings: the peer's names were parsed and verified once, at the handshake
    if request.source not in peer_names:
        why = f"peer does not hold {request.source}"
        return Refuse("source_not_in_certificate", why, SOURCE_IN_CERTIFICATE)
    deliver = bundle.local.get(request.service)
    if deliver is None or deliver.port != request.port:
        why = f"no local service {request.service} on port {request.port}"
        return Refuse("unknown_service", why, LOCAL_SERVICES)
    if peer_streams >= bundle.max_streams_per_peer:
        why = f"{peer} already holds {bundle.max_streams_per_peer} streams here"
        return Refuse("peer_limit", why, MAX_STREAMS_PER_PEER)
    if active >= bundle.max_connections:
        return CONNECTION_LIMIT
    guard = deliver.guard
    return deliver if guard is None else guard.admit(request.source, request.port)


def plaintext(bundle: Bundle, dst: Address | None, active: int) -> Inbound:
    """A connection from outside the mesh, redirected on its way to ``dst``."""
    decision = bundle.plaintext.get(dst[1]) if dst is not None else None
    if decision is None:
        return Refuse("plaintext", f"{fmt(dst)} is no local service", LOCAL_SERVICES)
    if isinstance(decision, Refuse):
        return decision
    if active >= bundle.max_connections:
        return CONNECTION_LIMIT
    guard = decision.guard
    return decision if guard is None else guard.admit(None, decision.port)


def link(
    bundle: Bundle,
    peer_ids: Set[SpiffeId],
    links: Mapping[str, int],
    serial: str,
    not_before: float,
) -> LinkDecision:
    """A link whose TLS handshake is done, from a peer holding ``peer_ids``.

    ``links``: the links each mesh host holds here now, by its identity;
    ``serial``: the peer certificate's serial (as ``ssl`` spells it);
    ``not_before``: when the peer certificate started (Unix seconds).
    """
    refusal = revoked(bundle, [str(i) for i in peer_ids], serial, not_before)
    if refusal is not None:
        return refusal
    hosts = [i for i in peer_ids if i.kind == "host" and i.trust_domain == bundle.trust_domain]
    if not hosts:
        return Refuse("wrong_identity", "no host identity of our trust domain", HOST_IDENTITY)
    key = str(hosts[0])
    if links.get(key, 0) >= bundle.max_links_per_peer:
        return Refuse("too_many_links", f"{key} already holds its links", MAX_LINKS_PER_PEER)
    return AcceptLink(hosts[0], key, HOST_IDENTITY)


def revoked(
    bundle: Bundle, peer_names: Iterable[str], serial: str, not_before: float
) -> Refuse | None:
    """Why a peer certificate with these SPIFFE IDs (as text), serial and notBefore (Unix
    seconds) is revoked, or None.

    Asked once per link (accepted or dialled) and for every link at a swap of the
    bundle: never per stream. A revoked ID spares a certificate signed after its
    host name joined again (``Revocation.before``).
    """
    if serial and serial_key(serial) in bundle.revoked_serials:
        return Refuse("revoked", f"certificate serial {serial} is revoked", REGISTRY_REVOKED)
    for name in peer_names:
        if not_before < bundle.revoked_ids.get(name, -math.inf):
            return Refuse("revoked", f"{name} is revoked", REGISTRY_REVOKED)
    return None
