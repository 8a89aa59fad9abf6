"""The live tap: completed requests, as JSON lines, to the operators who ask (GET /tap).

``TapHub`` keeps the connected tap clients (at most ``MAX_CLIENTS``) and
turns the runtime's ``Listening`` on while any is connected (or while the
access log wants requests: ``access``), so that the observers note paths
only then. The metrics consumer hands it every ``RequestObserved``
(``Metrics.tap``); it offers each to every client whose filter wants it.
A client's queue is bounded (``QUEUE``): when its reader is slow or stuck,
the newest events are dropped for it and counted (``dropped``, summed in
``meshd_tap_dropped_total``), so a reader never slows traffic or grows
memory. Its writer (``meshd.admin``) sends the lines and, at most once a
``DROP_REPORT`` seconds, ``{"dropped": N}`` for what it lost since.

``sampled``, ``TapFilter`` and ``tap_record`` are pure (the draw is passed in).
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from meshd.proxy.http.observe import Listening
from meshd.telemetry.events import RequestObserved
from meshd.telemetry.logs import clean

QUEUE = 1024  # events a client may have waiting
MAX_CLIENTS = 4
DROP_REPORT = 1.0  # seconds between two {"dropped": N} lines of one client
MAX_SERVICES = 16  # service= filters of one client


def sampled(ratio: float, draw: float) -> bool:
    """Does an event with uniform ``draw`` in [0, 1) pass a sample ``ratio`` in [0, 1]?"""
    return ratio >= 1.0 or draw < ratio


def service_name(label: str) -> str:
    """The service a metric label names: ``spiffe://td/svc/api`` and ``api`` are ``api``."""
    kind, _, name = label.rpartition("/")
    return name if kind.endswith("/svc") or not kind else label


@dataclass(frozen=True, slots=True)
class TapFilter:
    """What one tap client asked for: these services (empty: all), this sample ratio."""

    services: frozenset[str] = frozenset()
    sample: float = 1.0

    def wants(self, event: RequestObserved, draw: float) -> bool:
        """Is ``event`` (source or destination one of ``services``) in this client's sample?"""
        if self.services and not (
            service_name(event.source) in self.services
            or service_name(event.destination) in self.services
        ):
            return False
        return sampled(self.sample, draw)


def tap_record(event: RequestObserved, now: float) -> dict[str, object]:
    """The JSON object a tap client gets for one request (``now``: time.time() of it)."""
    return {
        "time": round(now, 6),
        "direction": event.direction,
        "source": service_name(event.source),
        "destination": service_name(event.destination),
        "method": clean(event.method, 16),
        "path": clean(event.path),
        "status": event.status,
        "latency_ms": round(event.duration * 1000.0, 3),
        "bytes_in": event.bytes_in,
        "bytes_out": event.bytes_out,
    }


def encode_line(record: dict[str, object]) -> bytes:
    """One ndjson line (ASCII: json escapes anything else)."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class TapClient:
    """One connected tap reader: its filter, its bounded queue, what it lost."""

    __slots__ = ("dropped", "filter", "queue", "ready", "reported")

    def __init__(self, wanted: TapFilter) -> None:
        self.filter = wanted
        self.queue: deque[bytes] = deque()
        self.dropped = 0  # in all, since it connected
        self.reported = 0  # ... of which a {"dropped": N} line has told
        self.ready = anyio.Event()  # set when the queue gets a line

    def offer(self, line: bytes) -> bool:
        """Queue ``line``, or drop it (False) when the reader is ``QUEUE`` lines behind."""
        if len(self.queue) >= QUEUE:
            self.dropped += 1
            return False
        self.queue.append(line)
        if not self.ready.is_set():
            self.ready.set()
        return True

    def take(self) -> list[bytes]:
        """What is waiting, oldest first, and an empty queue."""
        lines = list(self.queue)
        self.queue.clear()
        self.ready = anyio.Event()
        return lines

    def drop_report(self) -> bytes | None:
        """``{"dropped": N}`` for what was lost since the last report, if anything."""
        lost = self.dropped - self.reported
        if not lost:
            return None
        self.reported = self.dropped
        return encode_line({"dropped": lost})


class TapHub:
    """The tap clients of one meshd, and the switch that tells observers to note paths."""

    def __init__(
        self,
        listening: Listening,
        max_clients: int = MAX_CLIENTS,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.listening = listening
        self.max_clients = max_clients
        self.draw = draw
        self.clock = clock
        self.clients: list[TapClient] = []
        self.access = False  # the access log wants requests too
        self.lost = 0  # dropped events of clients gone
        self.sink: Callable[[RequestObserved], None] | None = None  # the access log's

    def join(self, wanted: TapFilter) -> TapClient | None:
        """A new client, or None when ``max_clients`` are connected."""
        if len(self.clients) >= self.max_clients:
            return None
        client = TapClient(wanted)
        self.clients.append(client)
        self._switch()
        return client

    def leave(self, client: TapClient) -> None:
        if client in self.clients:
            self.clients.remove(client)
            self.lost += client.dropped
            self._switch()

    def want_requests(self, access: bool) -> None:
        """The access log wants requests (it samples above 0 somewhere), or not."""
        self.access = access
        self._switch()

    def dropped(self) -> int:
        """Events dropped for slow readers, since meshd started (meshd_tap_dropped_total)."""
        return self.lost + sum(c.dropped for c in self.clients)

    def request(self, event: RequestObserved) -> None:
        """A completed request (from the metrics consumer): to each client that wants it."""
        if self.sink is not None:
            self.sink(event)
        if not self.clients:
            return
        line = None
        for client in self.clients:
            if client.filter.wants(event, self.draw()):
                if line is None:
                    line = encode_line(tap_record(event, self.clock()))
                client.offer(line)

    def _switch(self) -> None:
        self.listening.on = bool(self.clients) or self.access
