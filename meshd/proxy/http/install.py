"""The install point: a connection's HTTP plan turned into the exchange that carries it out.

Called once per connection, where the connection is admitted (outbound: once
its first bytes look like HTTP; inbound: when its stream is accepted). No
plan, no exchange: the connection is relayed as L4 and pays nothing more
than the stream's ``http is None`` check per chunk. A plan without hooks
gets the observer (metrics only); one with hooks gets the exchange that
holds each request head for them.
"""

from __future__ import annotations

from collections.abc import Callable

from meshd.proxy.http.exchange import HttpExchange, InboundHttpExchange
from meshd.proxy.http.observe import HttpObserver, InboundObserver, discard
from meshd.proxy.http.plan import HttpPlan
from meshd.telemetry.events import OUTBOUND, Event


def exchange_for(
    plan: HttpPlan | None,
    publish: Callable[[Event], None],
    direction: str,
    source: str,
    destination: str,
    max_head: int,
) -> HttpObserver | None:
    """The exchange for one connection (``direction`` says which end its app is), or None."""
    if plan is None:
        return None
    if not plan.observe:
        publish = discard
    outbound = direction == OUTBOUND
    if not plan.hooks:
        observer = HttpObserver if outbound else InboundObserver
        return observer(publish, direction, source, destination, max_head)
    exchange = HttpExchange if outbound else InboundHttpExchange
    return exchange(publish, direction, source, destination, max_head, plan.hooks)
