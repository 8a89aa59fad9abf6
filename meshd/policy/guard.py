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
clock or touches a socket. Where no rule of the service looks at headers,
a judgement depends only on (source, port, method, target), and is
remembered (bounded: short targets, at most ``MAX_JUDGED``, forgotten all at
once when full): a keep-alive client asking for the same targets again
costs a dictionary lookup, not a normalisation and an evaluation.
"""

from __future__ import annotations

from meshd.policy.decisions import LOCAL_SERVICES, Deliver
from meshd.policy.lang.evaluate import Decision, Request, ServicePolicy, bad_request
from meshd.policy.lang.model import RateLimit
from meshd.policy.lang.normalize import Rejected, normalize
from meshd.policy.lang.ratelimit import Buckets, Limited
from meshd.proxy.http.plan import HttpPlan

MAX_ADMITTED = 4096  # (source, port) prejudges kept per service and swap; then forgotten
MAX_JUDGED = 4096  # judgements kept per service and swap; then forgotten
MAX_JUDGED_TARGET = 256  # longer targets are judged every time (a peer could fill memory)

Judged = tuple[Decision, str | None, Limited | None]  # decision, target to forward, 429
Remembered = tuple[Decision, str | None, tuple[RateLimit, ...]]  # ..., the limits to take


class Guard:
    """One local service's policy, as the inbound side applies it (see the module docstring)."""

    __slots__ = (
        "_admitted",
        "_judged",
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
        headers = [m.headers for m in (*policy.denies, *policy.audits, *policy.allows)]
        headers += [m.headers for m, _ in policy.limits]
        # None: some rule looks at headers, so a judgement cannot be remembered by target
        self._judged: dict[tuple[str | None, int, str, str], Remembered] | None = (
            {} if all(h is None for h in headers) else None
        )
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
        judged = self._judged
        if judged is None or len(target) > MAX_JUDGED_TARGET:
            decision, forward, limits = self._judge(source, port, method, target, headers)
        else:
            key = (source, port, method, target)
            found = judged.get(key)
            if found is None:
                if len(judged) >= MAX_JUDGED:
                    judged.clear()
                found = judged[key] = self._judge(source, port, method, target, headers)
            decision, forward, limits = found
        if not limits:
            return decision, forward, None
        return decision, forward, buckets.take(limits, self.service, source, now)

    def _judge(
        self,
        source: str | None,
        port: int,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...],
    ) -> Remembered:
        """Normalise and evaluate: the decision, the target to forward, the limits to take."""
        normalized = normalize(method, target)
        if isinstance(normalized, Rejected):
            return self._bad_request(normalized), None, ()
        request = Request(self.service, port, source, method, normalized.path, headers)
        decision = self.policy.evaluate(request)
        forward = normalized.target if normalized.target != target else None
        if decision.decision != "allow" or not self.policy.limits:
            return decision, forward, ()
        return decision, forward, self.policy.rate_limits(request)

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
