"""The install point: a connection's HTTP plan turned into the exchange that carries it out.

Called once per connection, where the connection is admitted (outbound: once
its first bytes look like HTTP; inbound: when its stream is accepted). No
plan, no exchange: the connection is relayed as L4 and pays nothing more
than the stream's ``http is None`` check per chunk. A plan without hooks
gets the observer (metrics only); one with hooks gets the exchange that
holds each request head for them.

An inbound connection of a service without hooks or policy is observed the
way outbound HTTP is: ``FirstRequest`` stands in for its exchange until the
first bytes from the client arrive, then installs the observer when they
start an HTTP request and drops itself otherwise (opaque TCP stays a plain
relay; so does a connection whose app speaks first). It costs one object per
connection and nothing per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from meshd.proxy.http.actions import GIVE_UP, Verdict
from meshd.proxy.http.exchange import HttpExchange, InboundHttpExchange
from meshd.proxy.http.observe import (
    NOBODY,
    HttpObserver,
    InboundObserver,
    Listening,
    discard,
    looks_like_http,
)
from meshd.proxy.http.plan import HttpPlan, RequestHook
from meshd.telemetry.events import INBOUND, OUTBOUND, Event


def exchange_for(
    plan: HttpPlan | None,
    publish: Callable[[Event], None],
    direction: str,
    source: str,
    destination: str,
    max_head: int,
    listening: Listening = NOBODY,
) -> HttpObserver | None:
    """The exchange for one connection (``direction`` says which end its app is), or None;
    ``listening``: the runtime's, which says when its requests' paths are wanted."""
    if plan is None:
        return None
    return exchange_with(
        plan.observe, plan.hooks, publish, direction, source, destination, max_head, listening
    )


def exchange_with(
    observe: bool,
    hooks: tuple[RequestHook, ...],
    publish: Callable[[Event], None],
    direction: str,
    source: str,
    destination: str,
    max_head: int,
    listening: Listening = NOBODY,
) -> HttpObserver:
    """``exchange_for`` a plan's two fields, for a caller whose hooks are its connection's
    own (no ``HttpPlan`` made per connection for them)."""
    if not observe:
        publish = discard
    if not hooks:
        observer = HttpObserver if direction == OUTBOUND else InboundObserver
        made = observer(publish, direction, source, destination, max_head)
    else:
        exchange = HttpExchange if direction == OUTBOUND else InboundHttpExchange
        made = exchange(publish, direction, source, destination, max_head, hooks)
    made.listening = listening
    return made


class Carrier(Protocol):
    """What carries a connection's bytes (a ``Stream``, a ``PipeEnd``): its exchange is set."""

    def use_http(self, exchange: HttpObserver | None) -> None: ...


class FirstRequest:
    """An inbound connection's exchange until its first bytes say whether it speaks HTTP."""

    __slots__ = ("carrier", "destination", "listening", "max_head", "plan", "publish", "source")
    client_is_app = False  # inbound: the requests come from the peer

    def __init__(
        self,
        carrier: Carrier,
        plan: HttpPlan,
        publish: Callable[[Event], None],
        source: str,
        destination: str,
        max_head: int,
        listening: Listening = NOBODY,
    ) -> None:
        self.carrier, self.plan, self.publish = carrier, plan, publish
        self.source, self.destination, self.max_head = source, destination, max_head
        self.listening = listening

    def request_bytes(self, data: bytes | memoryview) -> Verdict:
        """The client's first bytes: the observer follows them from here, or nobody does."""
        if not looks_like_http(data):
            return GIVE_UP
        exchange = exchange_for(
            self.plan,
            self.publish,
            INBOUND,
            self.source,
            self.destination,
            self.max_head,
            self.listening,
        )
        self.carrier.use_http(exchange)
        return GIVE_UP if exchange is None else exchange.request_bytes(data)

    def response_bytes(self, data: bytes | memoryview) -> Verdict:
        """The app spoke first: no HTTP server does."""
        return GIVE_UP

    incoming = request_bytes
    outgoing = response_bytes

    def finished(self) -> None:
        """Nothing came: nothing to report."""

    def at_rest(self) -> bool:
        return False
