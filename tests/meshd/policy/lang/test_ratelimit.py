"""Token buckets (§2.7): continuous refill, burst, several rules, per-source scope, bounds."""

from __future__ import annotations

from meshd.policy.lang.ratelimit import Buckets, Limited
from tests.meshd.policy.lang.build import limit

FIVE = limit("r", "five", "api", 5)  # 5 per second, burst 5
WEB, API = "spiffe://prod.example/svc/web", "spiffe://prod.example/svc/api"


def takes(buckets: Buckets, times: list[float], *limits: object) -> list[Limited | None]:
    rules = limits or (FIVE,)
    return [buckets.take(rules, "api", WEB, t) for t in times]  # type: ignore[arg-type]


def test_sixth_request_in_one_second_is_limited_then_refills() -> None:
    buckets = Buckets()
    got = takes(buckets, [100.0 + i / 100 for i in range(6)])
    assert got == [None] * 5 + [Limited("r/rate_limit/five", 1)]  # 0.25 token held: 0.75/5 -> 1
    # 0.2 s later one more token came back, continuously; the 429 consumed nothing
    assert takes(buckets, [100.25, 100.25]) == [None, Limited("r/rate_limit/five", 1)]
    assert takes(buckets, [101.5] * 6) == [None] * 5 + [Limited("r/rate_limit/five", 1)]


def test_refill_is_continuous_and_capped_at_burst() -> None:
    buckets = Buckets()
    assert takes(buckets, [0.0] * 5) == [None] * 5
    assert takes(buckets, [0.19]) == [Limited("r/rate_limit/five", 1)]
    assert takes(buckets, [0.2]) == [None]  # exactly one token after 0.2 s
    assert takes(buckets, [1000.0] * 6)[-1] == Limited(
        "r/rate_limit/five", 1
    )  # burst caps idle refill


def test_retry_after_is_ceil_of_missing_over_rate() -> None:
    slow = limit("r", "slow", "api", 1, per_ms=10_000)  # 0.1 token/s
    buckets = Buckets()
    assert takes(buckets, [0.0, 0.0], slow) == [None, Limited("r/rate_limit/slow", 10)]
    assert takes(buckets, [4.0], slow) == [Limited("r/rate_limit/slow", 6)]  # 0.4 held: 0.6/0.1
    assert takes(buckets, [10.0], slow) == [None]
    fast = limit("r", "fast", "api", 1000, burst=1)
    assert takes(Buckets(), [0.0, 0.0], fast) == [
        None,
        Limited("r/rate_limit/fast", 1),
    ]  # at least 1


def test_burst_larger_than_limit() -> None:
    burst = limit("r", "b", "api", 1, burst=3)
    assert takes(Buckets(), [0.0] * 4, burst) == [None, None, None, Limited("r/rate_limit/b", 1)]


def test_several_rules_all_or_nothing_smallest_empty_reported() -> None:
    a = limit("r", "a", "api", 10)
    b = limit("r", "b", "api", 2)
    c = limit("r", "c", "api", 2)
    buckets = Buckets()
    assert takes(buckets, [0.0, 0.0], c, a, b) == [None, None]
    assert takes(buckets, [0.0], c, a, b) == [Limited("r/rate_limit/b", 1)]  # b and c empty: min
    # the 429 took nothing from a: 8 tokens are left in it
    assert takes(buckets, [0.0] * 9, a) == [None] * 8 + [Limited("r/rate_limit/a", 1)]


def test_shared_and_per_source_scopes() -> None:
    shared = limit("r", "s", "api", 1)
    per = limit("r", "p", "api", 1, bucket="per-source")
    buckets = Buckets()
    assert buckets.take([shared], "api", WEB, 0.0) is None
    assert buckets.take([shared], "api", API, 0.0) == Limited("r/rate_limit/s", 1)
    assert buckets.take([shared], "db", API, 0.0) is None  # one bucket per (rule, service)
    assert buckets.take([per], "api", WEB, 0.0) is None
    assert buckets.take([per], "api", API, 0.0) is None
    assert buckets.take([per], "api", WEB, 0.0) == Limited("r/rate_limit/p", 1)
    # every plaintext peer shares the one unauthenticated bucket
    assert buckets.take([per], "api", None, 0.0) is None
    assert buckets.take([per], "api", None, 0.0) == Limited("r/rate_limit/p", 1)


def test_per_source_buckets_are_bounded_least_recently_used_first() -> None:
    per = limit("r", "p", "api", 1, per_ms=100_000, bucket="per-source")  # no refill to speak of
    buckets = Buckets(max_sources=3)
    for peer in ("a", "b", "c"):
        assert buckets.take([per], "api", peer, 0.0) is None
    assert buckets.take([per], "api", "a", 1.0) == Limited(
        "r/rate_limit/p", 99
    )  # a is recent again
    assert buckets.take([per], "api", "d", 1.0) is None  # b, the oldest, is dropped
    assert buckets.sources(per, "api") == 3
    assert buckets.take([per], "api", "a", 2.0) == Limited(
        "r/rate_limit/p", 98
    )  # kept, still empty
    assert buckets.take([per], "api", "c", 2.0) == Limited("r/rate_limit/p", 98)
    assert buckets.take([per], "api", "b", 2.0) is None  # dropped: it came back full
    assert buckets.sources(per, "api") == 3


def test_no_limits_no_state() -> None:
    buckets = Buckets()
    assert buckets.take([], "api", WEB, 0.0) is None
    assert buckets.sources(FIVE, "api") == 0


def test_retain_forgets_only_rules_no_longer_in_force() -> None:
    gone = limit("r", "gone", "api", 1, bucket="per-source")
    buckets = Buckets()
    for rule in (FIVE, gone):
        assert buckets.take([rule], "api", WEB, 0.0) is None
    buckets.retain({FIVE.id})
    assert buckets.sources(gone, "api") == 0
    assert takes(buckets, [0.0] * 5) == [None] * 4 + [Limited("r/rate_limit/five", 1)]  # kept its 4
