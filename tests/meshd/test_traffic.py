"""The /traffic contract: what meshd writes, meshctl reads back whole; what it cannot read,
it reads leniently."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.traffic import HttpEdge, TcpEdge, Traffic

FULL = Traffic(
    host="web1",
    taken=1765000000.123,
    started=1764990000.0,
    buckets=(0.001, 0.002),
    http=(
        HttpEdge(
            "inbound", "spiffe://t/svc/web", "api", {"2xx": 120, "5xx": 12}, (3, 10, 119), 1.25
        ),
    ),
    tcp=(TcpEdge("inbound", "spiffe://t/svc/web", "api", 10, 1, 12345, 678),),
)

CONTRACT: dict[str, Any] = {
    "version": 1,
    "host": "web1",
    "taken": 1765000000.123,
    "started": 1764990000.0,
    "buckets": [0.001, 0.002],
    "http": [
        {
            "direction": "inbound",
            "source": "spiffe://t/svc/web",
            "destination": "api",
            "classes": {"2xx": 120, "5xx": 12},
            "latency": [3, 10, 119],
            "latency_sum": 1.25,
        }
    ],
    "tcp": [
        {
            "direction": "inbound",
            "source": "spiffe://t/svc/web",
            "destination": "api",
            "opened": 10,
            "open": 1,
            "bytes_in": 12345,
            "bytes_out": 678,
        }
    ],
}


def test_to_json_is_the_contract() -> None:
    assert FULL.to_json() == CONTRACT
    assert Traffic.from_json(CONTRACT) == FULL
    assert FULL.http[0].requests == 132


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({}, Traffic("", 0.0, 0.0, ())),
        (
            {"host": 7, "taken": "x", "started": True, "buckets": [0.5, "1", None], "new": 1},
            Traffic("", 0.0, 0.0, (0.5,)),
        ),
        (
            {"http": [1, {"classes": {"2xx": 1, "bogus": 2, "5xx": "3"}, "latency": [1, 2.5]}]},
            Traffic("", 0.0, 0.0, (), http=(HttpEdge("", "", "", {"2xx": 1}, (1,), 0.0),)),
        ),
        (
            {"tcp": {"not": "a list"}, "http": "nope"},
            Traffic("", 0.0, 0.0, ()),
        ),
        (
            {"tcp": [{"direction": "outbound", "opened": True, "open": 2, "bytes_in": 1.5}]},
            Traffic("", 0.0, 0.0, (), tcp=(TcpEdge("outbound", "", "", 0, 2, 0, 0),)),
        ),
    ],
)
def test_from_json_is_lenient(doc: dict[str, Any], expected: Traffic) -> None:
    assert Traffic.from_json(doc) == expected
