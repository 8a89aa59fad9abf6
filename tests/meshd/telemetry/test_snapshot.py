"""The traffic snapshot from the metrics' counters: grouped per edge, nothing lost or invented."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from meshd.telemetry.snapshot import snapshot
from meshd.traffic import HttpEdge, TcpEdge

IN = ("inbound", "spiffe://t/svc/web", "api")
OUT = ("outbound", "spiffe://t/svc/web", "api")
BUCKETS = (0.01, 0.1, 1.0)


@dataclass
class Series:
    counts: list[int]
    sum: float


@dataclass
class Hist:
    buckets: tuple[float, ...] = BUCKETS
    series: dict[tuple[str, ...], Series] = field(default_factory=dict)


def http_of(
    requests: Mapping[tuple[str, ...], float], series: dict[tuple[str, ...], Series]
) -> tuple[HttpEdge, ...]:
    return snapshot("h", 2.0, 1.0, requests, Hist(series=series), {}, {}, {}).http


@pytest.mark.parametrize(
    ("requests", "series", "expected"),
    [
        ({}, {}, ()),
        (
            {(*IN, "2xx"): 3, (*IN, "5xx"): 1},
            {IN: Series([1, 2, 0, 1], 1.5)},
            (HttpEdge(*IN, {"2xx": 3, "5xx": 1}, (1, 2, 0, 1), 1.5),),
        ),
        (  # two edges, sorted; the classes seen only
            {(*OUT, "none"): 1, (*IN, "4xx"): 2},
            {OUT: Series([0, 0, 0, 1], 30.0), IN: Series([2, 0, 0, 0], 0.01)},
            (
                HttpEdge(*IN, {"4xx": 2}, (2, 0, 0, 0), 0.01),
                HttpEdge(*OUT, {"none": 1}, (0, 0, 0, 1), 30.0),
            ),
        ),
        (  # a counter without a histogram series (cannot happen today): zero latency, kept
            {(*IN, "2xx"): 1},
            {},
            (HttpEdge(*IN, {"2xx": 1}, (0, 0, 0, 0), 0.0),),
        ),
    ],
)
def test_http_edges(
    requests: dict[tuple[str, ...], float],
    series: dict[tuple[str, ...], Series],
    expected: tuple[HttpEdge, ...],
) -> None:
    assert http_of(requests, series) == expected


@pytest.mark.parametrize(
    ("opened", "active", "flows", "expected"),
    [
        ({}, {}, {}, ()),
        (  # open: opened minus closed; bytes only from closed connections
            {IN: 10},
            {IN: 1},
            {(*IN, "sent"): 12345, (*IN, "received"): 678},
            (TcpEdge(*IN, opened=10, open=1, bytes_in=12345, bytes_out=678),),
        ),
        (  # opened before the counters began (no ConnectionOpened seen): never below 0
            {},
            {OUT: -1},
            {(*OUT, "sent"): 5},
            (TcpEdge(*OUT, opened=0, open=0, bytes_in=5, bytes_out=0),),
        ),
        (
            {IN: 2, OUT: 3},
            {IN: 0, OUT: 3},
            {},
            (
                TcpEdge(*IN, opened=2, open=0, bytes_in=0, bytes_out=0),
                TcpEdge(*OUT, opened=3, open=3, bytes_in=0, bytes_out=0),
            ),
        ),
    ],
)
def test_tcp_edges(
    opened: dict[tuple[str, ...], float],
    active: dict[tuple[str, ...], float],
    flows: dict[tuple[str, ...], float],
    expected: tuple[TcpEdge, ...],
) -> None:
    assert snapshot("h", 2.0, 1.0, {}, Hist(), opened, active, flows).tcp == expected


def test_snapshot_carries_host_times_and_buckets() -> None:
    traffic = snapshot("web1", 1765000000.123, 1764990000.0, {}, Hist(), {}, {}, {})
    assert (traffic.host, traffic.taken, traffic.started) == ("web1", 1765000000.123, 1764990000.0)
    assert traffic.buckets == BUCKETS
    assert traffic.to_json()["version"] == 1
