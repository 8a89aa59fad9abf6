"""One local service under policy: the connection prejudge and the judgement of each use.

A ``Guard`` is compiled per swap (``Bundle.compile``) for every local service
while a policy is in force, around the service's ``ServicePolicy``
(``meshd.policy.lang``). ``admit`` is asked once per connection: a peer the
policy allows on this port wholesale gets a compiled L4 ``Deliver`` (nothing
more to do, nothing per request); any other gets ``inspect``, the ``Deliver``
that tells the proxy to look at the first bytes. Then ``judge`` runs §2.11's
HTTP steps on each request head (normalise, authz, rate limit) and ``tcp``
the opaque-TCP ones at accept (authz on L4 fields, connection rate limit).

Pure: the token buckets and ``now`` are passed in; nothing here reads a
clock or touches a socket. Decisions the evaluator builds at compile time
come back as they are, so an allowed clean request allocates only its
``Request`` and the result tuple.
"""

from __future__ import annotations

from meshd.policy.decisions import LOCAL_SERVICES, Deliver
from meshd.policy.lang.evaluate import Decision, Request, ServicePolicy, bad_request
from meshd.policy.lang.normalize import Rejected, normalize
from meshd.policy.lang.ratelimit import Buckets, Limited
from meshd.proxy.http.plan import HttpPlan

MAX_ADMITTED = 4096  # (source, port) prejudges kept per service and swap; then forgotten

Judged = tuple[Decision, str | None, Limited | None]  # decision, target to forward, 429


class Guard:
    """One local service's policy, as the inbound side applies it (see the module docstring)."""

    __slots__ = (
        "_admitted",
        "_rejected",
        "events",
        "http",
        "inspect",
        "policy",
        "port",
        "service",
    )

    def __init__(
        self, service: str, port: int, policy: ServicePolicy, http: HttpPlan | None
    ) -> None:
        self.service, self.port, self.policy = service, port, policy
        self.http = http  # the plan of a connection allowed wholesale (observation, if any)
        self.inspect = Deliver(service, port, LOCAL_SERVICES, None, self)
        self._admitted: dict[tuple[str | None, int], Deliver] = {}
        self._rejected: dict[str, Decision] = {}
        # the proxy's values made once per rule and swap (the shared events of allows)
        self.events: dict[str, object] = {}

    def admit(self, source: str | None, port: int) -> Deliver:
        """What to do with a connection from ``source`` (None: plaintext) on ``port``."""
        key = (source, port)
        found = self._admitted.get(key)
        if found is not None:
            return found
        if self.policy.connection(source, port) == "allow":
            decided = self.policy.evaluate(Request(self.service, port, source))
            found = Deliver(self.service, port, decided.rule, self.http, None, decided)
        else:
            found = self.inspect
        if len(self._admitted) >= MAX_ADMITTED:
            self._admitted.clear()
        self._admitted[key] = found
        return found

    def judge(
        self,
        source: str | None,
        port: int,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...],
        now: float,
        buckets: Buckets,
    ) -> Judged:
        """One HTTP request: its decision, the target to forward when normalising changed it
        (else None), and the 429 when a rate limit refuses it (authz allowed it then)."""
        normalized = normalize(method, target)
        if isinstance(normalized, Rejected):
            return self._bad_request(normalized), None, None
        request = Request(self.service, port, source, method, normalized.path, headers)
        decision = self.policy.evaluate(request)
        forward = normalized.target if normalized.target != target else None
        if decision.decision != "allow" or not self.policy.limits:
            return decision, forward, None
        limits = self.policy.rate_limits(request)
        limited = buckets.take(limits, self.service, source, now) if limits else None
        return decision, forward, limited

    def tcp(
        self, source: str | None, port: int, now: float, buckets: Buckets
    ) -> tuple[Decision, Limited | None]:
        """An opaque TCP connection, at accept: authz on its L4 fields, then connection rate."""
        request = Request(self.service, port, source)
        decision = self.policy.evaluate(request)
        if decision.decision != "allow" or not self.policy.limits:
            return decision, None
        limits = self.policy.rate_limits(request)
        return decision, buckets.take(limits, self.service, source, now) if limits else None

    def _bad_request(self, rejected: Rejected) -> Decision:
        found = self._rejected.get(rejected.reason)
        if found is None:  # a handful of reasons: each built once per swap
            found = self._rejected[rejected.reason] = bad_request(rejected)
        return found
