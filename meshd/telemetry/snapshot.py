"""The traffic snapshot (GET /traffic) built from the metrics' own counters.

``snapshot`` reads the label-tuple dicts ``meshd.telemetry.metrics`` keeps
for /metrics (one source of truth: the snapshot and the exposition cannot
disagree) and groups them per edge (direction, source, destination) into a
``meshd.traffic.Traffic``. It runs when /traffic is asked, never per request.
Pure: the clock readings are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from meshd.traffic import HttpEdge, TcpEdge, Traffic

Labels = tuple[str, ...]
Edge = tuple[str, str, str]


class Series(Protocol):
    """One histogram series: the count per bucket (not cumulative) and the sum."""

    @property
    def counts(self) -> Sequence[int]: ...
    @property
    def sum(self) -> float: ...


class Histogram(Protocol):
    """A histogram family: its bounds and a series per label tuple."""

    @property
    def buckets(self) -> tuple[float, ...]: ...
    @property
    def series(self) -> Mapping[Labels, Series]: ...


def snapshot(
    host: str,
    taken: float,
    started: float,
    requests: Mapping[Labels, float],
    latency: Histogram,
    opened: Mapping[Labels, float],
    active: Mapping[Labels, float],
    flows: Mapping[Labels, float],
) -> Traffic:
    """The snapshot of ``host``'s counters: ``requests`` by (edge, status class), ``latency``
    by edge, connections ``opened`` and ``active`` by edge, bytes by (edge, flow)."""
    return Traffic(
        host=host,
        taken=taken,
        started=started,
        buckets=latency.buckets,
        http=_http(requests, latency),
        tcp=_tcp(opened, active, flows),
    )


def _http(requests: Mapping[Labels, float], latency: Histogram) -> tuple[HttpEdge, ...]:
    classes: dict[Edge, dict[str, int]] = {}
    for (direction, source, destination, status_class), count in requests.items():
        classes.setdefault((direction, source, destination), {})[status_class] = int(count)
    empty = (0,) * (len(latency.buckets) + 1)
    edges = sorted(classes.keys() | {_edge(k) for k in latency.series})
    return tuple(_http_edge(e, classes.get(e, {}), latency.series.get(e), empty) for e in edges)


def _http_edge(
    edge: Edge, classes: dict[str, int], series: Series | None, empty: tuple[int, ...]
) -> HttpEdge:
    counts = tuple(series.counts) if series is not None else empty
    total = series.sum if series is not None else 0.0
    return HttpEdge(*edge, dict(sorted(classes.items())), counts, total)


def _tcp(
    opened: Mapping[Labels, float],
    active: Mapping[Labels, float],
    flows: Mapping[Labels, float],
) -> tuple[TcpEdge, ...]:
    edges = sorted({_edge(k) for k in (*opened, *active, *flows)})
    return tuple(
        TcpEdge(
            *edge,
            opened=int(opened.get(edge, 0)),
            open=max(0, int(active.get(edge, 0))),
            bytes_in=int(flows.get((*edge, "sent"), 0)),
            bytes_out=int(flows.get((*edge, "received"), 0)),
        )
        for edge in edges
    )


def _edge(labels: Labels) -> Edge:
    return labels[0], labels[1], labels[2]
