"""Token buckets for ``[[rate_limit]]`` (§2.7): continuous refill, shared or per source.

``Buckets`` is the only mutable state of the engine and still pure: the
caller passes ``now`` (monotonic seconds). A bucket is stored as the tokens it
held at the time it was last taken from; its content at ``now`` is computed,
so an idle bucket costs nothing. Per-source buckets are bounded per (rule,
service): past ``max_sources`` the least recently used one is dropped (it
comes back full, which errs on admitting, never on refusing a stranger).
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


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class Buckets:
    """Every bucket of one meshd, keyed by (rule, service) and, per source, by peer."""

    __slots__ = ("_per_source", "_shared", "max_sources")

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self._shared: dict[tuple[str, str], _Bucket] = {}
        self._per_source: dict[tuple[str, str], OrderedDict[str, _Bucket]] = {}
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
            return Limited(limit.id, max(1, math.ceil((1.0 - tokens) / limit.rate)))
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

    def _bucket(self, limit: RateLimit, service: str, peer: str) -> _Bucket | None:
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
        bucket: _Bucket | None,
        tokens: float,
        now: float,
    ) -> None:
        if bucket is not None:
            bucket.tokens, bucket.at = tokens, now
            return
        fresh = _Bucket(tokens, now)
        if limit.bucket == "shared":
            self._shared[(limit.id, service)] = fresh
            return
        peers = self._per_source.setdefault((limit.id, service), OrderedDict())
        peers[peer] = fresh
        while len(peers) > self.max_sources:
            peers.popitem(last=False)


def _level(limit: RateLimit, bucket: _Bucket | None, now: float) -> float:
    """The tokens a bucket holds at ``now``; a bucket never taken from starts full."""
    if bucket is None:
        return float(limit.burst)
    elapsed = max(0.0, now - bucket.at)  # a clock that steps back refills nothing
    return min(float(limit.burst), bucket.tokens + elapsed * limit.rate)


def _levels(
    held: Sequence[tuple[RateLimit, _Bucket | None]], now: float
) -> list[tuple[RateLimit, float]]:
    return [(limit, _level(limit, bucket, now)) for limit, bucket in held]
