"""Allowed requests are tallied, not published one by one: exact counts, drops recovered."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

import pytest

from meshd.policy.guard import Guard
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.ratelimit import Buckets
from meshd.proxy.enforce import RequestJudge
from meshd.proxy.http.plan import RequestHead
from meshd.runtime import Runtime
from meshd.telemetry.events import TALLY_REPUBLISH, EventBus, RequestCompleted
from meshd.telemetry.metrics import Metrics
from tests.meshd.policy.lang.build import TD, ZERO_TRUST, ZT, spiffe

WEB = spiffe("web")
ALLOW = f"{ZT}/allow/web-to-api"
ORDERS = RequestHead("GET", "/v1/orders", ())


@dataclass
class FakeRuntime:
    """What a ``RequestJudge`` reads of the runtime."""

    bus: EventBus
    bundle: object = None
    buckets: Buckets = field(default_factory=Buckets)


def judge(bus: EventBus) -> RequestJudge:
    policy = CompiledPolicy.compile([ZERO_TRUST], TD, 1)
    guard = Guard("api", 8080, policy.for_service("api"), None)
    bundle = SimpleNamespace(local={"api": SimpleNamespace(guard=guard)}, plaintext={})
    return RequestJudge(cast(Runtime, FakeRuntime(bus, bundle)), guard, WEB, 8080)


def allowed(metrics: Metrics) -> float:
    key = ("api", "allow", ALLOW)
    return metrics._decisions.values.get(key, 0.0)


@pytest.mark.parametrize(
    ("rounds", "per_round"),
    [(1, 1), (1, 3), (3, 5), (2, TALLY_REPUBLISH + 3)],
)
def test_every_allowed_request_is_counted_once(rounds: int, per_round: int) -> None:
    bus = EventBus()
    metrics, hook = Metrics(bus, process_metrics=False), judge(bus)
    queued = 0
    for _ in range(rounds):
        for _ in range(per_round):
            assert hook(ORDERS) == ()
        queued += len(metrics.subscription.queue)
        metrics.collect()
    assert allowed(metrics) == rounds * per_round
    # one tally queued per round (and one more per TALLY_REPUBLISH counts), not one per request
    assert queued == rounds * (1 + (per_round - 1) // TALLY_REPUBLISH)
    assert bus.published == queued


def test_a_tally_dropped_from_a_full_queue_is_published_again() -> None:
    bus = EventBus()
    metrics, hook = Metrics(bus, capacity=1, process_metrics=False), judge(bus)
    bus.publish(RequestCompleted("inbound", "a", "b", "GET", 200, 0.1))  # the queue is full
    hook(ORDERS)  # its tally is dropped
    metrics.collect()
    assert metrics.subscription.dropped == 1 and allowed(metrics) == 0
    for _ in range(TALLY_REPUBLISH):
        hook(ORDERS)
    metrics.collect()
    assert allowed(metrics) == TALLY_REPUBLISH + 1  # nothing lost: the tally held them
