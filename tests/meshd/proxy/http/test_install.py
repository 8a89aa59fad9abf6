"""A plan that does not observe builds no request event per response; one that does, does."""

from __future__ import annotations

import pytest

from meshd.proxy.http import observe
from meshd.proxy.http.actions import FORWARD, RequestAction
from meshd.proxy.http.exchange import HttpExchange
from meshd.proxy.http.install import FirstRequest, exchange_for
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


class Carrier:
    """Stands in for a stream or pipe: records the exchange it is told to use."""

    def __init__(self) -> None:
        self.used: list[object] = []

    def use_http(self, exchange: object) -> None:
        self.used.append(exchange)


@pytest.mark.parametrize(
    ("first", "side", "observed"),
    [
        (REQUEST, "incoming", True),  # the client's request line: observed from here
        (b"\x16\x03\x01\x02\x00", "incoming", False),  # TLS, or any opaque bytes
        (b"get / HTTP/1.1\r\n", "incoming", False),  # not a request line outbound reads either
        (b"220 smtp ready\r\n", "outgoing", False),  # the app spoke first: no HTTP server does
    ],
)
def test_first_request_observes_only_what_starts_with_a_request(
    first: bytes, side: str, observed: bool
) -> None:
    seen: list[Event] = []
    carrier = Carrier()
    x = FirstRequest(carrier, HttpPlan(), seen.append, "spiffe://t/host/a", "web", 8192)
    verdict = getattr(x, side)(first)
    assert verdict is observed  # FORWARD (follow on) or GIVE_UP (relay as L4, drop it)
    assert [type(u) for u in carrier.used] == ([observe.InboundObserver] if observed else [])
    if observed:
        observer = carrier.used[0]
        assert isinstance(observer, observe.InboundObserver)
        assert observer.outgoing(RESPONSE) == FORWARD
        done = [e for e in seen if isinstance(e, RequestCompleted)]
        assert [(e.direction, e.source, e.destination) for e in done] == [
            (INBOUND, "spiffe://t/host/a", "web")
        ]
