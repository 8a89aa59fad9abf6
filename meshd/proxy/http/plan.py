"""What L7 work a connection needs, decided once when it is admitted.

An ``HttpPlan`` says whether the connection's requests are observed (a
``RequestCompleted`` per response, for metrics) and which request hooks look
at each request head. ``None`` instead of a plan means L4: no exchange at all.
``HttpRules`` holds the plans per service and direction; policy will fill it
(today it is empty: outbound HTTP is observed, as ``[mesh] http`` says, and
nothing more). ``install.exchange_for`` turns a plan into the exchange that
carries it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from meshd.proxy.http.actions import RequestAction


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request's method, target and headers (as sent), for hooks to look at."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)


class RequestHook(Protocol):
    """Looks at a request head; returns what to do with the request (``()``: nothing)."""

    def __call__(self, head: RequestHead) -> tuple[RequestAction, ...]: ...


@dataclass(frozen=True, slots=True)
class HttpPlan:
    """One connection's L7 work: observation, and hooks on each request head."""

    observe: bool = True
    hooks: tuple[RequestHook, ...] = ()


OBSERVE = HttpPlan()


@dataclass(frozen=True)
class HttpRules:
    """The plans of connections that need more than observation, by destination service."""

    inbound: Mapping[str, HttpPlan] = field(default_factory=dict)
    outbound: Mapping[str, HttpPlan] = field(default_factory=dict)

    def outbound_plan(self, service: str) -> HttpPlan:
        """For an outbound connection that speaks HTTP (meshd parses HTTP: ``[mesh] http``)."""
        return self.outbound.get(service, OBSERVE)

    def inbound_plan(self, service: str) -> HttpPlan | None:
        """For a connection delivered to a local service: None (L4) unless a rule needs L7."""
        return self.inbound.get(service)
