"""The HTTP exchange with request hooks, sans-IO: bytes in, verdicts out, no sockets."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from meshd.proxy.http.actions import (
    DROP,
    FORWARD,
    GIVE_UP,
    HOLD,
    STOP,
    AddHeader,
    Answer,
    Close,
    HoldHead,
    Replay,
    RequestAction,
    Send,
    SetHeader,
    SetTarget,
    StreamAction,
    Verdict,
)
from meshd.proxy.http.exchange import HttpExchange, InboundHttpExchange
from meshd.proxy.http.install import exchange_for
from meshd.proxy.http.observe import HttpObserver, InboundObserver
from meshd.proxy.http.plan import OBSERVE, HttpPlan, RequestHead, RequestHook
from meshd.telemetry.events import Event, RequestCompleted


# --- hooks -------------------------------------------------------------------
def deny(prefix: str) -> RequestHook:
    def hook(head: RequestHead) -> tuple[RequestAction, ...]:
        return (Answer(403, body=b"denied"),) if head.path.startswith(prefix) else ()

    return hook


def tag(name: str = "X-Mesh", value: str = "1") -> RequestHook:
    return lambda head: (AddHeader(name, value),)


def replace(name: str, value: str) -> RequestHook:
    return lambda head: (SetHeader(name, value),)


def _exchange(*hooks: RequestHook, max_head: int = 65536) -> tuple[HttpExchange, list[Event]]:
    events: list[Event] = []
    return HttpExchange(
        events.append, "outbound", "spiffe://t/svc/a", "web", max_head, hooks
    ), events


def _feed(exchange: HttpExchange, chunks: list[bytes]) -> tuple[bytes, list[StreamAction]]:
    """What a carrier would send on for ``chunks`` of requests, and the other actions."""
    sent, acts = b"", []
    for chunk in chunks:
        verdict = exchange.request_bytes(chunk)
        sent, more = _apply(verdict, chunk, sent)
        acts += more
    return sent, acts


def _apply(verdict: Verdict, chunk: bytes, sent: bytes) -> tuple[bytes, list[StreamAction]]:
    if verdict is True or verdict is False:
        return sent + chunk, [] if verdict else [STOP]
    forwarded = b"".join(a.data for a in verdict if isinstance(a, Send))
    return sent + forwarded, [a for a in verdict if not isinstance(a, Send | HoldHead)]


def _splits(stream: bytes) -> Iterator[list[bytes]]:
    """The stream whole, cut in two at every offset, and byte by byte."""
    yield [stream]
    for cut in range(1, len(stream)):
        yield [stream[:cut], stream[cut:]]
    yield [stream[i : i + 1] for i in range(len(stream))]


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
GET_TAGGED = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Mesh: 1\r\n\r\n"
POST = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
POST_TAGGED = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Mesh: 1\r\n\r\nhello"
CHUNKED_HEAD = b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_BODY = b"4\r\n\r\n\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"  # a body holding CRLFCRLF
CHUNKED = CHUNKED_HEAD + CHUNKED_BODY
CHUNKED_TAGGED = CHUNKED_HEAD[:-2] + b"X-Mesh: 1\r\n\r\n" + CHUNKED_BODY
ADMIN = b"GET /admin/users HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
ANSWER_OUT_OF_ORDER = "an answer that could not be put after the earlier responses"
BAD_BODY = "a request body the parser refused"


@pytest.mark.parametrize(
    ("stream", "hooks", "expected"),
    [
        (GET, (tag(),), GET_TAGGED),
        (GET + POST + GET, (tag(),), GET_TAGGED + POST_TAGGED + GET_TAGGED),
        (CHUNKED + GET, (tag(),), CHUNKED_TAGGED + GET_TAGGED),
        (POST + CHUNKED + POST, (deny("/admin"),), POST + CHUNKED + POST),
        (GET + POST, (replace("HOST", "y"),), (GET + POST).replace(b"Host: x", b"HOST: y")),
    ],
    ids=["get", "pipelined", "chunked", "untouched", "set-header"],
)
def test_requests_split_anywhere_go_on_edited_once_each(
    stream: bytes, hooks: tuple[RequestHook, ...], expected: bytes
) -> None:
    for chunks in _splits(stream):
        exchange, _ = _exchange(*hooks)
        assert _feed(exchange, chunks) == (expected, []), chunks


def test_a_head_is_held_until_its_empty_line() -> None:
    exchange, _ = _exchange(tag())
    assert exchange.request_bytes(GET[:10]) == HOLD
    assert exchange.request_bytes(GET[10:-1]) == HOLD
    assert exchange.request_bytes(GET[-1:]) == (Send(GET_TAGGED),)


@pytest.mark.parametrize("split", [False, True])
def test_nothing_changed_allocates_nothing(split: bool) -> None:
    """A chunk that goes on as it came is FORWARD itself, however the hooks were asked."""
    exchange, _ = _exchange(deny("/admin"))
    if split:  # a body chunk in the middle of a long body: not even looked for an end
        assert exchange.request_bytes(POST.replace(b"5", b"9")[:-5]) is FORWARD
        assert exchange.request_bytes(b"hello") is FORWARD
    else:
        assert exchange.request_bytes(GET + POST) is FORWARD


@pytest.mark.parametrize(
    ("stream", "forwarded"),
    [
        (ADMIN, b""),
        (ADMIN + GET, b""),  # what the client sends after an answered request goes nowhere
        (b"GET /admin HTTP/1.1\r\nHo", b""),  # not whole yet: held, never forwarded
    ],
)
def test_a_denied_request_never_goes_on(stream: bytes, forwarded: bytes) -> None:
    for chunks in _splits(stream):
        exchange, _ = _exchange(deny("/admin"))
        sent, acts = _feed(exchange, chunks)
        assert sent == forwarded, chunks
        whole = stream.endswith(b"\r\n\r\n")
        assert acts == ([Answer(403, body=b"denied")] if whole else [])
        if whole:
            assert exchange.request_bytes(GET) == DROP


def test_an_answer_waits_for_the_responses_to_earlier_requests() -> None:
    exchange, events = _exchange(deny("/admin"))
    assert exchange.request_bytes(GET + POST + ADMIN) == (Send(GET + POST),)
    assert exchange.response_bytes(b"HTTP/1.1 100 Continue\r\n\r\n") is FORWARD  # interim
    assert exchange.response_bytes(OK) is FORWARD  # GET's: POST still waits for its own
    assert exchange.response_bytes(OK[:5]) is FORWARD
    assert exchange.response_bytes(OK[5:]) == (Send(OK[5:]), Answer(403, body=b"denied"))
    statuses = [(e.method, e.status) for e in events if isinstance(e, RequestCompleted)]
    assert statuses == [("GET", 200), ("POST", 200), ("GET", 403)]


def test_an_answer_goes_at_once_when_nothing_is_waiting() -> None:
    exchange, events = _exchange(deny("/admin"))
    assert exchange.request_bytes(GET) is FORWARD
    assert exchange.response_bytes(OK) is FORWARD
    assert exchange.request_bytes(ADMIN) == (Answer(403, body=b"denied"),)
    assert [e.status for e in events if isinstance(e, RequestCompleted)] == [200, 403]


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
CONNECT = b"CONNECT db:5432 HTTP/1.1\r\nHost: db\r\n\r\n"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
TUNNEL = b"HTTP/1.1 200 Connection Established\r\n\r\n"
EARLY = "bytes sent before the protocol switched"
NOT_SWITCHED = "a request sent after an upgrade the server refused"


@pytest.mark.parametrize(
    ("head", "response"),
    [
        (UPGRADE, SWITCHED),
        (CONNECT, TUNNEL),
        (CONNECT, TUNNEL.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n")),
    ],
)
def test_upgrade_and_connect_are_seen_then_relayed_once_switched(
    head: bytes, response: bytes
) -> None:
    exchange, _ = _exchange(tag())
    assert exchange.request_bytes(head) == (Send(head[:-2] + b"X-Mesh: 1\r\n\r\n"),)
    assert exchange.response_bytes(response + b"\x00\x01 not http") is GIVE_UP
    assert exchange.request_bytes(b"\x00\x01 not http \r\n\r\n") is GIVE_UP  # opaque now


@pytest.mark.parametrize("head", [UPGRADE, CONNECT])
def test_what_follows_an_upgrade_waits_for_the_switch(head: bytes) -> None:
    """Held until the server says: it switched (bytes sent too early end the connection)."""
    for chunks in _splits(b"\x00\x01 not http \r\n\r\n"):
        exchange, _ = _exchange(deny("/admin"))
        assert exchange.request_bytes(head) is FORWARD
        assert all(exchange.request_bytes(c) == HOLD for c in chunks)
        assert exchange.response_bytes(SWITCHED if head == UPGRADE else TUNNEL) == (Close(EARLY),)


def test_requests_after_a_refused_upgrade_are_not_smuggled_past_the_hooks() -> None:
    """An app that ignores Upgrade answers 200 and reads on: the next request is held, not
    forwarded unseen, and the connection closes after the response (review finding F1)."""
    for chunks in _splits(UPGRADE + ADMIN):
        exchange, _ = _exchange(deny("/admin"))
        assert _feed(exchange, chunks) == (UPGRADE, []), chunks
        assert exchange.response_bytes(OK[:5]) is FORWARD
        assert exchange.response_bytes(OK[5:]) == (Send(OK[5:]), Close(NOT_SWITCHED))


def test_after_a_refused_upgrade_the_next_request_meets_the_hooks() -> None:
    exchange, events = _exchange(deny("/admin"))
    assert exchange.request_bytes(UPGRADE) is FORWARD
    assert exchange.response_bytes(OK) is FORWARD
    assert exchange.request_bytes(GET) is FORWARD
    assert exchange.response_bytes(OK) is FORWARD
    assert exchange.request_bytes(ADMIN) == (Answer(403, body=b"denied"),)
    statuses = [(e.method, e.status) for e in events if isinstance(e, RequestCompleted)]
    assert statuses == [("GET", 200), ("GET", 200), ("GET", 403)]


def test_what_follows_an_upgrade_is_held_within_bounds() -> None:
    exchange, _ = _exchange(deny("/admin"), max_head=80)
    assert exchange.request_bytes(UPGRADE) is FORWARD
    assert exchange.request_bytes(b"x" * 80) == HOLD
    assert exchange.request_bytes(b"x") == (Close("too much sent before the protocol switched"),)


def test_an_inbound_upgrade_the_app_ignores_smuggles_nothing() -> None:
    """The reviewer's case on the inbound side: the app answers 200 to Upgrade: h2c."""
    seen: list[str] = []

    def hook(head: RequestHead) -> tuple[RequestAction, ...]:
        seen.append(head.target)
        return (Answer(403, keep_alive=True),) if head.path.startswith("/admin") else ()

    ex = InboundHttpExchange(lambda e: None, "inbound", "spiffe://t/svc/a", "api", 65536, (hook,))
    h2c = UPGRADE.replace(b"websocket", b"h2c")
    sent, acts = _feed(ex, [h2c + b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert (sent, acts, seen) == (h2c, [], ["/ws"])


def test_a_hook_can_end_the_connection_without_an_answer() -> None:
    """A plaintext client of a service now strict: nothing forwarded, nothing answered."""
    cut = Close("strict")
    exchange, _ = _exchange(lambda head: (cut,) if head.path == "/admin/users" else ())
    assert exchange.request_bytes(GET) is FORWARD
    assert exchange.response_bytes(OK) is FORWARD
    assert exchange.request_bytes(ADMIN + GET) == (cut,)
    assert exchange.request_bytes(GET) == DROP


def test_an_upgrade_can_be_denied() -> None:
    exchange, _ = _exchange(deny("/ws"))
    head = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert exchange.request_bytes(head) == (Answer(403, body=b"denied"),)


def test_after_a_head_request_requests_are_still_checked() -> None:
    """A HEAD's response has no body the parser could know of: responses are not followed
    after it, but every request still goes past the hooks (an answer, out of order, cannot)."""
    exchange, _ = _exchange(deny("/admin"))
    head = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert exchange.request_bytes(head) is FORWARD
    assert exchange.response_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n") is FORWARD
    assert exchange.request_bytes(GET) is FORWARD
    assert exchange.request_bytes(ADMIN) == (Close(ANSWER_OUT_OF_ORDER),)


@pytest.mark.parametrize(
    ("stream", "max_head", "verdict"),
    [
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100, 64, (Answer(431),)),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100 + b"\r\n\r\n", 64, (Answer(431),)),
        (b"GET / HTTP/1.1\r\nHo\x00st: x\r\n\r\n", 65536, (Answer(400),)),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 65536, (Answer(400),)),
        (CHUNKED_HEAD + b"zz\r\n\r\n", 65536, (Send(CHUNKED_HEAD), Close(BAD_BODY))),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            65536,
            (Answer(400),),
        ),
    ],
    ids=["head-too-big", "head-too-big-whole", "bad-header", "not-http", "bad-chunk", "cl-and-te"],
)
def test_what_cannot_be_followed_is_answered_or_closed(
    stream: bytes, max_head: int, verdict: Verdict
) -> None:
    """Unlike the observer, an exchange with hooks never lets unseen requests through."""
    exchange, _ = _exchange(deny("/admin"), max_head=max_head)
    assert exchange.request_bytes(stream) == verdict


def test_a_hook_asking_for_a_replay_is_a_programming_error() -> None:
    exchange, _ = _exchange(lambda head: (Replay("retry"),))
    with pytest.raises(TypeError, match="Replay"):
        exchange.request_bytes(GET)


def test_unanswered_requests_and_a_waiting_answer_are_reported_at_the_end() -> None:
    exchange, events = _exchange(deny("/admin"))
    exchange.request_bytes(GET + ADMIN)
    exchange.finished()
    assert [(e.method, e.status) for e in events if isinstance(e, RequestCompleted)] == [
        ("GET", 0),
        ("GET", 0),
    ]


@pytest.mark.parametrize(
    ("name", "value"), [("X-A", "1\r\nX-Evil: 1"), ("X A", "1"), ("X-A", "a\x00b"), ("", "v")]
)
def test_a_header_edit_cannot_smuggle_a_line(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        AddHeader(name, value)
    with pytest.raises(ValueError):
        SetHeader(name, value)


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("end", ["finished", "answered", "upgraded", "closed"])
def test_a_done_exchange_is_freed_by_refcounting(end: str, no_gc: None) -> None:
    for _ in range(200):
        exchange, _events = _exchange(deny("/admin"), tag())
        if end == "upgraded":
            exchange.request_bytes(
                b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: ws\r\n\r\n"
            )
        elif end == "answered":
            exchange.request_bytes(ADMIN)
        elif end == "closed":
            exchange.request_bytes(CHUNKED_HEAD + b"zz\r\n\r\n")
        else:
            exchange.request_bytes(GET + POST[:20])
            exchange.response_bytes(OK)
        exchange.finished()
    assert gc.collect() == 0


# --- the install point ----------------------------------------------------------
@pytest.mark.parametrize(
    ("plan", "direction", "kind"),
    [
        (None, "outbound", type(None)),
        (None, "inbound", type(None)),
        (OBSERVE, "outbound", HttpObserver),
        (OBSERVE, "inbound", InboundObserver),
        (HttpPlan(hooks=(tag(),)), "outbound", HttpExchange),
        (HttpPlan(hooks=(tag(),)), "inbound", InboundHttpExchange),
    ],
)
def test_a_plan_gets_the_exchange_it_needs(
    plan: HttpPlan | None, direction: str, kind: type
) -> None:
    exchange = exchange_for(plan, lambda e: None, direction, "s", "web", 65536)
    assert type(exchange) is kind


@pytest.mark.parametrize("hooks", [(), (tag(),)])
def test_inbound_requests_come_from_the_link(hooks: tuple[RequestHook, ...]) -> None:
    """On the inbound side the stream's incoming bytes are the requests."""
    events: list[Event] = []
    exchange = exchange_for(HttpPlan(hooks=hooks), events.append, "inbound", "s", "web", 65536)
    assert exchange is not None and exchange.client_is_app is False
    assert exchange.incoming(GET) in (FORWARD, (Send(GET_TAGGED),))
    assert exchange.outgoing(OK) is FORWARD
    assert [(e.direction, e.status) for e in events if isinstance(e, RequestCompleted)] == [
        ("inbound", 200)
    ]


def test_a_plan_that_does_not_observe_publishes_nothing() -> None:
    events: list[Event] = []
    plan = HttpPlan(observe=False, hooks=(tag(),))
    exchange = exchange_for(plan, events.append, "outbound", "s", "web", 65536)
    assert exchange is not None
    exchange.outgoing(GET)
    exchange.incoming(OK)
    exchange.finished()
    assert events == []


# --- answers that keep the connection alive, and target rewrites ------------------
KEPT = Answer(403, body=b"denied", keep_alive=True)
POST_ADMIN = b"POST /admin/x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nGET /a HTTP"
CHUNKED_ADMIN = CHUNKED.replace(b"PUT /c", b"PUT /admin")


def deny_kept(prefix: str) -> RequestHook:
    def hook(head: RequestHead) -> tuple[RequestAction, ...]:
        return (KEPT,) if head.path.startswith(prefix) else ()

    return hook


def target(value: str) -> RequestHook:
    return lambda head: (SetTarget(value),)


@pytest.mark.parametrize(
    "denied",
    [ADMIN, POST_ADMIN, CHUNKED_ADMIN],
    ids=["get", "body-looks-like-a-request", "chunked-body"],
)
def test_a_kept_alive_answer_drops_the_body_and_the_next_request_goes_on(denied: bytes) -> None:
    """Split anywhere: the denied request (and its body) never goes on, the next one does."""
    for chunks in _splits(denied + GET + POST):
        exchange, events = _exchange(deny_kept("/admin"))
        assert _feed(exchange, chunks) == (GET + POST, [KEPT]), chunks
        assert exchange.response_bytes(OK) is FORWARD
        assert exchange.response_bytes(OK) is FORWARD
        assert exchange.request_bytes(GET) is FORWARD  # still followed, not dropped
        statuses = [e.status for e in events if isinstance(e, RequestCompleted)]
        assert statuses == [403, 200, 200]


def test_a_body_chunk_of_a_denied_request_is_dropped_without_a_look() -> None:
    exchange, _ = _exchange(deny_kept("/admin"))
    head = b"POST /admin HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
    assert exchange.request_bytes(head + b"abc") == (KEPT,)
    assert exchange.request_bytes(b"defg") == DROP
    assert exchange.request_bytes(b"hij" + GET) == (Send(GET),)


def test_a_kept_alive_answer_behind_pipelined_requests_waits_and_closes() -> None:
    """Requests after it would have to wait behind it: the answer goes in turn and closes."""
    exchange, _ = _exchange(deny_kept("/admin"))
    assert exchange.request_bytes(GET + ADMIN + GET) == (Send(GET),)
    closing = Answer(403, body=b"denied")
    assert exchange.response_bytes(OK) == (Send(OK), closing)
    assert b"Connection: close" in closing.encode()


def test_a_body_awaiting_100_continue_is_not_waited_for() -> None:
    """Its client may send the next request instead of the body: the answer closes."""
    exchange, _ = _exchange(deny_kept("/admin"))
    head = b"POST /admin HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    assert exchange.request_bytes(head) == (Answer(403, body=b"denied"),)


def test_an_upgrade_answered_with_keep_alive_still_closes() -> None:
    exchange, _ = _exchange(deny_kept("/ws"))
    head = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert exchange.request_bytes(head + GET) == (Answer(403, body=b"denied"),)


def test_a_kept_alive_answer_says_so_on_the_wire() -> None:
    wire = KEPT.encode()
    assert wire == b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied"
    assert Answer(403).encode().endswith(b"Connection: close\r\n\r\n")


@pytest.mark.parametrize(
    ("stream", "value", "expected"),
    [
        (GET, "/b?q=1", GET.replace(b"/a", b"/b?q=1")),
        (POST + GET, "/n", (POST + GET).replace(b"/b", b"/n").replace(b"/a", b"/n")),
    ],
    ids=["get", "post-then-get"],
)
def test_a_target_rewrite_reaches_the_server(stream: bytes, value: str, expected: bytes) -> None:
    for chunks in _splits(stream):
        exchange, _ = _exchange(target(value))
        assert _feed(exchange, chunks) == (expected, []), chunks


@pytest.mark.parametrize("value", ["a", "/a b", "/a\r\nX: 1", "/\u00e9", ""])
def test_a_target_rewrite_cannot_smuggle_anything(value: str) -> None:
    with pytest.raises(ValueError):
        SetTarget(value)


@pytest.mark.parametrize(
    ("stream", "seen"),
    [
        (
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: \t1 2 \r\n\r\n",
            ("/a", (("Host", "x"), ("X-A", "1 2"))),
        ),
        (b"GET  /a?q=1   HTTP/1.1\r\n\r\n", ("/a?q=1", ())),
        (b"\r\n\r\nGET /b HTTP/1.1\r\nX-B: y\r\n\r\n", ("/b", (("X-B", "y"),))),
        (POST, ("/b", (("Host", "x"), ("Content-Length", "5")))),
    ],
    ids=["blanks-around-values", "extra-spaces-in-line", "empty-lines-first", "with-body"],
)
def test_hooks_see_the_target_and_headers_the_parser_accepted(
    stream: bytes, seen: tuple[str, tuple[tuple[str, str], ...]]
) -> None:
    """The exchange cuts the target and the header lines out of the raw head itself (no
    parser callbacks): whole or split anywhere, hooks see what the parser accepted."""
    for chunks in [[stream], *_splits(stream)]:
        heads: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        exchange, _ = _exchange(_looking(heads))
        assert _feed(exchange, chunks) == (stream, []), chunks
        assert heads == [seen], chunks


def _looking(heads: list[tuple[str, tuple[tuple[str, str], ...]]]) -> RequestHook:
    def look(head: RequestHead) -> tuple[RequestAction, ...]:
        heads.append((head.target, head.headers))
        return ()

    return look


def test_a_request_line_with_a_blank_inside_its_target_is_a_400() -> None:
    exchange, _ = _exchange(tag())
    sent, acts = _feed(exchange, [b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert sent == b""
    assert [a.status for a in acts if isinstance(a, Answer)] == [400]
