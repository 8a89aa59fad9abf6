"""The observer and the judging exchange while someone listens: each request's path,
request id and bytes (both ways), noted from the chunk that starts it (the exchange: from
the head it cut for its hooks); with nobody listening, the plain event as before."""

from __future__ import annotations

import pytest

from meshd.proxy.http.actions import Answer, RequestAction
from meshd.proxy.http.exchange import HttpExchange
from meshd.proxy.http.observe import HttpObserver, Listening, request_notes
from meshd.proxy.http.plan import RequestHead, RequestHook
from meshd.telemetry.events import Event, RequestCompleted, RequestObserved

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    ("chunk", "notes"),
    [
        (b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", [("/a", "")]),
        (b"GET / HTTP/1.1\r\n\r\n", [("/", "")]),
        (b"GET /a HTTP/1.1\r\nX-Request-ID:  r-7 \r\n\r\n", [("/a", "r-7")]),
        (b"GET /a HTTP/1.1\r\nx-request-id: Ab-9F\r\n\r\n", [("/a", "Ab-9F")]),  # as sent
        (
            b"GET /a HTTP/1.1\r\nx-request-id: r\r\n\r\nGET /b?x HTTP/1.1\r\n\r\n",
            [("/a", "r"), ("/b", "")],
        ),
        (b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /x HTTP/1.1\r\n", [("/p", "")]),
        (b"GET /partial HTTP/1.1\r\nHost: x", [("/partial", "")]),
        (b"body bytes GET /b HTTP/1.1\r\n", []),  # not at a request's start
        (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", [("/" + "a" * 255, "")]),  # cut
        (b"GET /\xff\x00x HTTP/1.1\r\n\r\n", [("/\xff\x00x", "")]),  # raw: consumers escape
    ],
)
def test_request_notes(chunk: bytes, notes: list[tuple[str, str]]) -> None:
    assert request_notes(chunk, 16) == notes


def observe(listening: bool, chunks: list[bytes], responses: int) -> list[Event]:
    events: list[Event] = []
    observer = HttpObserver(events.append, "outbound", "web", "api", 16384)
    observer.listening = Listening(listening)
    for chunk in chunks:
        assert observer.request_bytes(chunk)
    for _ in range(responses):
        assert observer.response_bytes(OK)
    return events


GET_A = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
TWO = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"
SPLIT = b"GET /s HTTP/1.1\r\nHo"


@pytest.mark.parametrize(
    ("chunks", "paths", "sizes"),
    [
        ([GET_A], ["/a"], [len(GET_A)]),
        ([TWO], ["/a", "/b"], [len(TWO), 0]),  # a chunk's bytes count for its first request
        # a body in two chunks: the second counts for the request under way
        ([POST, b"cd"], ["/p"], [len(POST) + 2]),
        # a head split over two chunks: noted from the first
        ([SPLIT, b"st: h\r\n\r\n"], ["/s"], [len(SPLIT) + 9]),
    ],
)
def test_listening_notes_each_request(
    chunks: list[bytes], paths: list[str], sizes: list[int]
) -> None:
    events = observe(True, chunks, len(paths))
    assert all(type(e) is RequestObserved for e in events)
    observed = [e for e in events if isinstance(e, RequestObserved)]
    assert [(e.path, e.bytes_in, e.status) for e in observed] == [
        (p, s, 200) for p, s in zip(paths, sizes, strict=True)
    ]


def test_a_body_that_looks_like_heads_is_not_read_as_the_next_request() -> None:
    """A chunk that starts inside a body is not a head: what the body says is neither the
    path nor the request id of the request that begins after it (the client could forge
    both), and its lines are not read as heads at all (a body of many short lines cost
    one head-reading each, while only the request that began there needed a note)."""
    body = b"name=Some one else\r\nx-request-id: forged\r\n\r\n" + b"a b c\r\n\r\n" * 500
    head = b"POST /upload HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    real = b"GET /real HTTP/1.1\r\nx-request-id: real-id\r\n\r\n"
    events = observe(True, [head + body[:5], body[5:] + real], 2)
    observed = [(e.path, e.request_id) for e in events if isinstance(e, RequestObserved)]
    assert observed == [("/upload", ""), ("", "")]


@pytest.mark.parametrize("most", [0, 1, 2])
def test_request_notes_reads_no_more_heads_than_asked(most: int) -> None:
    three = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"
    assert request_notes(three, most) == [("/a", ""), ("/b", "")][:most]


def test_nobody_listening_publishes_the_plain_event() -> None:
    events = observe(False, [b"GET /a HTTP/1.1\r\n\r\n"], 1)
    assert [type(e) for e in events] == [RequestCompleted]


def test_listening_from_the_middle_of_a_connection() -> None:
    """A tap that connects while a kept-alive connection is open sees its next requests."""
    events: list[Event] = []
    listening = Listening()
    observer = HttpObserver(events.append, "outbound", "web", "api", 16384)
    observer.listening = listening
    observer.request_bytes(b"GET /before HTTP/1.1\r\n\r\n")
    listening.on = True
    observer.request_bytes(b"GET /after HTTP/1.1\r\n\r\n")
    observer.response_bytes(OK + OK)
    observer.finished()
    assert [type(e) for e in events] == [RequestCompleted, RequestObserved]
    assert isinstance(events[1], RequestObserved) and events[1].path == "/after"


def test_a_request_without_response_is_observed_at_the_end() -> None:
    events: list[Event] = []
    observer = HttpObserver(events.append, "outbound", "web", "api", 16384)
    observer.listening = Listening(True)
    observer.request_bytes(b"GET /lost HTTP/1.1\r\n\r\n")
    observer.finished()
    assert [
        (type(e), getattr(e, "path", None), e.status)
        for e in events
        if isinstance(e, RequestCompleted)
    ] == [(RequestObserved, "/lost", 0)]


def test_bytes_out_is_each_responses_size() -> None:
    events: list[Event] = []
    observer = HttpObserver(events.append, "outbound", "web", "api", 16384)
    observer.listening = Listening(True)
    observer.request_bytes(TWO)
    observer.response_bytes(OK[:10])  # one response over two chunks
    assert events == []
    observer.response_bytes(OK[10:] + OK)  # a chunk ending one and holding the next
    assert [e.bytes_out for e in events if isinstance(e, RequestObserved)] == [
        2 * len(OK),  # the chunk that ended the first counts for it
        0,
    ]


def let_through(head: RequestHead) -> tuple[RequestAction, ...]:
    return ()


def deny_denied(head: RequestHead) -> tuple[RequestAction, ...]:
    return (Answer(403),) if head.path.startswith("/denied") else ()


TAGGED = b"GET /r HTTP/1.1\r\nX-Request-Id: Q-1\r\n\r\n"
CHUNKED_POST = b"POST /c?q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_BODY = b"3\r\nabc\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("chunks", "notes"),
    [
        ([GET_A], [("GET", "/a", "", len(GET_A))]),  # the short way (one hook, one head)
        ([TAGGED], [("GET", "/r", "Q-1", len(TAGGED))]),
        ([SPLIT, b"st: h\r\n\r\n"], [("GET", "/s", "", len(SPLIT) + 9)]),  # gathered
        ([TWO], [("GET", "/a", "", 19), ("GET", "/b", "", 19)]),  # each its own head
        ([POST, b"cd"], [("POST", "/p", "", len(POST) + 2)]),  # head and Content-Length
        ([CHUNKED_POST, CHUNKED_BODY[:4], CHUNKED_BODY[4:]],
         [("POST", "/c", "", len(CHUNKED_POST) + len(CHUNKED_BODY))]),
    ],
)  # fmt: skip
def test_the_exchange_notes_each_request_while_someone_listens(
    chunks: list[bytes], notes: list[tuple[str, str, str, int]]
) -> None:
    events: list[Event] = []
    exchange = HttpExchange(events.append, "inbound", "web", "api", 16384, (let_through,))
    exchange.listening = Listening(True)
    for chunk in chunks:
        exchange.request_bytes(chunk)
    for _ in notes:
        exchange.response_bytes(OK)
    assert all(type(e) is RequestObserved for e in events)
    observed = [e for e in events if isinstance(e, RequestObserved)]
    assert [(e.method, e.path, e.request_id, e.bytes_in) for e in observed] == notes
    assert [(e.status, e.bytes_out) for e in observed] == [(200, len(OK))] * len(notes)


def test_the_exchange_notes_the_requests_it_answers() -> None:
    events: list[Event] = []
    exchange = HttpExchange(events.append, "inbound", "web", "api", 16384, (deny_denied,))
    exchange.listening = Listening(True)
    exchange.request_bytes(b"GET /denied?x HTTP/1.1\r\nX-Request-Id: d\r\n\r\n")
    assert [
        (type(e), e.path, e.request_id, e.status, e.bytes_out)
        for e in events
        if isinstance(e, RequestObserved)
    ] == [(RequestObserved, "/denied", "d", 403, len(Answer(403).closing().encode()))]


@pytest.mark.parametrize("listening", [False, True])
@pytest.mark.parametrize("hook", [let_through, deny_denied])
def test_a_content_length_of_many_zeros_is_read_not_raised(
    listening: bool, hook: RequestHook
) -> None:
    """llhttp accepts a Content-Length of thousands of leading zeros; Python's int() raised
    on it, out of request_bytes: on the inbound side that dropped the whole link."""
    events: list[Event] = []
    exchange = HttpExchange(events.append, "inbound", "web", "api", 16384, (hook,))
    exchange.listening = Listening(listening)
    zeros = b"0" * 5000
    exchange.request_bytes(b"POST /denied HTTP/1.1\r\nContent-Length: " + zeros + b"2\r\n\r\nab")
    exchange.response_bytes(OK)
    assert [getattr(e, "status", None) for e in events] == [403 if hook is deny_denied else 200]


def test_the_exchange_with_nobody_listening_publishes_the_plain_event() -> None:
    events: list[Event] = []
    exchange = HttpExchange(events.append, "inbound", "web", "api", 16384, (let_through,))
    exchange.request_bytes(GET_A)
    exchange.response_bytes(OK)
    assert [type(e) for e in events] == [RequestCompleted]
