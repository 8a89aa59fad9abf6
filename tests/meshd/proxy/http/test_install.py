"""A plan that does not observe builds no request event per response; one that does, does."""

from __future__ import annotations

import pytest

from meshd.proxy.http import observe
from meshd.proxy.http.actions import FORWARD, RequestAction
from meshd.proxy.http.exchange import HttpExchange
from meshd.proxy.http.install import exchange_for
from meshd.proxy.http.plan import HttpPlan, RequestHead
from meshd.telemetry.events import INBOUND, Event, RequestCompleted

REQUEST = b"GET /small HTTP/1.1\r\nHost: web\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def nothing(head: RequestHead) -> tuple[RequestAction, ...]:
    return ()


def built(*args: object) -> RequestCompleted:
    raise AssertionError("a RequestCompleted was built for a plan that does not observe")


@pytest.mark.parametrize("hooks", [(), (nothing,)])
def test_an_unobserved_plan_builds_no_event_and_still_pairs_responses(
    hooks: tuple[object, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observe, "RequestCompleted", built)
    plan = HttpPlan(observe=False, hooks=hooks)  # type: ignore[arg-type]
    x = exchange_for(plan, lambda e: None, INBOUND, "spiffe://t/host/a", "web", 8192)
    assert x is not None
    for _ in range(3):
        assert x.incoming(REQUEST) == FORWARD
        assert x.outgoing(RESPONSE) == FORWARD
        assert not x.pending  # each response paired with its request all the same
    assert x.at_rest()
    if hooks:
        assert isinstance(x, HttpExchange)


def test_an_observed_plan_publishes_each_request() -> None:
    seen: list[Event] = []
    x = exchange_for(HttpPlan(hooks=(nothing,)), seen.append, INBOUND, "a", "web", 8192)
    assert x is not None
    for _ in range(2):
        x.incoming(REQUEST)
        x.outgoing(RESPONSE)
    assert [(e.method, e.status) for e in seen if isinstance(e, RequestCompleted)] == [
        ("GET", 200),
        ("GET", 200),
    ]
