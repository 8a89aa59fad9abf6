"""Metrics: events in, exact Prometheus samples out, every line well formed."""

from __future__ import annotations

import itertools
import math
import re

import pytest

from meshd import __version__
from meshd.telemetry.events import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRefused,
    EventBus,
    HandshakeFailed,
    IssuerAnswered,
    RequestCompleted,
)
from meshd.telemetry.metrics import REQUEST_BUCKETS, Metrics, escape_label, status_class
from meshd.tls.failures import HandshakeFailure

WEB, API = "spiffe://t.mesh/svc/web", "spiffe://t.mesh/svc/api"
EDGE = f'direction="outbound",source="{WEB}",destination="{API}"'

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?|Inf)|NaN)"
SAMPLE = re.compile(rf"({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)?\}})? ({_VALUE})")
HELP = re.compile(rf"# HELP ({_NAME}) .*")
TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")


def parse_exposition(text: str) -> dict[str, float]:
    """Check every line of a text exposition; return ``name{labels}`` -> value."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if match := TYPE.fullmatch(line):
            assert match[1] not in types, f"second TYPE for {match[1]}"
            types[match[1]] = match[2]
            continue
        if HELP.fullmatch(line):
            continue
        match = SAMPLE.fullmatch(line)
        assert match, f"malformed line: {line!r}"
        family = re.sub(r"_(bucket|sum|count)$", "", match[1])
        assert match[1] in types or types.get(family) == "histogram", f"no TYPE for {line!r}"
        key = line.rsplit(" ", 1)[0]
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(match[3].replace("Inf", "inf"))
    return samples


def fed(*events: object) -> Metrics:
    bus = EventBus()
    metrics = Metrics(bus, process_metrics=False)
    for event in events:
        bus.publish(event)  # type: ignore[arg-type]
    assert metrics.collect() == len(events)
    return metrics


def test_connection_events() -> None:
    metrics = fed(
        ConnectionOpened("outbound", WEB, API),
        ConnectionOpened("outbound", WEB, API),
        ConnectionOpened("inbound", API, WEB),
        ConnectionClosed("outbound", WEB, API, 100, 2000, 0.5),
        ConnectionClosed("outbound", WEB, API, 1, 2, 0.02, error="reset"),
    )
    samples = parse_exposition(metrics.render())
    assert samples[f'meshd_connections_total{{{EDGE},result="ok"}}'] == 1
    assert samples[f'meshd_connections_total{{{EDGE},result="error"}}'] == 1
    assert samples[f'meshd_connection_bytes_total{{{EDGE},flow="sent"}}'] == 101
    assert samples[f'meshd_connection_bytes_total{{{EDGE},flow="received"}}'] == 2002
    inbound = f'direction="inbound",source="{API}",destination="{WEB}"'
    assert samples[f"meshd_active_connections{{{EDGE}}}"] == 0
    assert samples[f"meshd_active_connections{{{inbound}}}"] == 1
    assert samples[f"meshd_connections_opened_total{{{EDGE}}}"] == 2
    assert samples[f"meshd_connections_opened_total{{{inbound}}}"] == 1
    assert samples[f"meshd_connection_duration_seconds_count{{{EDGE}}}"] == 2
    assert samples[f"meshd_connection_duration_seconds_sum{{{EDGE}}}"] == pytest.approx(0.52)
    assert samples[f'meshd_connection_duration_seconds_bucket{{{EDGE},le="0.1"}}'] == 1
    assert samples[f'meshd_connection_duration_seconds_bucket{{{EDGE},le="1"}}'] == 2


def test_request_histogram_exact_lines() -> None:
    metrics = fed(
        RequestCompleted("outbound", WEB, API, "GET", 200, 0.0005),
        RequestCompleted("outbound", WEB, API, "GET", 503, 0.0031),
        RequestCompleted("outbound", WEB, API, "POST", 0, 12.0),
    )
    lines = [line for line in metrics.render().splitlines() if "meshd_request" in line]
    assert lines == [
        "# HELP meshd_requests_total HTTP requests completed, by status class.",
        "# TYPE meshd_requests_total counter",
        f'meshd_requests_total{{{EDGE},status_class="2xx"}} 1',
        f'meshd_requests_total{{{EDGE},status_class="5xx"}} 1',
        f'meshd_requests_total{{{EDGE},status_class="none"}} 1',
        "# HELP meshd_request_duration_seconds HTTP request latency.",
        "# TYPE meshd_request_duration_seconds histogram",
        *(
            f'meshd_request_duration_seconds_bucket{{{EDGE},le="{le}"}} {count}'
            for le, count in [
                ("0.001", 1), ("0.002", 1), ("0.003", 1), ("0.005", 2), ("0.0075", 2),
                ("0.01", 2), ("0.015", 2), ("0.02", 2), ("0.03", 2), ("0.05", 2),
                ("0.075", 2), ("0.1", 2), ("0.15", 2), ("0.2", 2), ("0.3", 2), ("0.5", 2),
                ("0.75", 2), ("1", 2), ("1.5", 2), ("2", 2), ("3", 2), ("5", 2),
                ("7.5", 2), ("10", 2), ("+Inf", 3),
            ]
        ),
        f"meshd_request_duration_seconds_sum{{{EDGE}}} 12.0036",
        f"meshd_request_duration_seconds_count{{{EDGE}}} 3",
    ]  # fmt: skip


def test_request_buckets_are_fine_enough_for_a_p99() -> None:
    assert len(REQUEST_BUCKETS) >= 20
    assert (REQUEST_BUCKETS[0], REQUEST_BUCKETS[-1]) == (0.001, 10)
    assert list(REQUEST_BUCKETS) == sorted(set(REQUEST_BUCKETS))
    assert max(b / a for a, b in itertools.pairwise(REQUEST_BUCKETS)) <= 2


def test_traffic_is_built_from_the_rendered_counters() -> None:
    """The snapshot and /metrics read the same counters: every number of one is in the other."""
    metrics = fed(
        ConnectionOpened("inbound", WEB, API),
        ConnectionOpened("inbound", WEB, API),
        ConnectionClosed("inbound", WEB, API, 10, 20, 0.5),
        RequestCompleted("inbound", WEB, API, "GET", 200, 0.004),
        RequestCompleted("inbound", WEB, API, "GET", 500, 20.0),
    )
    samples = parse_exposition(metrics.render())
    traffic = metrics.traffic("web1")
    edge = f'direction="inbound",source="{WEB}",destination="{API}"'
    (http,) = traffic.http
    for cls, count in http.classes.items():
        assert samples[f'meshd_requests_total{{{edge},status_class="{cls}"}}'] == count
    assert http.classes == {"2xx": 1, "5xx": 1}
    cumulative = list(itertools.accumulate(http.latency))
    bounds = [*(str(b).removesuffix(".0") for b in traffic.buckets), "+Inf"]
    for le, count in zip(bounds, cumulative, strict=True):
        assert samples[f'meshd_request_duration_seconds_bucket{{{edge},le="{le}"}}'] == count
    assert http.latency_sum == samples[f"meshd_request_duration_seconds_sum{{{edge}}}"]
    (tcp,) = traffic.tcp
    assert (tcp.opened, tcp.open, tcp.bytes_in, tcp.bytes_out) == (2, 1, 10, 20)
    assert traffic.host == "web1"
    assert traffic.started <= traffic.taken


def test_issuer_answers_are_counted_by_result() -> None:
    metrics = fed(
        IssuerAnswered("10.0.0.9:5000", "signed"),
        IssuerAnswered("10.0.0.9:5001", "signed"),
        IssuerAnswered("10.0.0.8:5000", "refused"),
    )
    samples = parse_exposition(metrics.render())
    assert samples['meshd_issuer_requests_total{result="signed"}'] == 2
    assert samples['meshd_issuer_requests_total{result="refused"}'] == 1


def test_failures_refusals_and_gauges() -> None:
    metrics = fed(
        HandshakeFailed("mesh", "10.0.0.9:5000", HandshakeFailure.UNTRUSTED),
        HandshakeFailed("mesh", "10.0.0.9:5001", HandshakeFailure.UNTRUSTED),
        ConnectionRefused("inbound", "10.0.0.9:5002", "plaintext"),
    )
    metrics.set_certificate_expiry(1_900_000_000)
    metrics.set_document_version("registry", 7)
    samples = parse_exposition(metrics.render())
    assert samples['meshd_handshake_failures_total{listener="mesh",reason="untrusted"}'] == 2
    assert samples['meshd_connections_refused_total{listener="inbound",reason="plaintext"}'] == 1
    assert samples["meshd_certificate_expiry_timestamp_seconds"] == 1_900_000_000
    assert samples['meshd_document_version{kind="registry"}'] == 7
    assert samples[f'meshd_info{{version="{__version__}"}}'] == 1
    assert samples["meshd_events_published_total"] == 3
    assert samples["meshd_events_dropped_total"] == 0


def test_dropped_events_sum_over_tracked_subscriptions() -> None:
    bus = EventBus()
    metrics = Metrics(bus, capacity=2, process_metrics=False)
    slow = bus.subscribe(capacity=1)
    metrics.track("access_log", slow)
    for _ in range(5):
        bus.publish(ConnectionOpened("outbound", WEB, API))
    assert metrics.dropped() == {"metrics": 3, "access_log": 4}
    samples = parse_exposition(metrics.render())
    assert samples["meshd_events_dropped_total"] == 7
    assert metrics.collect() == 2


def test_process_metrics() -> None:
    samples = parse_exposition(Metrics(EventBus()).render())
    assert samples["process_resident_memory_bytes"] > 1_000_000
    assert samples["process_open_fds"] >= 3


def test_label_values_are_escaped_and_parse() -> None:
    nasty = 'spiffe://t.mesh/svc/a"b\\c\nd'
    text = fed(ConnectionRefused("admin", "x", nasty)).render()
    assert 'reason="spiffe://t.mesh/svc/a\\"b\\\\c\\nd"' in text
    parse_exposition(text)


@pytest.mark.parametrize(
    ("value", "escaped"),
    [("plain", "plain"), ('q"', 'q\\"'), ("b\\", "b\\\\"), ("n\n", "n\\n")],
)
def test_escape_label(value: str, escaped: str) -> None:
    assert escape_label(value) == escaped


@pytest.mark.parametrize(
    ("status", "cls"),
    [(0, "none"), (99, "none"), (100, "1xx"), (204, "2xx"), (302, "3xx"), (404, "4xx"),
     (599, "5xx"), (600, "none")],
)  # fmt: skip
def test_status_class(status: int, cls: str) -> None:
    assert status_class(status) == cls


def test_empty_metrics_render_well_formed() -> None:
    samples = parse_exposition(Metrics(EventBus(), process_metrics=False).render())
    assert not any(math.isnan(v) for v in samples.values())
    assert "meshd_events_dropped_total" in samples


def test_parser_rejects_malformed_lines() -> None:
    for bad in ['x{a="1"', "x 1 2 3", "# TYPE x wrong", 'x{a="b"c"} 1', "1x 1"]:
        with pytest.raises(AssertionError):
            parse_exposition(bad + "\n")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (2**53 - 1, 2**53 - 1),
        (2**53 + 1, float(2**53)),  # past exact floats: the nearest, in exponent form
        (10**309, math.inf),  # beyond any float: +Inf, never an OverflowError
        (-(10**309), -math.inf),
    ],
    ids=["2^53-1", "2^53+1", "1e309", "-1e309"],
)
def test_any_number_renders(value: int, shown: float) -> None:
    """A gauge set from a document's version must never break /metrics."""
    metrics = Metrics(EventBus(), process_metrics=False)
    metrics.set_document_version("registry", value)
    samples = parse_exposition(metrics.render())
    assert samples['meshd_document_version{kind="registry"}'] == shown
