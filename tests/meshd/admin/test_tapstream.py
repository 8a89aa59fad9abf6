"""GET /tap's query, read into a filter (or refused with what is wrong)."""

from __future__ import annotations

import pytest

from meshd.admin.tapstream import chunk, tap_filter
from meshd.telemetry.tap import TapFilter


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", TapFilter()),
        ("service=api", TapFilter(frozenset({"api"}))),
        ("service=api&service=db&sample=0.25", TapFilter(frozenset({"api", "db"}), 0.25)),
        ("sample=1", TapFilter()),
        ("sample=0", "sample must be a number in (0, 1], got '0'"),
        ("sample=1.5", "sample must be a number in (0, 1], got '1.5'"),
        ("sample=nan", "sample must be a number in (0, 1], got 'nan'"),
        ("sample=x", "sample must be a number in (0, 1], got 'x'"),
        ("service=API", "invalid service name 'API'"),
        ("service=a%0Ab", "invalid service name 'a\\nb'"),
        ("path=/x", "unknown query parameter 'path' (service=NAME, sample=R)"),
        ("&".join(f"service=s{i}" for i in range(17)), "at most 16 service= filters"),
        ("&".join(["service=a"] * 40), "too many query parameters"),
    ],
)
def test_tap_filter(query: str, expected: TapFilter | str) -> None:
    assert tap_filter(query) == expected


@pytest.mark.parametrize(
    ("data", "framed"), [(b"x\n", b"2\r\nx\n\r\n"), (b"a" * 26, b"1a\r\n" + b"a" * 26 + b"\r\n")]
)
def test_chunk(data: bytes, framed: bytes) -> None:
    assert chunk(data) == framed
