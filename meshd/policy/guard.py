"""One local service under policy: the connection prejudge and the judgement of each use.

A ``Guard`` is compiled per swap (``Bundle.compile``) for every local service
while a policy is in force, around the service's ``ServicePolicy``
(``meshd.policy.lang``). ``admit`` is asked once per connection: a peer the
policy allows on this port wholesale gets a ``Deliver`` with that decision
(no authz or rate limit to apply to it); any other gets ``inspect``, the ``Deliver``
that tells the proxy to look at the first bytes. Then ``judge`` runs §2.11's
HTTP steps on each request head (normalise, authz, rate limit) and ``tcp``
the opaque-TCP ones at accept (authz on L4 fields, connection rate limit).
A peer allowed wholesale is no exception to §2.3 (every HTTP request of a
service under policy is normalised): its ``Deliver`` carries the guard too,
with its decision, so the proxy still looks at the first bytes, and its
requests go through ``normalise`` alone (no evaluation, no rate limit).

Pure: the token buckets and ``now`` are passed in; nothing here reads a
clock or touches a socket. Where no rule that can match a peer on a port
(its denies, audits, allows and rate limits, as the evaluator's per-peer
view has them) looks at headers, a judgement of that peer's request depends
only on its method and target, and is remembered per (source, port)
(bounded: short targets, at most ``MAX_JUDGED`` over every peer, forgotten
all at once when full; a swap compiles a new guard, so nothing outlives
its policy): a keep-alive client asking for the same targets again costs a
dictionary lookup, not a normalisation and an evaluation, even when the
service has header rules for other peers. Where that is so, the proxy also
keeps, per peer and port, the request lines it let go on as they were
(``lines``, ``learn``; bounded the same way): the next request with the same
line, on any of that peer's connections, costs less than a ``RequestHead``.
"""

from __future__ import annotations

from typing import Any

from meshd.policy.decisions import LOCAL_SERVICES, Deliver
from meshd.policy.lang.evaluate import Decision, Request, ServicePolicy, bad_request
from meshd.policy.lang.model import RateLimit
from meshd.policy.lang.normalize import Rejected, normalize, unchanged
from meshd.policy.lang.ratelimit import Buckets, Limited, Take
from meshd.proxy.http.plan import HttpPlan, RequestHead

MAX_ADMITTED = 4096  # (source, port) prejudges kept per service and swap; then forgotten
MAX_JUDGED = 4096  # judgements kept per service and swap, over every peer; then forgotten
MAX_PEERS = 4096  # (source, port) memos kept per service and swap; then forgotten
MAX_TAKES = 256  # distinct sets of rate limits kept per service and swap; then forgotten
MAX_JUDGED_TARGET = 256  # longer targets are judged every time (a peer could fill memory)
MAX_KNOWN = 4096  # request lines the proxy knows per service and swap, over every peer
MAX_KNOWN_LINE = 320  # bytes of a request line it may know (method, target, version)

Judged = tuple[Decision, str | None, Limited | None]  # decision, target to forward, 429
Remembered = tuple[Decision, str | None, Take | None]  # ..., the tokens to take (None: none)
Memo = dict[tuple[str, str], Remembered]  # one peer on one port: by (method, target)
Known = dict[bytes, tuple[Take | None, Any]]  # request lines the proxy knows, its values


class Guard:
    """One local service's policy, as the inbound side applies it (see the module docstring)."""

    __slots__ = (
        "_admitted",
        "_judged",
        "_known",
        "_lines",
        "_memos",
        "_rejected",
        "_takes",
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
        # per (source, port): its judgements by (method, target), or None where a rule that
        # can match that peer on that port reads headers (then every request is judged)
        self._memos: dict[tuple[str | None, int], Memo | None] = {}
        self._judged = 0  # judgements remembered over every memo
        # the rate limits a judgement takes from, by their ids: shared buckets resolved once
        self._takes: dict[tuple[str, ...], Take] = {}
        # the proxy's values made once per rule and swap (the tallies of allows)
        self.events: dict[str, object] = {}
        # the request lines the proxy knows per (source, port) (see lines), and how many
        self._lines: dict[tuple[str | None, int], Known] = {}
        self._known = 0

    def admit(self, source: str | None, port: int) -> Deliver:
        """What to do with a connection from ``source`` (None: plaintext) on ``port``."""
        key = (source, port)
        found = self._admitted.get(key)
        if found is not None:
            return found
        if self.policy.connection(source, port) == "allow":
            decided = self.policy.evaluate(Request(self.service, port, source))
            # still this guard: its HTTP requests are normalised (§2.3), nothing more
            found = Deliver(self.service, port, decided.rule, self.http, self, decided)
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
        head: RequestHead,
        now: float,
        buckets: Buckets,
    ) -> Judged:
        """One HTTP request: its decision, the target to forward when normalising changed it
        (else None), and the 429 when a rate limit refuses it (authz allowed it then).

        The head's headers are read only where a rule that can match this peer reads one.
        """
        decision, forward, take = self.judgement(source, port, head)
        if take is None:
            return decision, forward, None
        return decision, forward, take(buckets, source, now)

    def by_target(self, source: str | None, port: int) -> bool:
        """Does a judgement of this peer's requests on this port depend on their method
        and target alone (no rule that can match it reads a header)?"""
        return self._memo(source, port) is not None

    def judgement(self, source: str | None, port: int, head: RequestHead) -> Remembered:
        """``judge`` before the rate limits: the decision, the target to forward, and the
        tokens the request takes when its decision is allow (None: none)."""
        memo = self._memos.get((source, port))
        if memo is None:
            memo = self._memo(source, port)
        method, target = head.method, head.target
        if memo is None:
            return self._judge(source, port, method, target, head.headers)
        if len(target) > MAX_JUDGED_TARGET:
            return self._judge(source, port, method, target, ())
        key = (method, target)
        found = memo.get(key)
        if found is None:
            found = self._judge(source, port, method, target, ())
            if self._judged >= MAX_JUDGED:
                self._forget()
                memo = self._memo(source, port)
            if memo is not None:  # always: the peer's view did not change
                memo[key] = found
                self._judged += 1
        return found

    def _memo(self, source: str | None, port: int) -> Memo | None:
        """The memo of this peer on this port, made on first use; None: not remembered."""
        memos = self._memos
        key = (source, port)
        if key in memos:
            return memos[key]
        if len(memos) >= MAX_PEERS:
            self._forget()
        memo: Memo | None = None if self.policy.reads_headers(source, port) else {}
        memos[key] = memo
        return memo

    def lines(self, source: str | None, port: int) -> Known | None:
        """The request lines the proxy knows for this peer on this port (``learn``), shared
        by its connections; None where its judgements read headers (a line says too little).

        The proxy keeps, per line it let go on as it was, what it needs to do that again
        without a judgement (``meshd.proxy.enforce.RequestJudge.by_line``). Forgetting
        empties the dictionaries in place, so a connection holding one reads nothing stale.
        """
        key = (source, port)
        found = self._lines.get(key)
        if found is None:
            if not self.by_target(source, port):
                return None
            if len(self._lines) >= MAX_PEERS:
                self._forget_lines()
            found = self._lines[key] = {}
        return found

    def learn(
        self, source: str | None, port: int, line: bytes, entry: tuple[Take | None, Any]
    ) -> Known | None:
        """Know ``line`` for this peer on this port from now on (at most ``MAX_KNOWN`` lines
        of at most ``MAX_KNOWN_LINE`` bytes over every peer; then all are forgotten and
        learnt again); returns the peer's lines, as ``lines`` does."""
        known = self.lines(source, port)
        if known is None or len(line) > MAX_KNOWN_LINE or line in known:
            return known
        if self._known >= MAX_KNOWN:
            self._forget_lines()
            known = self.lines(source, port)
            assert known is not None  # the peer's view did not change
        known[line] = entry
        self._known += 1
        return known

    def _forget_lines(self) -> None:
        for known in self._lines.values():
            known.clear()
        self._lines.clear()
        self._known = 0

    def remembered(self) -> int:
        """How many judgements are remembered, over every peer (for tests and stats)."""
        return sum(len(m) for m in self._memos.values() if m is not None)

    def _forget(self) -> None:
        self._memos.clear()
        self._judged = 0

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
            return self._bad_request(normalized), None, None
        request = Request(self.service, port, source, method, normalized.path, headers)
        decision = self.policy.evaluate(request)
        forward = normalized.target if normalized.target != target else None
        if decision.decision != "allow" or not self.policy.limits:
            return decision, forward, None
        return decision, forward, self._take(self.policy.rate_limits(request))

    def _take(self, limits: tuple[RateLimit, ...]) -> Take | None:
        """The one ``Take`` of these limits in this guard (None: no limit applies)."""
        if not limits:
            return None
        key = tuple(limit.id for limit in limits)
        take = self._takes.get(key)
        if take is None:
            if len(self._takes) >= MAX_TAKES:
                self._takes.clear()
            take = self._takes[key] = Take(limits, self.service)
        return take

    def normalise(self, method: str, target: str) -> Decision | str | None:
        """§2.3 alone, for a peer allowed wholesale: None (forward the request as it came),
        the normalised target to forward instead, or the 400 of a rejected one."""
        if unchanged(method, target):  # the common case: nothing allocated
            return None
        normalized = normalize(method, target)
        if isinstance(normalized, Rejected):
            return self._bad_request(normalized)
        return normalized.target if normalized.target != target else None

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
