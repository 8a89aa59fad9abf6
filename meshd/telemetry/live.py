"""Bytes of open connections, counted into the byte counters whenever they are read.

A connection's relay counts its bytes as they pass (``Stream.sent``/``received``,
``PipeEnd.bytes_in``): that already happens for every chunk. ``OpenConnections``
holds the open ones (one entry per connection, added when it opens, taken out when
it closes) with how much of each was counted so far. Whoever reads the counters
(``Metrics.render``, ``Metrics.traffic``) first calls ``fold``: it yields what each
open connection moved since the last read. The close path takes the entry out and
puts what was folded of it in its ``ConnectionClosed`` (``counted_sent``/
``counted_received``), so that the metrics consumer adds only the rest. Counters so
never go down (``meshctl top`` reads a counter going down as a restart) and never
count a byte twice, and nothing is added per chunk: the cost is per connection and
per read of the counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

Edge = tuple[str, str, str]  # direction, source, destination: as the metrics label it


class Counted(Protocol):
    """A connection's relay, as it counts its bytes (``sent``: towards the app that is
    the server outbound, the app inbound; see ``flipped``)."""

    @property
    def sent(self) -> int: ...
    @property
    def received(self) -> int: ...


class _Entry:
    __slots__ = ("edge", "flipped", "received", "sent")

    def __init__(self, edge: Edge, flipped: bool) -> None:
        self.edge, self.flipped = edge, flipped
        self.sent = self.received = 0  # folded so far, in the edge's sense


class OpenConnections:
    """The open connections whose bytes the counters take in as they are read."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[Counted, _Entry] = {}

    def add(self, conn: Counted, edge: Edge, flipped: bool = False) -> None:
        """``conn`` is open on ``edge``; ``flipped``: its ``received`` is what the client
        side sent (an inbound stream: the peer is the client)."""
        self.entries[conn] = _Entry(edge, flipped)

    def remove(self, conn: Counted) -> tuple[int, int]:
        """``conn`` closed: what was folded of it (sent by the client side, sent to it)."""
        entry = self.entries.pop(conn, None)
        return (0, 0) if entry is None else (entry.sent, entry.received)

    def fold(self) -> Iterator[tuple[Edge, int, int]]:
        """Each open connection's edge and its bytes (from the client side, to it) since
        the last fold, where it moved any."""
        for conn, entry in self.entries.items():
            sent, received = conn.sent, conn.received
            if entry.flipped:
                sent, received = received, sent
            more_sent, more_received = sent - entry.sent, received - entry.received
            if more_sent or more_received:
                entry.sent, entry.received = sent, received
                yield entry.edge, more_sent, more_received
