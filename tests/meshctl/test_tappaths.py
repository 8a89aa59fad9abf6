"""The busiest paths from tap lines: framing, reading lines, the window and its rows."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.tappaths import (
    MAX_EVENTS,
    MAX_LINE,
    MAX_PATHS,
    Dechunker,
    FramingError,
    Lines,
    PathWindow,
    TapEvent,
    read_event,
)
from meshctl.traffic import PathRow

T = 1_765_000_000.0


def line(**fields: object) -> bytes:
    record: dict[str, object] = {
        "time": T, "direction": "inbound", "source": "web", "destination": "api",
        "method": "GET", "path": "/orders", "status": 200, "latency_ms": 3.0,
        "bytes_in": 10, "bytes_out": 0,
    }  # fmt: skip
    return json.dumps(record | fields).encode()


def event(path: str = "/a", status: int = 200, ms: float = 1.0, at: float = T) -> TapEvent:
    return TapEvent(at, True, "GET", path, status, ms / 1000)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, TapEvent(T, True, "GET", "/orders", 200, 0.003)),
        ({"direction": "outbound"}, TapEvent(T, False, "GET", "/orders", 200, 0.003)),
        ({"status": 0, "latency_ms": 0}, TapEvent(T, True, "GET", "/orders", 0, 0.0)),
        ({"path": ""}, TapEvent(T, True, "GET", "", 200, 0.003)),
        ({"time": "now"}, None),
        ({"time": None}, None),
        ({"time": -1}, None),
        ({"method": ""}, None),
        ({"method": "G" * 17}, None),
        ({"method": "GE\nT"}, None),
        ({"method": 7}, None),
        ({"path": "/" * 257}, None),
        ({"path": ["/"]}, None),
        ({"status": 1000}, None),
        ({"status": -1}, None),
        ({"status": True}, None),
        ({"status": 200.0}, None),
        ({"latency_ms": -0.1}, None),
        ({"latency_ms": 3_600_001}, None),
        ({"latency_ms": "3"}, None),
        ({"latency_ms": False}, None),
    ],
)
def test_read_event(fields: dict[str, object], expected: TapEvent | None) -> None:
    assert read_event(line(**fields)) == expected


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b"null", b'{"dropped": 3}', b"[" * 100_000, b'{"time": NaN}', b"\xff"],
)
def test_read_event_ignores_what_is_no_request(raw: bytes) -> None:
    assert read_event(raw) is None


@pytest.mark.parametrize(
    ("pieces", "body", "done"),
    [
        ([b"5\r\nhello\r\n0\r\n\r\n"], b"hello", True),
        ([b"5\r\nhel", b"lo\r", b"\n3;x=1\r\nabc\r\n"], b"helloabc", False),
        ([b"a\r\n0123456789\r\n", b"0\r\n"], b"0123456789", True),
        ([b"", b"2\r", b"\nab", b"\r\n"], b"ab", False),
    ],
)
def test_dechunker(pieces: list[bytes], body: bytes, done: bool) -> None:
    chunks = Dechunker()
    assert b"".join(chunks.feed(p) for p in pieces) == body
    assert chunks.done is done


@pytest.mark.parametrize(
    "raw", [b"zz\r\n", b"5\r\nhelloXX", b"1" * 65, b"800000\r\n", b"-1\r\n", b"\r\n"]
)
def test_dechunker_refuses_what_is_not_a_chunked_body(raw: bytes) -> None:
    with pytest.raises(FramingError):
        Dechunker().feed(raw)


@given(st.binary(max_size=3000), st.lists(st.integers(1, 500), max_size=20))
@settings(max_examples=200, deadline=None)
def test_dechunker_undoes_chunking_however_it_is_cut(body: bytes, cuts: list[int]) -> None:
    framed = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 700]), body[i : i + 700])
            for i in range(0, len(body), 700)
        )
        + b"0\r\n\r\n"
    )
    chunks, out, at = Dechunker(), [], 0
    for cut in [*cuts, len(framed)]:
        out.append(chunks.feed(framed[at : at + cut]))
        at += cut
    out.append(chunks.feed(framed[at:]))
    assert (b"".join(out), chunks.done) == (body, True)


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"a\nb\n"], [b"a", b"b"]),
        ([b"a", b"b\nc", b"\n"], [b"ab", b"c"]),
        ([b"x" * (MAX_LINE + 1), b"y\nok\n"], [b"ok"]),  # too long: skipped whole
        ([b"x" * MAX_LINE + b"\nok\n"], [b"x" * MAX_LINE, b"ok"]),
        ([b"x" * (MAX_LINE + 1) + b"\nok\n"], [b"ok"]),
    ],
)
def test_lines(pieces: list[bytes], expected: list[bytes]) -> None:
    lines = Lines()
    assert [x for p in pieces for x in lines.feed(p)] == expected


@pytest.mark.parametrize(
    ("events", "rows"),
    [
        ([], ()),
        (
            [event("/a", 200, 2.0, T - 3), event("/a", 500, 9.0, T - 2), event("/a", 0, 1.0, T - 5),
             event("/a", 404, 4.0, T - 1)],
            (PathRow("GET", "/a", 4, 0.5, 0.001, 0.009, 0.004),),
        ),
        (  # busiest first, then method and path; the last is the newest, not the last read
            [event("/b", at=T - 1), event("/c", at=T - 1), event("/c", ms=7, at=T - 0.5),
             event("/c", ms=5, at=T - 2), event("/a", at=T - 1)],
            (PathRow("GET", "/c", 3, 1.0, 0.001, 0.007, 0.007),
             PathRow("GET", "/a", 1, 1.0, 0.001, 0.001, 0.001),
             PathRow("GET", "/b", 1, 1.0, 0.001, 0.001, 0.001)),
        ),
        (  # outside the window (10 s), in the far future, or client side: not counted
            [event("/a", at=T - 10), event("/a", at=T + 11), event("/b", at=T - 9.9),
             TapEvent(T, False, "GET", "/a", 200, 0.001)],
            (PathRow("GET", "/b", 1, 1.0, 0.001, 0.001, 0.001),),
        ),
        (
            [TapEvent(T, True, "POST", "/a", 503, 0.002), TapEvent(T, True, "GET", "/a", 200, 0.002)],
            (PathRow("GET", "/a", 1, 1.0, 0.002, 0.002, 0.002),
             PathRow("POST", "/a", 1, 0.0, 0.002, 0.002, 0.002)),
        ),
    ],
)  # fmt: skip
def test_rows(events: list[TapEvent], rows: tuple[PathRow, ...]) -> None:
    window = PathWindow(10.0)
    window.add(events)
    assert window.rows(T) == rows


def test_rows_are_limited_and_old_events_forgotten() -> None:
    window = PathWindow(10.0)
    window.add(event(f"/{i}", at=T - i) for i in reversed(range(20)))  # oldest first
    assert [r.path for r in window.rows(T, 3)] == ["/0", "/1", "/2"]  # ties: by path
    assert len(window.rows(T, 50)) == 10  # /0 ... /9: the others are too old
    assert len(window.events) == 10 and len(window.paths) == 10
    assert window.rows(T + 100) == () and not window.events and not window.paths


def test_memory_is_bounded_whatever_a_host_sends() -> None:
    window = PathWindow(10.0)
    window.add(event(f"/{i % (MAX_PATHS + 50)}") for i in range(MAX_EVENTS + 5_000))
    assert len(window.events) == MAX_EVENTS
    assert len(window.paths) <= MAX_PATHS
    assert window.overflow > 0
    assert sum(window.paths.values()) == MAX_EVENTS


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["/a", "/b", "/c"]),
            st.sampled_from([0, 200, 404, 500, 503]),
            st.floats(0, 100),
            st.floats(-20, 20),
        ),
        max_size=60,
    )
)
@settings(max_examples=200, deadline=None)
def test_rows_agree_with_a_plain_count(events: list[tuple[str, int, float, float]]) -> None:
    window = PathWindow(10.0)
    window.add(event(p, s, ms, T + dt) for p, s, ms, dt in events)
    kept = [(p, s, ms / 1000, T + dt) for p, s, ms, dt in events if T - 10 < T + dt <= T + 10]
    rows = window.rows(T, 50)
    assert sum(r.count for r in rows) == len(kept)
    assert [r.count for r in rows] == sorted((r.count for r in rows), reverse=True)
    for r in rows:
        mine = [e for e in kept if e[0] == r.path]
        assert r.count == len(mine)
        assert r.success == sum(0 < e[1] < 500 for e in mine) / len(mine)
        assert (r.best, r.worst) == (min(e[2] for e in mine), max(e[2] for e in mine))
        assert r.last in [e[2] for e in mine if e[3] == max(x[3] for x in mine)]
