"""Which endpoint an outbound connection goes to: the balancer, pure (``now`` is passed in).

Least outstanding streams among the endpoints not failed recently; ties go
round robin, so idle endpoints share the load; failed endpoints only as a last
resort. An endpoint whose link could not be dialled is held off for a back-off
that doubles with each failure in a row (``FAIL_BACKOFF``), and a connection
tries at most ``MAX_ATTEMPTS`` endpoints. Which endpoints are candidates is the
decision's (``meshd.policy.decisions.Forward``); canary weights will come in
with it, outlier ejection next to the back-off here.
"""

from __future__ import annotations

from collections.abc import Sequence, Set

from meshd.registry import Endpoint

Key = tuple[str, int]  # where an endpoint's meshd listens for links (Endpoint.link_key)

FAIL_BACKOFF = (1.0, 30.0)  # seconds: first and longest pause after an endpoint failed
MAX_ATTEMPTS = 3
NOTHING_TRIED: frozenset[Key] = frozenset()
_HEALTHY = (0.0, 0.0)  # failed until, last back-off: never failed


class Balancer:
    """Endpoint health and load, and the choice made from them."""

    __slots__ = ("_turn", "failed_until", "outstanding")

    def __init__(self) -> None:
        self.failed_until: dict[Key, tuple[float, float]] = {}  # until when, and the back-off
        self.outstanding: dict[Key, int] = {}  # open streams per endpoint
        self._turn: dict[str, int] = {}  # service name -> round-robin position

    def pick(
        self, service: str, endpoints: Sequence[Endpoint], avoid: Set[Key], now: float
    ) -> Endpoint | None:
        """The healthy endpoint with the fewest open streams (failed ones as a last resort)."""
        if len(endpoints) == 1 and not avoid:  # the common case, without the bookkeeping
            return endpoints[0]
        candidates = [e for e in endpoints if e.link_key not in avoid]
        healthy = [e for e in candidates if self.failed_until.get(e.link_key, _HEALTHY)[0] <= now]
        pool = healthy or candidates
        if not pool:
            return None
        turn = self._turn[service] = self._turn.get(service, -1) + 1
        start = turn % len(pool)
        rotated = pool[start:] + pool[:start]
        return min(rotated, key=lambda e: self.outstanding.get(e.link_key, 0))

    def retry(
        self, service: str, endpoints: Sequence[Endpoint], tried: Set[Key], now: float
    ) -> Endpoint | None:
        """Another endpoint for a connection whose endpoint failed; None when it had its tries."""
        endpoint = self.pick(service, endpoints, tried, now)
        return endpoint if len(tried) < MAX_ATTEMPTS else None

    def opened(self, key: Key) -> None:
        self.outstanding[key] = self.outstanding.get(key, 0) + 1

    def closed(self, key: Key) -> None:
        self.outstanding[key] = max(0, self.outstanding.get(key, 1) - 1)

    def failed(self, key: Key, now: float) -> float:
        """Hold the endpoint off: for how long (the back-off doubles with each failure in a row)."""
        previous = self.failed_until.get(key, _HEALTHY)[1]
        backoff = min(FAIL_BACKOFF[1], previous * 2) if previous else FAIL_BACKOFF[0]
        self.failed_until[key] = (now + backoff, backoff)
        return backoff

    def recovered(self, key: Key) -> None:
        """Its link is up: no longer held off, and the next failure starts the back-off anew."""
        self.failed_until.pop(key, None)
