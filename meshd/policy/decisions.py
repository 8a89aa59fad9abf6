"""What an admission point is told: forward, deliver, accept a link, or refuse, and the rule why.

Decisions are frozen values. The admitting ones are compiled into the bundle
once per destination (``meshd.policy.bundle``), so admitting a connection
allocates nothing; a refusal is built when it happens (its reason names the
peer or the destination), or is one of the constants below.

Rule ids say where the rule that decided is set, as ``<source>/<rule>``:
``config/...`` a field of meshd.toml (or a pushed config), ``registry/...``
the registry, ``builtin/...`` what no document can change. Policy documents
will add ``<document>/<kind>/<name>`` (meshctl is to keep the three source
names above from being document names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshd.identity import SpiffeId
from meshd.proxy.http.plan import HttpPlan
from meshd.registry import Endpoint, Service

if TYPE_CHECKING:
    from meshd.policy.guard import Guard
    from meshd.policy.lang.evaluate import Decision

# the rules that decide today
MAX_CONNECTIONS = "config/limits.max_connections"
MAX_STREAMS_PER_PEER = "config/limits.max_streams_per_peer"
MAX_LINKS_PER_PEER = "config/limits.max_links_per_peer"
MTLS_MODE = "config/mesh.mtls"
LOCAL_SERVICES = "config/services"  # [[services]]: a local app, by name and port
REGISTRY_SERVICES = "registry/services"  # a destination (VIP, endpoint, upstream) to a service
SOURCE_IN_CERTIFICATE = "builtin/source-in-certificate"  # a stream's claimed source
HOST_IDENTITY = "builtin/host-identity"  # a link's peer is a mesh host of our trust domain
SERVICE_IDENTITY = "builtin/service-identity"  # a dialled peer holds the destination service's
REGISTRY_REVOKED = "registry/revoked"  # a peer's certificate names a revoked ID or serial


@dataclass(frozen=True, slots=True)
class Forward:
    """Outbound: send the app's connection to one of ``endpoints`` of ``service``.

    The balancer picks among ``endpoints`` (one when the app addressed an
    endpoint directly). ``http`` is the connection's L7 work if it speaks HTTP
    (None: relayed as L4). Canary weights, timeouts and a retry budget go here.
    """

    service: Service
    endpoints: tuple[Endpoint, ...]
    rule: str
    http: HttpPlan | None = None


@dataclass(frozen=True, slots=True)
class Deliver:
    """Inbound: deliver the stream (or plaintext connection) to the local app on ``port``.

    ``http`` is the L7 work its requests need; None: relayed as L4. Under a
    policy (``meshd.policy.guard``): ``guard`` set means "look at the first
    bytes, then judge each request (HTTP) or the connection (TCP)"; ``decided``
    set means the policy allowed this peer on this port wholesale (relayed as
    L4; the decision is counted once per connection).
    """

    service: str
    port: int
    rule: str
    http: HttpPlan | None = None
    guard: Guard | None = None
    decided: Decision | None = None


@dataclass(frozen=True, slots=True)
class AcceptLink:
    """Inbound: take a link from the mesh host ``peer`` (its streams are counted as ``key``'s)."""

    peer: SpiffeId
    key: str  # str(peer)
    rule: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse it: ``code`` is short and stable (a metric label), ``reason`` for the log line."""

    code: str
    reason: str
    rule: str


CONNECTION_LIMIT = Refuse("limit", "connection limit reached", MAX_CONNECTIONS)
MTLS_STRICT = Refuse("plaintext", "mtls is strict", MTLS_MODE)

Outbound = Forward | Refuse
Inbound = Deliver | Refuse
LinkDecision = AcceptLink | Refuse
