"""Peer text in log lines, and how many lines a peer can cause."""

from __future__ import annotations

import logging

import pytest

from meshd.telemetry.logs import MAX_TEXT, Throttle, clean


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web", "web"),
        ("web\nINFO meshd: reloaded /etc/meshd.toml", "web\\nINFO meshd: reloaded /etc/meshd.toml"),
        ("a\r\x1b[31mred", "a\\r\\x1b[31mred"),
        ("caf\u00e9 \u2028", "caf\\xe9 \\u2028"),
        ("x" * (MAX_TEXT + 5), "x" * MAX_TEXT + "..."),
    ],
)
def test_clean_keeps_peer_text_on_one_printable_line(text: str, expected: str) -> None:
    assert clean(text) == expected
    assert clean(text).isprintable() and clean(text).isascii()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_lets_a_burst_through_then_sums_up(caplog: pytest.LogCaptureFixture) -> None:
    clock, logger = Clock(), logging.getLogger("meshd.test")
    throttle = Throttle(interval=10.0, burst=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="meshd.test"):
        for i in range(1000):
            throttle.log(logger, logging.WARNING, "refused streams", "refused %d", i)
        clock.now = 10.5
        throttle.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused 0",
        "refused 1",
        "refused 2",
        "997 more refused streams in the last 10s were not logged (the metrics count them all)",
    ]


def test_throttle_counts_each_kind_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    clock, logger = Clock(), logging.getLogger("meshd.test")
    throttle = Throttle(interval=10.0, burst=1, clock=clock)
    with caplog.at_level(logging.INFO, logger="meshd.test"):
        for _ in range(3):
            throttle.log(logger, logging.WARNING, "a", "line a")
            throttle.log(logger, logging.WARNING, "b", "line b")
        clock.now = 11.0
        throttle.log(logger, logging.WARNING, "a", "line a")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["line a", "line b"]
    assert lines[2].startswith("2 more a in the last 10s")
    assert lines[3] == "line a"


def test_a_quiet_throttle_says_nothing_and_forgets(caplog: pytest.LogCaptureFixture) -> None:
    clock, logger = Clock(), logging.getLogger("meshd.test")
    throttle = Throttle(interval=1.0, burst=2, clock=clock)
    with caplog.at_level(logging.INFO, logger="meshd.test"):
        throttle.log(logger, logging.WARNING, "a", "once")
        clock.now = 5.0
        throttle.flush()
        throttle.flush()
    assert [r.getMessage() for r in caplog.records] == ["once"]
