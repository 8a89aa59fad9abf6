"""``meshctl top``'s arithmetic: meshd's ``GET /traffic`` snapshots in, golden signals out.

Pure: no sockets, no clock (each snapshot carries the time meshd took it).

- ``Snapshot.from_json`` reads one host's snapshot (``meshd.traffic``, the
  contract: cumulative counters since ``started``), bounded, refusing with
  ValueError what the arithmetic cannot use. Callers' SPIFFE IDs become names
  (``short_name``: a service's ID is the service).
- ``advance`` keeps a sliding window of snapshots per host: the oldest one
  kept is the newest that is at least ``span`` seconds old, so the deltas
  between its ends cover the window. A restart of meshd (another
  ``started``, another bucket ladder, or any counter going down or vanishing)
  starts the window over at the new snapshot.
- ``Watch`` folds one poll of every host (a snapshot or the error it ended
  in) into the windows and the hosts' reachability.
- ``summarize`` turns the windows into rows: per service the server side
  (direction inbound, destination = the service) summed over hosts; per edge
  the client side (direction outbound, source -> destination). Rates are
  counter deltas over each host's own time between the window's ends, summed
  over hosts; the success rate is (total - 5xx - none) / total; percentiles
  come from the summed bucket deltas, interpolated linearly inside the bucket
  that holds the rank (as Prometheus' ``histogram_quantile`` does: the answer
  is always inside the right bucket), the overflow bucket answering its
  lower bound, the last finite one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from meshd.errors import MeshError
from meshd.identity import SpiffeId
from meshd.traffic import VERSION, HttpEdge, TcpEdge, Traffic

Key = tuple[str, str, str]  # direction, source service, destination service
SortKey = Literal["rps", "success", "p99", "name"]
SORTS: tuple[SortKey, ...] = ("rps", "success", "p99", "name")
FAILED = ("5xx", "none")  # what a caller sees as a failure
MAX_ENTRIES = 10_000  # series in one snapshot: a bound on what one host may make us hold
MAX_BUCKETS = 200
MAX_NAME = 256


@dataclass(frozen=True, slots=True)
class HttpCounters:
    """Cumulative requests of one (direction, source, destination): by status class and by
    latency bucket (``len(buckets) + 1`` entries, the last for beyond the last bound)."""

    key: Key
    classes: tuple[tuple[str, int], ...]
    latency: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.classes)

    def count(self, status_class: str) -> int:
        return next((n for c, n in self.classes if c == status_class), 0)


@dataclass(frozen=True, slots=True)
class TcpCounters:
    """Connections of one (direction, source, destination): opened (cumulative), open now,
    and bytes from (``bytes_in``) and to (``bytes_out``) the client side (cumulative)."""

    key: Key
    opened: int
    open: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One host's ``GET /traffic``: counters since ``started`` as of ``taken`` (epoch s)."""

    host: str
    taken: float
    started: float
    buckets: tuple[float, ...]
    http: tuple[HttpCounters, ...] = ()
    tcp: tuple[TcpCounters, ...] = ()

    @classmethod
    def from_json(cls, doc: object, host: str) -> Snapshot:
        """The snapshot in ``doc`` (read by ``meshd.traffic``, the contract's module, after
        its sizes are checked); ValueError saying what is wrong with it for ``top``."""
        if not isinstance(doc, Mapping):
            raise ValueError("the snapshot is not a JSON object")  # noqa: TRY004 - bad input
        for name, limit in (("buckets", MAX_BUCKETS), ("http", MAX_ENTRIES), ("tcp", MAX_ENTRIES)):
            value = doc.get(name)
            if isinstance(value, list) and len(value) > limit:
                raise ValueError(f"{name} has {len(value)} entries, more than {limit}")
        return cls.of(Traffic.from_json(doc), host)

    @classmethod
    def of(cls, traffic: Traffic, host: str) -> Snapshot:
        """``traffic`` checked for what the arithmetic needs: ValueError if it falls short."""
        if traffic.version != VERSION:
            raise ValueError(f"unknown snapshot version {traffic.version}")
        buckets = traffic.buckets
        if not buckets or any(b <= a for a, b in itertools.pairwise(buckets)):
            raise ValueError("buckets must be a non-empty increasing list")
        for name, value in (("taken", traffic.taken), ("started", traffic.started)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} is missing or not a time: {value}")
        http = tuple(_http(e, len(buckets) + 1) for e in traffic.http)
        return cls(
            host, traffic.taken, traffic.started, buckets, http, tuple(map(_tcp, traffic.tcp))
        )


def _count(value: int, what: str) -> int:
    if value < 0:
        raise ValueError(f"{what} is negative: {value}")
    return value


def short_name(text: str) -> str:
    """A service's ID as its name ("spiffe://td/svc/web": "web"), another mesh ID as its
    kind and name ("host/web1"): the metric labels carry the caller's full ID."""
    try:
        spiffe = SpiffeId.parse(text) if text.startswith("spiffe://") else None
    except MeshError:
        return text
    if spiffe is None or spiffe.kind is None:
        return text
    return spiffe.name if spiffe.kind == "svc" else f"{spiffe.kind}/{spiffe.name}"


def _key(direction: str, source: str, destination: str) -> Key:
    if direction not in ("inbound", "outbound"):
        raise ValueError(f"direction is {direction[:40]!r}, not inbound or outbound")
    if not source or not destination or max(len(source), len(destination)) > MAX_NAME:
        raise ValueError("source and destination must be names")
    return (direction, short_name(source), short_name(destination))


def _http(edge: HttpEdge, slots: int) -> HttpCounters:
    if len(edge.latency) != slots:
        raise ValueError(f"latency must have {slots} entries (one more than buckets)")
    classes = tuple(sorted((c, _count(n, f"classes[{c}]")) for c, n in edge.classes.items()))
    latency = tuple(_count(n, "latency[]") for n in edge.latency)
    return HttpCounters(_key(edge.direction, edge.source, edge.destination), classes, latency)


def _tcp(edge: TcpEdge) -> TcpCounters:
    counts = [_count(getattr(edge, k), k) for k in ("opened", "open", "bytes_in", "bytes_out")]
    return TcpCounters(_key(edge.direction, edge.source, edge.destination), *counts)


# the sliding window


def restarted(old: Snapshot, new: Snapshot) -> bool:
    """``new`` does not continue ``old``'s counters: meshd restarted (or time went back)."""
    if new.started != old.started or new.buckets != old.buckets or new.taken <= old.taken:
        return True
    http = {e.key: e for e in new.http}
    tcp = {e.key: e for e in new.tcp}
    return any(_http_went_down(e, http.get(e.key)) for e in old.http) or any(
        _tcp_went_down(e, tcp.get(e.key)) for e in old.tcp
    )


def _http_went_down(old: HttpCounters, new: HttpCounters | None) -> bool:
    if new is None:
        return True
    return any(new.count(c) < n for c, n in old.classes) or any(
        b < a for a, b in zip(old.latency, new.latency, strict=True)
    )


def _tcp_went_down(old: TcpCounters, new: TcpCounters | None) -> bool:
    if new is None:
        return True
    return new.opened < old.opened or new.bytes_in < old.bytes_in or new.bytes_out < old.bytes_out


def advance(window: tuple[Snapshot, ...], snap: Snapshot, span: float) -> tuple[Snapshot, ...]:
    """``window`` with ``snap`` added, trimmed to cover ``span`` seconds (see the docstring)."""
    if window and restarted(window[-1], snap):
        return (snap,)
    kept = (*window, snap)
    start = 0
    while start + 1 < len(kept) and kept[start + 1].taken <= snap.taken - span:
        start += 1
    return kept[start:]


@dataclass(frozen=True, slots=True)
class HostState:
    """What the last poll of a host said, and its window of snapshots."""

    host: str
    window: tuple[Snapshot, ...] = ()
    error: str | None = None  # the last poll failed: why
    polled: bool = False

    @property
    def reachable(self) -> bool:
        return self.polled and self.error is None


@dataclass(frozen=True, slots=True)
class Watch:
    """Every watched host's state; ``observe`` folds in one poll."""

    span: float
    hosts: tuple[HostState, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, names: Iterable[str], span: float) -> Watch:
        return cls(span, tuple(HostState(n) for n in names))

    def observe(self, results: Mapping[str, Snapshot | str]) -> Watch:
        """Each host's snapshot, or the error its poll ended in (a failed host's window is
        dropped: its rates would be stale). A host missing from ``results`` is unchanged."""
        return replace(self, hosts=tuple(self._one(h, results.get(h.host)) for h in self.hosts))

    def _one(self, state: HostState, result: Snapshot | str | None) -> HostState:
        if result is None:
            return state
        if isinstance(result, str):
            return HostState(state.host, (), result, True)
        return HostState(state.host, advance(state.window, result, self.span), None, True)


# the rows


@dataclass(frozen=True, slots=True)
class Signals:
    """Golden signals over a window; None where nothing was measured."""

    rps: float = 0.0
    success: float | None = None  # share of requests that got neither a 5xx nor no answer
    p50: float | None = None  # seconds
    p95: float | None = None
    p99: float | None = None


@dataclass(frozen=True, slots=True)
class ServiceRow:
    service: str
    signals: Signals
    bytes_per_s: float
    open: int
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EdgeRow:
    source: str
    destination: str
    signals: Signals


@dataclass(frozen=True, slots=True)
class PathRow:
    """A request path from the tap: method, path, count, success, best/worst/last latency."""

    method: str
    path: str
    count: int
    success: float | None
    best: float
    worst: float
    last: float


@dataclass(frozen=True, slots=True)
class HostRow:
    host: str
    reachable: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class Top:
    """One refresh of ``meshctl top``. ``paths`` is None when no tap was read;
    ``paths_missing`` names the hosts whose tap is not streaming, and why."""

    services: tuple[ServiceRow, ...]
    edges: tuple[EdgeRow, ...]
    hosts: tuple[HostRow, ...]
    paths: tuple[PathRow, ...] | None = None
    paths_missing: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class _Sum:
    """Deltas of one series summed over hosts (a scratch accumulator, never returned)."""

    rps: float = 0.0
    total: int = 0
    failed: int = 0
    buckets: dict[float, int] = field(default_factory=dict)
    bytes_per_s: float = 0.0
    open: int = 0
    hosts: set[str] = field(default_factory=set)

    def add_http(
        self, old: HttpCounters | None, new: HttpCounters, bounds: Sequence[float], dt: float
    ) -> None:
        total = new.total - (old.total if old else 0)
        self.rps += total / dt
        self.total += total
        self.failed += sum(new.count(c) - (old.count(c) if old else 0) for c in FAILED)
        before = old.latency if old else (0,) * len(new.latency)
        for bound, a, b in zip((*bounds, math.inf), before, new.latency, strict=True):
            self.buckets[bound] = self.buckets.get(bound, 0) + b - a

    def signals(self) -> Signals:
        success = (self.total - self.failed) / self.total if self.total else None
        p50, p95, p99 = (quantile(q, self.buckets) for q in (0.5, 0.95, 0.99))
        return Signals(self.rps, success, p50, p95, p99)


def quantile(q: float, buckets: Mapping[float, int]) -> float | None:
    """The ``q`` quantile of counts by upper bound (``inf``: the overflow bucket), linear
    inside its bucket; the overflow bucket answers the last finite bound. None if empty."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0, 0.0
    for bound in sorted(buckets):
        count = buckets[bound]
        if count > 0 and seen + count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound if math.isfinite(bound) else lower
    return lower


def summarize(watch: Watch, paths: tuple[PathRow, ...] | None = None) -> Top:
    """The rows of ``watch``'s windows (see the module docstring), sorted by name."""
    services: dict[str, _Sum] = {}
    edges: dict[tuple[str, str], _Sum] = {}
    for state in watch.hosts:
        if state.window:
            _add_host(state.window, services, edges)
    return Top(
        tuple(
            ServiceRow(name, s.signals(), s.bytes_per_s, s.open, tuple(sorted(s.hosts)))
            for name, s in sorted(services.items())
        ),
        tuple(EdgeRow(src, dst, s.signals()) for (src, dst), s in sorted(edges.items())),
        tuple(HostRow(h.host, h.reachable, h.error) for h in watch.hosts),
        paths,
    )


def _add_host(
    window: tuple[Snapshot, ...], services: dict[str, _Sum], edges: dict[tuple[str, str], _Sum]
) -> None:
    """One host's window: inbound series into ``services``, outbound into ``edges``."""
    first, last = window[0], window[-1]
    dt = last.taken - first.taken
    old_http = {e.key: e for e in first.http}
    old_tcp = {e.key: e for e in first.tcp}
    for http in last.http:
        direction, source, destination = http.key
        if direction == "inbound":
            row = services.setdefault(destination, _Sum())
            row.hosts.add(last.host)
        else:
            row = edges.setdefault((source, destination), _Sum())
        if dt > 0:
            row.add_http(old_http.get(http.key), http, last.buckets, dt)
    for tcp in last.tcp:
        if tcp.key[0] == "inbound":
            _add_tcp(services.setdefault(tcp.key[2], _Sum()), old_tcp.get(tcp.key), tcp, dt)
            services[tcp.key[2]].hosts.add(last.host)


def _add_tcp(row: _Sum, old: TcpCounters | None, new: TcpCounters, dt: float) -> None:
    row.open += new.open
    if dt > 0:
        before = old.bytes_in + old.bytes_out if old else 0
        row.bytes_per_s += (new.bytes_in + new.bytes_out - before) / dt


# choosing and ordering rows


def _order(signals: Signals, name: tuple[str, ...], by: SortKey) -> tuple[Any, ...]:
    """Busiest, worst success and slowest first; names break ties (and sort ``name``)."""
    if by == "rps":
        return (-signals.rps, name)
    if by == "success":
        return (signals.success is None, signals.success or 0.0, name)
    if by == "p99":
        return (signals.p99 is None, -(signals.p99 or 0.0), name)
    return (name,)


def sort_key(text: str) -> SortKey | None:
    """``text`` as a way to sort rows, None if it is none of SORTS."""
    return next((key for key in SORTS if key == text), None)


def select(top: Top, service: str | None, by: SortKey) -> Top:
    """``top`` with only ``service`` (and the edges into or out of it), sorted ``by``."""
    services = [s for s in top.services if service is None or s.service == service]
    edges = [e for e in top.edges if service is None or service in (e.source, e.destination)]
    services.sort(key=lambda s: _order(s.signals, (s.service,), by))
    edges.sort(key=lambda e: _order(e.signals, (e.source, e.destination), by))
    return replace(top, services=tuple(services), edges=tuple(edges))
