"""The access log: one JSON line per HTTP request or TCP connection, sampled, to the journal.

Off by default; ``[access_log] sample`` (and per service,
``[access_log.services]``) in meshd's config switch it on (``AccessLogConfig``).
A request line has the tap's fields plus its ``x-request-id`` and the
source and destination SPIFFE identities; a connection line (when it
closes) its direction, identities, duration and bytes. Like the policy's log
(``authzlog``), the lines are written by the metrics consumer, off the
relay's path; peer text (paths, request ids) is ``clean``ed and the line is
JSON, so a peer never starts a line of its own.

``request_line`` and ``connection_line`` are pure; ``AccessLog`` draws.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable

from meshd.config import AccessLogConfig
from meshd.telemetry.events import ConnectionClosed, RequestObserved
from meshd.telemetry.logs import clean
from meshd.telemetry.tap import sampled, service_name, tap_record

log = logging.getLogger("meshd.access")


def identity(label: str, trust_domain: str) -> str:
    """The SPIFFE ID a metric label stands for ("" for an unauthenticated peer)."""
    if label.startswith("spiffe://"):
        return clean(label)
    if label in ("", "unauthenticated"):
        return ""
    return f"spiffe://{trust_domain}/svc/{clean(label)}"


def request_line(event: RequestObserved, now: float, trust_domain: str) -> str:
    """The access log's JSON object for one request, on one line."""
    record = tap_record(event, now)
    record["kind"] = "request"
    record["request_id"] = clean(event.request_id, 128)
    record["source_id"] = identity(event.source, trust_domain)
    record["destination_id"] = identity(event.destination, trust_domain)
    return json.dumps(record, separators=(",", ":"))


def connection_line(event: ConnectionClosed, now: float, trust_domain: str) -> str:
    """The access log's JSON object for one TCP connection (when it closed), on one line."""
    record = {
        "kind": "connection",
        "time": round(now, 6),
        "direction": event.direction,
        "source": service_name(event.source),
        "destination": service_name(event.destination),
        "source_id": identity(event.source, trust_domain),
        "destination_id": identity(event.destination, trust_domain),
        "duration_ms": round(event.duration * 1000.0, 3),
        "bytes_in": event.bytes_sent,  # from the client side, towards the destination
        "bytes_out": event.bytes_received,
        "error": clean(event.error),
    }
    return json.dumps(record, separators=(",", ":"))


class AccessLog:
    """Writes the sampled lines; ``configure`` after a reload."""

    def __init__(
        self,
        config: AccessLogConfig,
        trust_domain: str,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.trust_domain, self.on = config, trust_domain, config.on
        self.draw, self.clock = draw, clock

    def configure(self, config: AccessLogConfig, trust_domain: str) -> None:
        self.config, self.trust_domain, self.on = config, trust_domain, config.on

    def wants(self, source: str, destination: str) -> bool:
        ratio = self.config.ratio(service_name(source), service_name(destination))
        return ratio > 0 and sampled(ratio, self.draw())

    def request(self, event: RequestObserved) -> None:
        if self.wants(event.source, event.destination):
            log.info("%s", request_line(event, self.clock(), self.trust_domain))

    def closed(self, event: ConnectionClosed) -> None:
        if self.on and self.wants(event.source, event.destination):
            log.info("%s", connection_line(event, self.clock(), self.trust_domain))
