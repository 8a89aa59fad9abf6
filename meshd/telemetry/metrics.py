"""Prometheus metrics for meshd, fed by the event bus.

``Metrics`` subscribes to the ``EventBus``; ``collect()`` drains its queue
and updates counters and histograms kept in dicts keyed by label tuples, so
one event costs a few dict operations. The daemon sets the gauges that are
not events (certificate expiry, document versions). ``render()`` writes the
Prometheus text exposition format 0.0.4 served at the admin API's /metrics,
``traffic()`` the snapshot of the same counters served at /traffic
(``meshd.traffic``, built by ``meshd.telemetry.snapshot``).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio
import psutil

from meshd import __version__
from meshd.telemetry.events import (
    AuthzDecided,
    AuthzTally,
    CertificateRenewed,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    Event,
    EventBus,
    HandshakeFailed,
    IssuerAnswered,
    LinkRetired,
    RateLimited,
    RenewalFailed,
    RequestCompleted,
    RequestObserved,
    Subscription,
)
from meshd.telemetry.snapshot import snapshot
from meshd.traffic import Traffic

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# 24 bounds from 1 ms to 10 s, about 1.5x apart: a p99 read from them (by ``top`` or
# PromQL's histogram_quantile) is off by at most one such step
REQUEST_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10,
)  # fmt: skip
CONNECTION_BUCKETS = (0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 14400)
EDGE = ("direction", "source", "destination")

Labels = tuple[str, ...]


class Family:
    """One metric family: name, help, type and a value per label tuple."""

    def __init__(self, name: str, help_text: str, kind: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.kind = kind
        self.labels = tuple(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, key: Labels, amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, key: Labels, value: float) -> None:
        self.values[key] = value

    def samples(self) -> Iterator[str]:
        for key in sorted(self.values):
            yield sample(self.name, self.labels, key, self.values[key])


class _Series:
    __slots__ = ("count", "counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.count = 0
        self.sum = 0.0


class Histogram(Family):
    """A histogram family; bucket counts are kept per bucket and summed when rendered."""

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, "histogram", labels)
        self.buckets = tuple(float(b) for b in buckets)
        self.series: dict[Labels, _Series] = {}

    def observe(self, key: Labels, value: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series(len(self.buckets) + 1)
        series.counts[bisect_left(self.buckets, value)] += 1
        series.count += 1
        series.sum += value

    def samples(self) -> Iterator[str]:
        names = (*self.labels, "le")
        for key in sorted(self.series):
            series = self.series[key]
            total = 0
            for bound, count in zip((*self.buckets, math.inf), series.counts, strict=True):
                total += count
                yield sample(f"{self.name}_bucket", names, (*key, _number(bound)), total)
            yield sample(f"{self.name}_sum", self.labels, key, series.sum)
            yield sample(f"{self.name}_count", self.labels, key, series.count)


class Metrics:
    """The daemon's metrics: an event-bus consumer plus gauges set by the daemon."""

    def __init__(self, bus: EventBus, capacity: int = 65536, process_metrics: bool = True) -> None:
        self.bus = bus
        self.subscription = bus.subscribe(capacity)
        self._tracked: dict[str, Subscription] = {"metrics": self.subscription}
        self._process = psutil.Process() if process_metrics else None
        self._families = _families()
        f = self._families
        self._conn, self._bytes, self._req = f["connections"], f["bytes"], f["requests"]
        self._req_duration = _histogram(f["request_duration"])
        self._conn_duration = _histogram(f["connection_duration"])
        self._active, self._opened_total = f["active"], f["opened"]
        self.started = time.time()  # when these counters began (a restart starts them over)
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            ConnectionOpened: self._opened,
            ConnectionClosed: self._closed,
            RequestCompleted: self._request,
            RequestObserved: self._request,  # the same, noted for the tap and access log
            HandshakeFailed: self._handshake,
            ConnectionRefused: self._refused,
            IssuerAnswered: self._issuer,
            CertificateRenewed: self._renewed,
            RenewalFailed: self._renewal_failed,
            LinkRetired: self._retired,
            AuthzDecided: self._authz,
            AuthzTally: self._tally,
            RateLimited: self._limited,
        }
        self._decisions, self._would_deny = f["authz_decisions"], f["authz_would_deny"]
        f["info"].set((__version__,), 1)

    def tap(self, kind: type[Event], handler: Callable[[Any], None]) -> None:
        """Hand every event of ``kind`` to ``handler`` too, after counting it.

        For consumers of a few rare kinds (the authz log): a subscription of
        their own would add an append to every event the proxy publishes.
        """
        counted = self._handlers[kind]

        def both(event: Any) -> None:
            counted(event)
            handler(event)

        self._handlers[kind] = both

    def track(self, consumer: str, subscription: Subscription) -> None:
        """Count the drops of another consumer's subscription in meshd_events_dropped_total."""
        self._tracked[consumer] = subscription

    def collect(self, limit: int | None = None) -> int:
        """Apply queued events (all, or at most ``limit``); return how many."""
        handlers = self._handlers
        queue = self.subscription.queue
        n = len(queue) if limit is None else min(limit, len(queue))
        for _ in range(n):
            event = queue.popleft()
            handlers[type(event)](event)
        return n

    async def run(self, interval: float = 0.05, batch: int = 1000) -> None:
        """Collect often, in small batches: a long one would stall the relay sharing the loop."""
        while True:
            done = self.collect(batch)
            await anyio.sleep(0 if done == batch else interval)

    def set_tap_dropped(self, dropped: int) -> None:
        self._families["tap_dropped"].set((), dropped)

    def set_certificate_expiry(self, timestamp: float) -> None:
        self._families["cert_expiry"].set((), timestamp)

    def set_document_version(self, kind: str, version: int) -> None:
        self._families["doc_version"].set((kind,), version)

    def set_document_set_aside(self, kind: str, set_aside: bool) -> None:
        self._families["doc_set_aside"].set((kind,), 1 if set_aside else 0)

    def set_last_reload(self, ok: bool, timestamp: float) -> None:
        self._families["reload_ok"].set((), 1 if ok else 0)
        self._families["reload_at"].set((), timestamp)

    def traffic(self, host: str) -> Traffic:
        """The snapshot of the traffic counters (GET /traffic), as /metrics has them now."""
        self._fold_open()
        return snapshot(
            host,
            time.time(),
            self.started,
            self._req.values,
            self._req_duration,
            self._opened_total.values,
            self._active.values,
            self._bytes.values,
        )

    def dropped(self) -> dict[str, int]:
        """Dropped events per tracked consumer."""
        return {name: sub.dropped for name, sub in self._tracked.items()}

    def render(self) -> str:
        """The Prometheus text exposition of every family."""
        self._refresh()
        self._fold_open()
        lines: list[str] = []
        for family in self._families.values():
            lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            lines.extend(family.samples())
        return "\n".join(lines) + "\n"

    def _refresh(self) -> None:
        f = self._families
        f["dropped"].set((), sum(self.dropped().values()))
        f["published"].set((), self.bus.published)
        if self._process is None:
            return
        try:
            with self._process.oneshot():
                f["rss"].set((), self._process.memory_info().rss)
                f["fds"].set((), self._process.num_fds())
        except psutil.Error:
            return

    def _opened(self, e: ConnectionOpened) -> None:
        edge = (e.direction, e.source, e.destination)
        self._opened_total.inc(edge)
        self._active.inc(edge)

    def _closed(self, e: ConnectionClosed) -> None:
        edge = (e.direction, e.source, e.destination)
        self._active.inc(edge, -1)
        self._conn.inc((*edge, "error" if e.error else "ok"))
        # what the counters took in while it was open is counted already (``_fold_open``)
        self._bytes.inc((*edge, "sent"), e.bytes_sent - e.counted_sent)
        self._bytes.inc((*edge, "received"), e.bytes_received - e.counted_received)
        self._conn_duration.observe(edge, e.duration)

    def _add_bytes(self, edge: Labels, sent: int, received: int) -> None:
        if sent:
            self._bytes.inc((*edge, "sent"), sent)
        if received:
            self._bytes.inc((*edge, "received"), received)

    def _fold_open(self) -> None:
        """Take in the bytes open connections moved since the last read (``live``)."""
        for edge, sent, received in self.bus.open.fold():
            self._add_bytes(edge, sent, received)

    def _request(self, e: RequestCompleted) -> None:
        edge = (e.direction, e.source, e.destination)
        self._req.inc((*edge, status_class(e.status)))
        self._req_duration.observe(edge, e.duration)

    def _handshake(self, e: HandshakeFailed) -> None:
        self._families["handshake_failures"].inc((e.listener, e.reason))

    def _refused(self, e: ConnectionRefused) -> None:
        self._families["refused"].inc((e.listener, e.reason))

    def _issuer(self, e: IssuerAnswered) -> None:
        self._families["issuer_requests"].inc((e.result,))

    def _renewed(self, e: CertificateRenewed) -> None:
        if e.layer == "renewed":  # a push or a new trust bundle is not a renewal
            self._families["renewals"].inc(("ok",))

    def _renewal_failed(self, e: RenewalFailed) -> None:
        self._families["renewals"].inc(("failed",))

    def _retired(self, e: LinkRetired) -> None:
        self._families["links_retired"].inc((e.reason,))

    def _authz(self, e: AuthzDecided) -> None:
        self._decisions.inc((e.service, e.decision, e.rule))
        for rule in e.would_deny:
            self._would_deny.inc((e.service, rule))

    def _tally(self, e: AuthzTally) -> None:
        count, e.count = e.count, 0  # taken: the proxy publishes it again at its next count
        if count:
            self._decisions.inc((e.service, "allow", e.rule), count)

    def _limited(self, e: RateLimited) -> None:
        self._families["ratelimit_limited"].inc((e.service, e.rule))


def _families() -> dict[str, Family]:
    return {
        "connections": Family(
            "meshd_connections_total",
            "TCP connections closed, by result.",
            "counter",
            (*EDGE, "result"),
        ),
        "bytes": Family(
            "meshd_connection_bytes_total",
            "Bytes relayed (flow sent: from the client side, received: to it), open"
            " connections included.",
            "counter",
            (*EDGE, "flow"),
        ),
        "requests": Family(
            "meshd_requests_total",
            "HTTP requests completed, by status class.",
            "counter",
            (*EDGE, "status_class"),
        ),
        "request_duration": Histogram(
            "meshd_request_duration_seconds", "HTTP request latency.", EDGE, REQUEST_BUCKETS
        ),
        "connection_duration": Histogram(
            "meshd_connection_duration_seconds",
            "TCP connection lifetime.",
            EDGE,
            CONNECTION_BUCKETS,
        ),
        "handshake_failures": Family(
            "meshd_handshake_failures_total",
            "Failed TLS handshakes.",
            "counter",
            ("listener", "reason"),
        ),
        "links_retired": Family(
            "meshd_links_retired_total",
            "Links replaced before their end, or torn down, by why.",
            "counter",
            ("reason",),
        ),
        "refused": Family(
            "meshd_connections_refused_total",
            "Connections refused by meshd.",
            "counter",
            ("listener", "reason"),
        ),
        "issuer_requests": Family(
            "meshd_issuer_requests_total",
            "POST /issue requests answered by this issuer, by result.",
            "counter",
            ("result",),
        ),
        "renewals": Family(
            "meshd_certificate_renewals_total",
            "Renewal rounds of meshd's own certificate, by result (failed: no issuer signed).",
            "counter",
            ("result",),
        ),
        "authz_decisions": Family(
            "meshd_authz_decisions_total",
            "Policy decisions on inbound requests and connections (a connection allowed"
            " wholesale at L4 counts once).",
            "counter",
            ("service", "decision", "rule"),
        ),
        "authz_would_deny": Family(
            "meshd_authz_would_deny_total",
            "Audit rules (and audit defaults) that would have denied, by rule.",
            "counter",
            ("service", "rule"),
        ),
        "ratelimit_limited": Family(
            "meshd_ratelimit_limited_total",
            "Requests (429) and connections (reset) refused by a rate limit.",
            "counter",
            ("service", "rule"),
        ),
        "opened": Family(
            "meshd_connections_opened_total", "TCP connections opened.", "counter", EDGE
        ),
        "active": Family(
            "meshd_active_connections",
            "Open TCP connections (opened minus closed).",
            "gauge",
            EDGE,
        ),
        "dropped": Family(
            "meshd_events_dropped_total", "Telemetry events dropped by slow consumers.", "counter"
        ),
        "tap_dropped": Family(
            "meshd_tap_dropped_total",
            "Requests not sent to tap clients that read too slowly (GET /tap).",
            "counter",
        ),
        "published": Family(
            "meshd_events_published_total", "Telemetry events published.", "counter"
        ),
        "cert_expiry": Family(
            "meshd_certificate_expiry_timestamp_seconds",
            "When meshd's certificate expires (Unix time).",
            "gauge",
        ),
        "doc_version": Family(
            "meshd_document_version", "Version of each applied document.", "gauge", ("kind",)
        ),
        "doc_set_aside": Family(
            "meshd_document_set_aside",
            "1 while a stored document of this kind no longer validates and meshd runs without it.",
            "gauge",
            ("kind",),
        ),
        "reload_ok": Family(
            "meshd_config_last_reload_successful",
            "1 if the last start or reload applied, 0 if it was refused.",
            "gauge",
        ),
        "reload_at": Family(
            "meshd_config_last_reload_timestamp_seconds",
            "When meshd last started or reloaded (Unix time).",
            "gauge",
        ),
        "info": Family("meshd_info", "meshd build information.", "gauge", ("version",)),
        "rss": Family("process_resident_memory_bytes", "Resident memory of meshd.", "gauge"),
        "fds": Family("process_open_fds", "Open file descriptors of meshd.", "gauge"),
    }


def _histogram(family: Family) -> Histogram:
    assert isinstance(family, Histogram)
    return family


_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


def status_class(status: int) -> str:
    """``2xx`` for 200..299 and so on; ``none`` when no (valid) response arrived."""
    return _STATUS_CLASSES.get(status // 100, "none")


def sample(name: str, names: Labels, values: Labels, value: float) -> str:
    """One exposition line: ``name{a="x",b="y"} value``."""
    if not names:
        return f"{name} {_number(value)}"
    pairs = ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return f"{name}{{{pairs}}} {_number(value)}"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    try:
        value = float(value)
    except OverflowError:  # an int past any float (a gauge set from a document's version)
        return "+Inf" if value > 0 else "-Inf"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
