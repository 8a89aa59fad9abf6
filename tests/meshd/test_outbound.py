"""Endpoint picking: least outstanding streams, ties round robin, failed endpoints skipped."""

from __future__ import annotations

import time
from typing import cast

from meshd.outbound import LinkPool
from meshd.registry import Endpoint, Service
from meshd.runtime import Runtime

E1, E2, E3 = (Endpoint(f"h{i}", f"10.0.0.{i}", 80, 15443) for i in (1, 2, 3))
WEB = Service("web", "10.255.0.1", 80, (E1, E2, E3))


def _pool() -> LinkPool:
    return LinkPool(cast(Runtime, None))  # picking needs no runtime


def test_ties_go_round_robin() -> None:
    pool = _pool()
    assert [pool.pick(WEB, set()) for _ in range(6)] == [E1, E2, E3, E1, E2, E3]


def test_fewest_outstanding_wins() -> None:
    pool = _pool()
    pool.outstanding = {E1.link_key: 3, E2.link_key: 1, E3.link_key: 2}
    assert {pool.pick(WEB, set()) for _ in range(5)} == {E2}


def test_failed_endpoints_are_skipped_until_their_backoff_ends() -> None:
    pool = _pool()
    pool.failed_until = {E3.link_key: (time.monotonic() + 60, 1.0)}
    assert E3 not in {pool.pick(WEB, set()) for _ in range(9)}
    pool.failed_until = {e.link_key: (time.monotonic() + 60, 1.0) for e in (E1, E2, E3)}
    assert pool.pick(WEB, set()) is not None  # all failed: still try one rather than none


def test_avoid_and_single_endpoint() -> None:
    pool = _pool()
    assert {pool.pick(WEB, {E1.link_key, E2.link_key}) for _ in range(3)} == {E3}
    assert pool.pick(WEB, {E1.link_key, E2.link_key, E3.link_key}) is None
    solo = Service("db", "10.255.0.2", 5432, (E1,))
    assert pool.pick(solo, set()) is E1
