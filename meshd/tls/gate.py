"""Room for connections whose peer is not authenticated yet: TLS handshakes in flight.

A listener accepts a socket before it knows who is calling, and a TLS
handshake costs memory (uvloop keeps a 256 KiB buffer per TLS connection,
OpenSSL its state) and a slot. ``HandshakeGate`` bounds both: at most
``limit`` handshakes at once, and at most ``per_source`` from one source (an
IPv4 address, or the /64 of an IPv6 one). When either is full the *oldest*
handshake in the way is evicted: of that source, or, when the gate is full,
of the source with the most handshakes in flight. An honest peer finishes
its handshake in milliseconds, so a peer that opens sockets and stays silent
can only churn through slots, never hold them, and an operator or a mesh
host still gets in; a crowd from one source pushes out its own.

A gate with ``grace`` gives each admitted handshake that long before it may
be evicted: when the one in the way is younger, the newcomer is turned away
instead (``admit`` returns None). Under a flood faster than the gate can turn
over, an honest handshake then still gets its time to finish, and a newcomer
gets a fair chance at the slots that come free.

Pure bookkeeping: the caller passes a ``cancel`` callback that ends the
evicted handshake, and releases the ticket when its handshake ends.
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

# seconds an admitted TLS handshake is safe from eviction: an honest one takes milliseconds
# (a round trip and two signatures), even on a busy host
HANDSHAKE_GRACE = 0.25


@dataclass(frozen=True, eq=False)
class Ticket:
    """One admitted handshake."""

    source: str
    cancel: Callable[[], None]
    since: float
    number: int = field(default_factory=itertools.count().__next__)


def source_key(host: str) -> str:
    """What the per-source bound counts by: the address, or the /64 of an IPv6 address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class HandshakeGate:
    """Admits handshakes, evicting the oldest when the gate or one source is full."""

    def __init__(
        self,
        limit: int,
        per_source: int,
        grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or per_source < 1:
            raise ValueError("a handshake gate needs room for at least one handshake")
        self.limit = limit
        self.per_source = per_source
        self.grace = grace
        self.clock = clock
        self.evicted = 0
        self.turned_away = 0
        self._all: OrderedDict[int, Ticket] = OrderedDict()  # oldest first
        self._by_source: dict[str, OrderedDict[int, Ticket]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def admit(self, host: str, cancel: Callable[[], None]) -> Ticket | None:
        """Take a slot for a handshake from ``host``, evicting whoever must go to make room;
        None when the one in the way is still within its grace (turn the newcomer away)."""
        now = self.clock()
        ticket = Ticket(source_key(host), cancel, now)
        mine = self._by_source.get(ticket.source)
        victims = []
        if mine is not None and len(mine) >= self.per_source:
            victims.append(next(iter(mine.values())))
        if len(self._all) - len(victims) >= self.limit:
            victims.append(self._oldest_of_busiest(exclude=victims))
        if any(now - victim.since < self.grace for victim in victims):
            self.turned_away += 1
            return None
        for victim in victims:
            self._evict(victim)
        self._all[ticket.number] = ticket
        self._by_source.setdefault(ticket.source, OrderedDict())[ticket.number] = ticket
        return ticket

    def release(self, ticket: Ticket | None) -> None:
        """The handshake ended (done, failed or evicted): free its slot. Idempotent."""
        if ticket is None:
            return
        self._all.pop(ticket.number, None)
        mine = self._by_source.get(ticket.source)
        if mine is not None:
            mine.pop(ticket.number, None)
            if not mine:
                del self._by_source[ticket.source]

    def sources(self) -> int:
        """How many sources have handshakes in flight."""
        return len(self._by_source)

    def _oldest_of_busiest(self, exclude: list[Ticket]) -> Ticket:
        """The oldest handshake of the source holding the most (ties: the oldest of those),
        not counting those in ``exclude`` (about to go)."""
        if not exclude:  # the usual case
            mine = max(self._by_source.values(), key=lambda m: (len(m), -next(iter(m))))
            return next(iter(mine.values()))
        gone = {t.number for t in exclude}
        candidates = [
            rest
            for rest in (
                [t for n, t in m.items() if n not in gone] for m in self._by_source.values()
            )
            if rest
        ]
        busiest = max(candidates, key=lambda rest: (len(rest), -rest[0].number))
        return busiest[0]

    def _evict(self, ticket: Ticket) -> None:
        self.release(ticket)
        self.evicted += 1
        ticket.cancel()
