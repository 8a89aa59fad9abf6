"""Telemetry events and the bounded in-memory bus they travel on.

The proxy publishes past-tense facts; metrics, access logs, traces and the
``top`` feed are independent subscribers. Each subscriber has a bounded
queue: when it falls behind, new events are dropped for it and counted, and
traffic is never slowed. Publishing is a few appends, cheap enough for the
relay's hot path; consumers drain in their own time. An admission decision
(``meshd.policy``) travels in the event that reports what came of it:
``ConnectionOpened`` and ``ConnectionRefused`` carry the rule that decided,
so admitting a connection publishes nothing more than it did before.

Events are not frozen dataclasses, though nothing changes them once
published: a frozen dataclass's ``__init__`` costs four times as much, and a
``RequestCompleted`` is made for every request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from meshd.telemetry.live import OpenConnections
from meshd.tls.failures import HandshakeFailure

# direction of a connection or request as seen by this meshd
OUTBOUND = "outbound"
INBOUND = "inbound"


@dataclass(slots=True)
class ConnectionOpened:
    direction: str
    source: str
    destination: str
    rule: str = ""  # the rule that admitted it (meshd.policy.decisions): the decision, as a fact


@dataclass(slots=True)
class ConnectionClosed:
    direction: str
    source: str
    destination: str
    bytes_sent: int  # towards the destination
    bytes_received: int  # from the destination
    duration: float
    error: str = ""  # empty when closed cleanly
    # of bytes_sent/bytes_received, what the byte counters took in while it was open
    # (``meshd.telemetry.live``): the metrics consumer adds the rest
    counted_sent: int = 0
    counted_received: int = 0


@dataclass(slots=True)
class RequestCompleted:
    direction: str
    source: str
    destination: str
    method: str
    status: int  # 0 when no response arrived
    duration: float


@dataclass(slots=True)
class RequestObserved(RequestCompleted):
    """A ``RequestCompleted`` with what the tap and the access log show: published instead
    of it only while someone listens (``meshd.telemetry.tap.Listening``)."""

    path: str = ""  # the target without its query, as sent (raw: consumers escape it)
    request_id: str = ""  # its x-request-id header, if the chunk that began it had one
    bytes_in: int = 0  # request bytes (head and body) seen from the client
    bytes_out: int = 0  # response bytes (head and body) relayed to the client


@dataclass(slots=True)
class AuthzDecided:
    """A policy decision on an inbound request or connection (``meshd.policy.guard``).

    ``decision``: "allow", "deny", "reset" or "bad-request"; ``method`` ""
    for opaque TCP (one decision per connection). An allowed request with no
    would-deny is published as one shared event per rule, without request
    details (``source`` None, ``path`` ""): allows are counted, not logged.
    """

    service: str
    decision: str
    rule: str
    would_deny: tuple[str, ...] = ()
    source: str | None = None  # the peer's verified SPIFFE ID; None: plaintext (or untold)
    port: int = 0
    method: str = ""
    path: str = ""  # normalised (a rejected target: as sent, cleaned for a log line)
    request_id: str = ""


TALLY_REPUBLISH = 1024  # a tally is published again every so many counts (see AuthzTally)


@dataclass(slots=True)
class AuthzTally:
    """Allowed requests with no would-deny, by one rule: one tally per rule and guard,
    counted in place, so such a request costs an increment and builds nothing.

    The proxy adds to ``count`` and publishes the tally only when ``count`` was 0 (the
    metrics consumer took the last count, or none was made) and every ``TALLY_REPUBLISH``
    counts (a tally dropped from a full queue is not lost for good). The metrics consumer
    takes ``count`` and sets it back to 0: a tally queued twice counts once, and only that
    one consumer may take it. Allows are not logged (``AuthzDecided``), so nothing is lost.
    """

    service: str
    rule: str
    count: int = 0


@dataclass(slots=True)
class RateLimited:
    """A request (429) or an opaque TCP connection (reset) refused by a ``[[rate_limit]]``."""

    service: str
    rule: str
    retry_after: int
    source: str | None
    port: int
    method: str = ""  # "": a TCP connection
    path: str = ""
    request_id: str = ""


@dataclass(slots=True)
class HandshakeFailed:
    listener: str  # "mesh", "admin", "link" (outbound link to a peer)
    peer: str  # address
    reason: HandshakeFailure  # the one vocabulary of every port (meshd.tls.failures)


@dataclass(slots=True)
class ConnectionRefused:
    listener: str  # "outbound", "inbound", "mesh", "admin"
    peer: str
    reason: str  # short, stable, used as a metric label: "plaintext", "wrong_identity", ...
    rule: str = ""  # the rule that refused it (meshd.policy.decisions), where one decided


@dataclass(slots=True)
class IssuerAnswered:
    """An issuer answered a ``POST /issue`` (``meshd.issuer``)."""

    peer: str
    result: str  # "signed", "refused" or "unavailable" (this host holds no issuer CA)


@dataclass(slots=True)
class CertificateRenewed:
    """meshd swapped in a certificate of its own: links made with the old one retire."""

    not_after: float  # of the new certificate, Unix seconds
    layer: str = "renewed"  # where it came from: "renewed" (meshd.renewal), "pushed", "trust"


@dataclass(slots=True)
class RenewalFailed:
    """A renewal round in which no issuer signed: meshd keeps its certificate and backs off."""

    reason: str


@dataclass(slots=True)
class LinkRetired:
    """A link stopped taking streams before its end (``meshd.proxy.link``), or was torn down."""

    reason: str  # "renewed", "expiring", "revoked", "ids", "goaway" (the peer asked)


Event = (
    ConnectionOpened
    | ConnectionClosed
    | RequestCompleted
    | RequestObserved
    | HandshakeFailed
    | ConnectionRefused
    | IssuerAnswered
    | CertificateRenewed
    | RenewalFailed
    | LinkRetired
    | AuthzDecided
    | AuthzTally
    | RateLimited
)


class Subscription:
    """One consumer's bounded queue; ``EventBus.publish`` fills it or counts the drop."""

    __slots__ = ("capacity", "dropped", "queue")

    def __init__(self, capacity: int) -> None:
        self.queue: deque[Event] = deque()
        self.dropped = 0
        self.capacity = capacity


class EventBus:
    """Fan-out of events to subscriptions; never blocks the publisher."""

    def __init__(self) -> None:
        self._subscriptions: tuple[Subscription, ...] = ()
        self.published = 0
        # the open connections whose bytes the metrics take in before they close
        self.open = OpenConnections()

    def subscribe(self, capacity: int = 65536) -> Subscription:
        sub = Subscription(capacity)
        self._subscriptions = (*self._subscriptions, sub)
        return sub

    def publish(self, event: Event) -> None:
        self.published += 1
        for sub in self._subscriptions:
            if len(sub.queue) < sub.capacity:
                sub.queue.append(event)
            else:
                sub.dropped += 1
