"""HTTP/1.1 awareness: requests are followed through keep-alive, pipelining and chunking."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

from meshd.proxy.http.exchange import HttpExchange
from meshd.proxy.http.observe import HttpObserver, looks_like_http
from meshd.proxy.http.plan import RequestHead
from meshd.telemetry.events import Event, RequestCompleted


def _observer(max_head: int = 65536) -> tuple[HttpObserver, list[Event]]:
    events: list[Event] = []
    return HttpObserver(events.append, "outbound", "spiffe://t/svc/a", "web", max_head), events


def _statuses(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.method, e.status) for e in events if isinstance(e, RequestCompleted)]


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"GET / HTTP/1.1\r\n", True),
        (b"OPTIONS * HTTP/1.1", True),
        (b"\x16\x03\x01\x02", False),
        (b"SSH-2.0-OpenSSH", False),
        (b"get / HTTP/1.1", False),
    ],
)
def test_looks_like_http(first: bytes, expected: bool) -> None:
    assert looks_like_http(first) is expected


def test_keep_alive_and_pipelining_byte_by_byte() -> None:
    observer, events = _observer()
    requests = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    responses = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n"
    )
    for i in range(len(requests)):
        assert observer.outgoing(requests[i : i + 1])
    for i in range(len(responses)):
        assert observer.incoming(memoryview(responses)[i : i + 1])
    assert _statuses(events) == [("GET", 200), ("POST", 503)]
    assert all(isinstance(e, RequestCompleted) and e.duration >= 0 for e in events)


def test_interim_response_is_not_the_answer() -> None:
    observer, events = _observer()
    observer.outgoing(
        b"PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
    )
    observer.incoming(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert _statuses(events) == []
    observer.outgoing(b"y")
    observer.incoming(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert _statuses(events) == [("PUT", 201)]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT db:5432 HTTP/1.1\r\nHost: db\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo\x00st: x\r\n\r\n",
    ],
)
def test_gives_up_on_what_it_cannot_follow(request_bytes: bytes) -> None:
    observer, events = _observer()
    assert observer.outgoing(request_bytes) is False
    assert events == []


def test_gives_up_on_a_head_larger_than_the_limit() -> None:
    observer, _ = _observer(max_head=64)
    assert observer.outgoing(b"GET / HTTP/1.1\r\n")
    assert observer.outgoing(b"X-Big: " + b"a" * 100) is False


def test_unanswered_requests_are_reported_when_the_connection_ends() -> None:
    observer, events = _observer()
    observer.outgoing(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    observer.finished()
    assert _statuses(events) == [("GET", 0)]


def test_an_early_answer_belongs_to_the_request_still_being_sent() -> None:
    # the server refuses a request whose head is not complete yet (413, 431): that answer
    # must not be paired with the next request on the connection
    observer, events = _observer()
    observer.outgoing(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")
    observer.incoming(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    observer.outgoing(b"X-More: 1\r\n\r\n")
    observer.outgoing(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    observer.incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    statuses = _statuses(events)
    assert statuses[0][1] == 413
    assert ("POST", 200) not in statuses


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The cyclic collector off, so that what refcounting leaves behind can be counted."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "end",
    ["finished", "gave_up_on_upgrade", "gave_up_on_garbage_answer"],
)
def test_a_done_observer_is_freed_by_refcounting(end: str, no_gc: None) -> None:
    """Each parser holds its observer: a cycle the GC would have to find, once per connection.

    The observer breaks it when it is done, so a busy relay leaves no cyclic garbage.
    """
    for _ in range(200):
        observer, _events = _observer()
        if end == "gave_up_on_upgrade":
            assert not observer.outgoing(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
        else:
            assert observer.outgoing(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if end == "finished":
                assert observer.incoming(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                observer.finished()
            else:
                assert not observer.incoming(b"\x00garbage\r\n\r\n")
        assert observer.outgoing(b"GET / HTTP/1.1\r\n\r\n") is False  # it follows nothing more
    assert gc.collect() == 0


# --- at rest: between requests, where a stream may move to a fresh link -------------------
UPLOAD_HEAD = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
CHUNKED_HEAD = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
EARLY = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"


def _exchange() -> HttpObserver:
    return HttpExchange(lambda e: None, "outbound", "spiffe://t/svc/a", "web", 65536, (_no_hook,))


def _no_hook(head: RequestHead) -> tuple[()]:
    return ()


@pytest.mark.parametrize("make", [lambda: _observer()[0], _exchange], ids=["observer", "exchange"])
@pytest.mark.parametrize(
    ("steps", "at_rest"),
    [
        pytest.param((), True, id="idle"),
        pytest.param((("out", GET),), False, id="request out"),
        pytest.param((("out", GET), ("in", OK)), True, id="answered"),
        pytest.param((("out", GET), ("in", OK[:20])), False, id="half a response"),
        pytest.param((("out", GET[:10]),), False, id="half a head"),
        pytest.param((("out", UPLOAD_HEAD),), False, id="upload: head out"),
        pytest.param(
            (("out", UPLOAD_HEAD + b"12345"), ("in", EARLY)), False, id="early 413 mid-upload"
        ),
        pytest.param(
            (("out", UPLOAD_HEAD + b"12345"), ("in", EARLY), ("out", b"67890")),
            True,
            id="early 413, then the upload ends",
        ),
        pytest.param(
            (("out", CHUNKED_HEAD + b"5\r\nhello\r\n"), ("in", EARLY)),
            False,
            id="early 413 mid-chunked-upload",
        ),
        pytest.param(
            (("out", CHUNKED_HEAD + b"5\r\nhello\r\n"), ("in", EARLY), ("out", b"0\r\n\r\n")),
            True,
            id="early 413, then the chunked upload ends",
        ),
        pytest.param(
            (("out", UPLOAD_HEAD + b"1234567890"), ("in", OK), ("out", GET[:5])),
            False,
            id="the next request begun",
        ),
    ],
)
def test_at_rest_only_between_whole_requests_and_their_responses(
    make: Callable[[], HttpObserver], steps: tuple[tuple[str, bytes], ...], at_rest: bool
) -> None:
    follower = make()
    for direction, data in steps:
        verdict = (follower.outgoing if direction == "out" else follower.incoming)(data)
        assert verdict is not False  # still followed
    assert follower.at_rest() is at_rest
