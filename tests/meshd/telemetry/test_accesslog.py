"""The access log's pure parts: which ratio applies, and the lines it writes."""

from __future__ import annotations

import json
import logging

import pytest

from meshd.config import AccessLogConfig
from meshd.telemetry.accesslog import AccessLog, connection_line, identity, request_line
from meshd.telemetry.events import ConnectionClosed, RequestObserved

TD = "t.mesh"
PER = (("api", 1.0), ("web", 0.5))


@pytest.mark.parametrize(
    ("sample", "services", "source", "destination", "ratio", "on"),
    [
        (0.0, (), "web", "api", 0.0, False),
        (1.0, (), "web", "api", 1.0, True),
        (0.0, PER, "web", "api", 1.0, True),  # the destination's first
        (0.0, PER, "web", "db", 0.5, True),  # then the source's
        (0.2, PER, "db", "cache", 0.2, True),  # then the host's
        (0.3, (("api", 0.0),), "web", "api", 0.0, True),  # a service switched off
    ],
)
def test_ratio(
    sample: float,
    services: tuple[tuple[str, float], ...],
    source: str,
    destination: str,
    ratio: float,
    on: bool,
) -> None:
    config = AccessLogConfig(sample, services)
    assert (config.ratio(source, destination), config.on) == (ratio, on)


@pytest.mark.parametrize(
    ("label", "spiffe"),
    [
        ("api", "spiffe://t.mesh/svc/api"),
        ("spiffe://t.mesh/host/a", "spiffe://t.mesh/host/a"),
        ("unauthenticated", ""),
    ],
)
def test_identity(label: str, spiffe: str) -> None:
    assert identity(label, TD) == spiffe


@pytest.mark.parametrize(
    ("path", "request_id", "path_shown", "id_shown"),
    [
        ("/orders", "r-1", "/orders", "r-1"),
        ("/a\nb", "x\x07y", "/a\\nb", "x\\x07y"),
    ],
)
def test_request_line(path: str, request_id: str, path_shown: str, id_shown: str) -> None:
    event = RequestObserved(
        "inbound", "spiffe://t.mesh/host/a", "api", "POST", 201, 0.002, path, request_id, 9
    )
    line = request_line(event, 1765000000.0, TD)
    assert "\n" not in line and line.isascii()
    assert json.loads(line) == {
        "kind": "request",
        "time": 1765000000.0,
        "direction": "inbound",
        "source": "spiffe://t.mesh/host/a",
        "destination": "api",
        "method": "POST",
        "path": path_shown,
        "status": 201,
        "latency_ms": 2.0,
        "bytes_in": 9,
        "bytes_out": 0,
        "request_id": id_shown,
        "source_id": "spiffe://t.mesh/host/a",
        "destination_id": "spiffe://t.mesh/svc/api",
    }


@pytest.mark.parametrize(("error", "shown"), [("", ""), ("reset\r\nby peer", "reset\\r\\nby peer")])
def test_connection_line(error: str, shown: str) -> None:
    event = ConnectionClosed("outbound", "web", "db", 100, 2000, 1.5, error)
    assert json.loads(connection_line(event, 5.0, TD)) == {
        "kind": "connection",
        "time": 5.0,
        "direction": "outbound",
        "source": "web",
        "destination": "db",
        "source_id": "spiffe://t.mesh/svc/web",
        "destination_id": "spiffe://t.mesh/svc/db",
        "duration_ms": 1500.0,
        "bytes_in": 100,
        "bytes_out": 2000,
        "error": shown,
    }


@pytest.mark.parametrize(
    ("sample", "draw", "lines"), [(0.0, 0.0, 0), (1.0, 0.99, 2), (0.5, 0.4, 2), (0.5, 0.6, 0)]
)
def test_sampling_decides_the_lines(
    sample: float, draw: float, lines: int, caplog: pytest.LogCaptureFixture
) -> None:
    log = AccessLog(AccessLogConfig(sample), TD, draw=lambda: draw, clock=lambda: 1.0)
    with caplog.at_level(logging.INFO, "meshd.access"):
        log.request(RequestObserved("inbound", "web", "api", "GET", 200, 0.1, "/", "", 0))
        log.closed(ConnectionClosed("inbound", "web", "api", 1, 2, 0.5))
    assert len([r for r in caplog.records if r.name == "meshd.access"]) == lines
