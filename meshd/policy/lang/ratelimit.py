"""Token buckets for ``[[rate_limit]]`` (§2.7): continuous refill, shared or per source.

``Buckets`` is the only mutable state of the engine and still pure: the
caller passes ``now`` (monotonic seconds). A bucket is stored as the tokens it
held at the time it was last taken from; its content at ``now`` is computed,
so an idle bucket costs nothing. Per-source buckets are bounded per (rule,
service): past ``max_sources`` the least recently used one is dropped (it
comes back full, which errs on admitting, never on refusing a stranger).

``Take`` is the hot path's view of a set of limits: their shared buckets
resolved once (per swap, and again if the ``Buckets`` are replaced), so
taking a token is a refill, a compare and a subtraction on a ``Bucket``'s
attributes, with the same arithmetic as ``Buckets.take``. Per-source
limits go through ``Buckets.take`` (their buckets are bounded there).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from meshd.policy.lang.model import UNAUTHENTICATED, RateLimit

MAX_SOURCES = 10_000  # per-source buckets kept per (rule, service)


@dataclass(frozen=True, slots=True)
class Limited:
    """A 429: ``rule`` is the smallest id among the empty buckets, ``retry_after`` seconds."""

    rule: str
    retry_after: int


class Bucket:
    """One bucket: the tokens it held when last taken from (``at``), and its refill."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, tokens: float, at: float, rate: float, burst: float) -> None:
        self.tokens = tokens
        self.at = at
        self.rate = rate  # tokens per second
        self.burst = burst


def _fresh(limit: RateLimit, tokens: float, at: float) -> Bucket:
    return Bucket(tokens, at, limit.rate, float(limit.burst))


class Buckets:
    """Every bucket of one meshd, keyed by (rule, service) and, per source, by peer."""

    __slots__ = ("_per_source", "_shared", "max_sources")

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self._shared: dict[tuple[str, str], Bucket] = {}
        self._per_source: dict[tuple[str, str], OrderedDict[str, Bucket]] = {}
        self.max_sources = max_sources

    def take(
        self, limits: Sequence[RateLimit], service: str, source: str | None, now: float
    ) -> Limited | None:
        """One token from each of ``limits``' buckets, or none and the 429 to answer."""
        if not limits:
            return None
        peer = UNAUTHENTICATED if source is None else source
        held = [(limit, self._bucket(limit, service, peer)) for limit in limits]
        empty = [(limit, tokens) for limit, tokens in _levels(held, now) if tokens < 1.0]
        if empty:
            limit, tokens = min(empty, key=lambda e: e[0].id)
            return _retry_after(limit, tokens)
        for limit, bucket in held:
            self._store(limit, service, peer, bucket, _level(limit, bucket, now) - 1.0, now)
        return None

    def retain(self, rule_ids: Collection[str]) -> None:
        """Forget the buckets of rules no longer in force (call it when a policy is swapped;
        a rule that stays keeps its tokens, so a push does not refill every bucket)."""
        for table in (self._shared, self._per_source):
            for key in [k for k in table if k[0] not in rule_ids]:
                del table[key]

    def sources(self, limit: RateLimit, service: str) -> int:
        """How many per-source buckets ``limit`` keeps for ``service`` (for tests and stats)."""
        return len(self._per_source.get((limit.id, service), ()))

    def shared(self, limit: RateLimit, service: str) -> Bucket:
        """``limit``'s shared bucket for ``service``, made full if never taken from (a full
        bucket stays full until taken from: the same as none)."""
        key = (limit.id, service)
        bucket = self._shared.get(key)
        if bucket is None:
            bucket = self._shared[key] = _fresh(limit, float(limit.burst), 0.0)
        return bucket

    def _bucket(self, limit: RateLimit, service: str, peer: str) -> Bucket | None:
        key = (limit.id, service)
        if limit.bucket == "shared":
            return self._shared.get(key)
        peers = self._per_source.get(key)
        if peers is None:
            return None
        bucket = peers.get(peer)
        if bucket is not None:  # a limited peer counts as recent: it keeps its empty bucket
            peers.move_to_end(peer)
        return bucket

    def _store(
        self,
        limit: RateLimit,
        service: str,
        peer: str,
        bucket: Bucket | None,
        tokens: float,
        now: float,
    ) -> None:
        if bucket is not None:
            bucket.tokens, bucket.at = tokens, now
            return
        fresh = _fresh(limit, tokens, now)
        if limit.bucket == "shared":
            self._shared[(limit.id, service)] = fresh
            return
        peers = self._per_source.setdefault((limit.id, service), OrderedDict())
        peers[peer] = fresh
        while len(peers) > self.max_sources:
            peers.popitem(last=False)


def _level(limit: RateLimit, bucket: Bucket | None, now: float) -> float:
    """The tokens a bucket holds at ``now``; a bucket never taken from starts full."""
    if bucket is None:
        return float(limit.burst)
    elapsed = max(0.0, now - bucket.at)  # a clock that steps back refills nothing
    return min(float(limit.burst), bucket.tokens + elapsed * limit.rate)


def _levels(
    held: Sequence[tuple[RateLimit, Bucket | None]], now: float
) -> list[tuple[RateLimit, float]]:
    return [(limit, _level(limit, bucket, now)) for limit, bucket in held]


def _retry_after(limit: RateLimit, tokens: float) -> Limited:
    return Limited(limit.id, max(1, math.ceil((1.0 - tokens) / limit.rate)))


class Take:
    """A token from each of ``limits`` for ``service`` (see the module docstring): made once
    per set of limits and swap, called per request with the ``Buckets`` in force."""

    __slots__ = ("_for", "_one", "_shared", "limits", "per_source", "service")

    def __init__(self, limits: Sequence[RateLimit], service: str) -> None:
        self.limits = tuple(sorted(limits, key=lambda limit: limit.id))  # first empty: min id
        self.service = service
        self.per_source = any(limit.bucket != "shared" for limit in limits)
        self._for: Buckets | None = None  # the buckets ``_shared`` was resolved in
        self._shared: tuple[Bucket, ...] = ()
        self._one: Bucket | None = None  # the bucket, when there is exactly one

    def __call__(self, buckets: Buckets, source: str | None, now: float) -> Limited | None:
        if self.per_source:
            return buckets.take(self.limits, self.service, source, now)
        if buckets is not self._for:
            self._resolve(buckets)
        one = self._one
        if one is None:
            return self._all(now)
        tokens = one.tokens
        elapsed = now - one.at
        if elapsed > 0.0:  # a clock that steps back refills nothing
            tokens = min(tokens + elapsed * one.rate, one.burst)
        if tokens < 1.0:
            return _retry_after(self.limits[0], tokens)
        one.tokens = tokens - 1.0
        one.at = now
        return None

    def _resolve(self, buckets: Buckets) -> None:
        self._shared = tuple(buckets.shared(limit, self.service) for limit in self.limits)
        self._one = self._shared[0] if len(self._shared) == 1 else None
        self._for = buckets

    def _all(self, now: float) -> Limited | None:
        """Several buckets: all or nothing, the smallest empty one's id reported."""
        levels = []
        for limit, bucket in zip(self.limits, self._shared, strict=True):
            tokens = _level(limit, bucket, now)
            if tokens < 1.0:
                return _retry_after(limit, tokens)
            levels.append(tokens)
        for bucket, tokens in zip(self._shared, levels, strict=True):
            bucket.tokens, bucket.at = tokens - 1.0, now
        return None
