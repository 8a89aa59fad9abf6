"""The policy's access log lines and metrics (§2.6): what is logged, counted, and how."""

from __future__ import annotations

import json
import logging

import pytest

from meshd.telemetry.authzlog import AuthzLog, authz_line
from meshd.telemetry.events import AuthzDecided, EventBus, RateLimited
from meshd.telemetry.metrics import Metrics

SOURCE = "spiffe://t/host/a"
DENIED = AuthzDecided("web", "deny", "t/deny/d", (), SOURCE, 80, "GET", "/admin", "r1")
AUDITED = AuthzDecided("web", "allow", "t/allow/a", ("t/deny/x",), SOURCE, 80, "DELETE", "/", "r2")
ALLOWED = AuthzDecided("web", "allow", "t/allow/a")  # the shared event of a plain allow
LIMITED = RateLimited("web", "t/rate_limit/r", 2, None, 80, "GET", "/v1", "r3")


def test_a_decision_is_one_json_line_with_the_fields_of_2_6() -> None:
    assert json.loads(authz_line(DENIED)) == {
        "event": "authz",
        "decision": "deny",
        "rule": "t/deny/d",
        "would_deny": [],
        "service": "web",
        "source": SOURCE,
        "port": 80,
        "method": "GET",
        "path": "/admin",
        "request_id": "r1",
    }
    assert "\n" not in authz_line(DENIED)


@pytest.mark.parametrize(
    ("events", "logged"),
    [
        ([DENIED, AUDITED, ALLOWED], ["r1", "r2"]),  # allows are off by default
        ([ALLOWED, ALLOWED], []),
    ],
)
def test_denials_and_would_denials_are_always_logged(
    caplog: pytest.LogCaptureFixture, events: list[AuthzDecided], logged: list[str]
) -> None:
    log = AuthzLog()
    with caplog.at_level(logging.INFO, logger="meshd.authz"):
        for event in events:
            log.decided(event)
    assert [json.loads(r.getMessage())["request_id"] for r in caplog.records] == logged


def test_the_metrics_count_decisions_would_denials_and_limits_and_tap_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    metrics, log = Metrics(bus, process_metrics=False), AuthzLog()
    metrics.tap(AuthzDecided, log.decided)
    metrics.tap(RateLimited, log.limited)
    for event in (DENIED, AUDITED, ALLOWED, ALLOWED, LIMITED):
        bus.publish(event)
    with caplog.at_level(logging.INFO, logger="meshd.authz"):
        metrics.collect()
    text = metrics.render()
    assert 'meshd_authz_decisions_total{service="web",decision="allow",rule="t/allow/a"} 3' in text
    assert 'meshd_authz_decisions_total{service="web",decision="deny",rule="t/deny/d"} 1' in text
    assert 'meshd_authz_would_deny_total{service="web",rule="t/deny/x"} 1' in text
    assert 'meshd_ratelimit_limited_total{service="web",rule="t/rate_limit/r"} 1' in text
    events = [json.loads(r.getMessage())["event"] for r in caplog.records]
    assert events == ["authz", "authz", "ratelimit"]
