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
from meshd.proxy.http.head import header_lines


class RequestHead:
    """A request's method, target and headers (as sent), for hooks to look at.

    The exchange hands over the head's header lines as raw bytes (``fields``,
    which the parser has checked): they are split and decoded only when a hook
    asks for ``headers``, because most requests meet no rule that reads one.
    """

    __slots__ = ("_fields", "_headers", "line", "method", "target")

    def __init__(
        self,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...] = (),
        fields: bytes = b"",
        line: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self._fields = fields
        # the request line as sent, where the exchange checked it is ``method SP target SP
        # version`` (else b""): what a ``LineHook`` may know the next such request by
        self.line = line
        self._headers: tuple[tuple[str, str], ...] | None = None if fields else headers

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Each header's name and value (any case, values without surrounding blanks)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = tuple(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in header_lines(self._fields)
            )
        return headers

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestHead):
            return NotImplemented
        return (self.method, self.target, self.headers) == (
            other.method,
            other.target,
            other.headers,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r}, {self.target!r}, {self.headers!r})"


class RequestHook(Protocol):
    """Looks at a request head; returns what to do with the request (``()``: nothing)."""

    def __call__(self, head: RequestHead) -> tuple[RequestAction, ...]: ...


class LineHook(RequestHook, Protocol):
    """A request hook that may know a request by its request line alone.

    ``by_line`` is asked first, with the request line as sent (method, one
    space, target, one space, version; no CRLF), for a head that the parser
    accepted whole in one chunk with no body: True means "let it go on as it
    is" and the hook has done what it does for such a request (``__call__`` is
    not asked); False means "show me the head" (it is then asked as usual,
    with ``RequestHead.line`` set). A hook answers True only for a line it
    was shown before in a ``RequestHead.line``, so that line met the
    exchange's checks then, and the same bytes meet them again.
    """

    def by_line(self, line: bytes) -> bool: ...


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
