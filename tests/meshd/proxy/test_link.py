"""What a link lets its peer make it do: bounded frames, bounded replies, bounded buffers.

Anything a peer sends is hostile until proven otherwise, authenticated or
not. These are the link's own rules, tested with fake transports; the same
abuse against real meshd processes is in test_abuse.py.
"""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from cryptography import x509

from meshd.proxy import frames
from meshd.proxy.frames import (
    DATA,
    FIN,
    GOAWAY,
    HEADER,
    MAX_SID,
    OPEN,
    PING,
    PONG,
    RST,
    RST_CANCEL,
    RST_CONNECT_FAILED,
    RST_REFUSED,
    WINDOW,
    WINDOW_CREDIT,
    OpenRequest,
    ProtocolError,
    frame,
    reset_payload,
)
from meshd.proxy.link import REPLY_BACKLOG, Link
from meshd.proxy.linkread import CONTROL_BURST
from meshd.proxy.stream import WINDOW_SLACK, AppProtocol, Stream
from tests.meshd.proxy.test_frames import FakeTransport, _link_with_stream, turn
from tests.meshd.tls.test_der import cert as leaf_der
from tests.meshd.tls.test_der import usage

pytestmark = pytest.mark.anyio
SOURCE = "spiffe://t.mesh/host/a"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _acceptor(max_streams: int = 100, link_window: int = 1 << 30) -> tuple[Link, FakeTransport]:
    def refuse(link: Link, sid: int, request: OpenRequest) -> Stream | None:
        return None

    link = Link(
        dialer=False,
        max_frame=16,
        max_streams=max_streams,
        ping_interval=3600,
        link_window=link_window,
        on_open=refuse,
    )
    transport = FakeTransport()
    link.transport = transport
    return link, transport


def _dialer(link_window: int = 1 << 30) -> tuple[Link, FakeTransport]:
    link = Link(
        dialer=True, max_frame=16, max_streams=10, ping_interval=3600, link_window=link_window
    )
    transport = FakeTransport()
    link.transport = transport
    return link, transport


async def turns_until(condition: Callable[[], bool], most: int = 1000) -> None:
    for _ in range(most):
        if condition():
            return
        await turn()


def _stream(link: Link, window: int = 64) -> tuple[Stream, FakeTransport]:
    stream, app = Stream(window=window), FakeTransport()
    stream.transport = app
    link.open_stream(stream, OpenRequest("web", 80, SOURCE))
    return stream, app


# --- nothing is spent before the peer is known -------------------------------------------
async def test_a_link_allocates_its_read_buffer_only_once_connected() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        links = [
            Link(dialer=False, max_frame=16, max_streams=1, ping_interval=9) for _ in range(100)
        ]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(links) == 100
    assert grown < 100 * 8 * 1024, f"100 unconnected links cost {grown} bytes"


# --- control frames have small fixed sizes ------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "length"),
    [(PING, 1 << 20), (PONG, 9), (WINDOW, 5), (FIN, 1), (GOAWAY, 1), (RST, 4096), (OPEN, 65536)],
)
async def test_an_oversized_control_frame_aborts_the_link_at_its_header(
    kind: int, length: int
) -> None:
    link, transport = _acceptor()
    link.data_received(HEADER.pack(kind, 1, length))  # the payload never needs to arrive
    assert transport.aborted


@pytest.mark.parametrize("payload", [b"", b"1234567", b"123456789"])
async def test_a_ping_must_carry_exactly_eight_bytes(payload: bytes) -> None:
    link, transport = _acceptor()
    link.data_received(frame(PING, 0, payload))
    assert transport.aborted


async def test_an_unknown_frame_type_aborts_at_its_header() -> None:
    link, transport = _acceptor()
    link.data_received(HEADER.pack(99, 0, 1 << 20))
    assert transport.aborted


async def test_a_ping_is_answered_with_its_eight_bytes() -> None:
    link, transport = _acceptor()
    link.data_received(frame(PING, 0, b"12345678"))
    await turn()
    assert bytes(transport.out) == frame(PONG, 0, b"12345678")
    assert not transport.aborted


async def test_an_empty_data_frame_is_harmless() -> None:
    link, transport = _dialer()
    stream, app = _stream(link)
    link.data_received(frame(DATA, stream.sid, b"") + frame(DATA, stream.sid, b"ok"))
    assert not transport.aborted
    assert bytes(app.out) == b"ok"


# --- a peer that does not read gets no unbounded replies ---------------------------------
PING_FLOOD = frame(PING, 0, b"12345678") * (REPLY_BACKLOG // 17 + 10)
OPEN_FLOOD = b"".join(
    frame(OPEN, 2 * i + 1, OpenRequest("web", 80, SOURCE).encode())
    for i in range(REPLY_BACKLOG // 10)
)


@pytest.mark.parametrize("flood", [PING_FLOOD, OPEN_FLOOD], ids=["pings", "refused-opens"])
async def test_a_flood_from_a_peer_that_does_not_read_closes_the_link(flood: bytes) -> None:
    link, transport = _acceptor()
    link.pause_writing()  # our send buffer is full: the peer does not read
    link.data_received(flood)
    await turns_until(lambda: transport.aborted)
    assert transport.aborted
    assert len(transport.out) <= REPLY_BACKLOG + 512


async def test_replies_are_not_limited_while_the_peer_reads() -> None:
    link, transport = _acceptor()
    link.data_received(frame(PING, 0, b"12345678") * (2 * REPLY_BACKLOG // 17))
    await turns_until(lambda: link._stash is None)
    assert not transport.aborted


# --- OPEN fields are names, not text ------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        ("web\nINFO meshd: reloaded", "80", SOURCE, ""),
        ("web", "80", SOURCE + "\nINFO meshd: reloaded", ""),
        ("web", "80", SOURCE, "10.0.0.1:80\r\nforged"),
        ("Web", "80", SOURCE, ""),
        ("web", "0", SOURCE, ""),
        ("web", "65536", SOURCE, ""),
        ("web", "+80", SOURCE, ""),
        ("web", "80", "spiffe://t.mesh/host/a b", ""),
        ("web", "80", "not-an-id", ""),
        ("web", "80", SOURCE, "somewhere"),
        ("web", "80", SOURCE, "upstream Web\nforged"),
        ("web", "80", SOURCE, "10.0.0.1:99999"),
    ],
)
def test_open_fields_that_are_not_names_are_a_protocol_error(fields: tuple[str, ...]) -> None:
    with pytest.raises(ProtocolError):
        OpenRequest.decode("\0".join(fields).encode())


@pytest.mark.parametrize(
    "original",
    ["", "10.0.0.1:8080", "[2001:db8::1]:443", "upstream web"],  # the last: 0.1.0
)
def test_open_requests_with_valid_fields_decode(original: str) -> None:
    request = OpenRequest("api-2", 8080, "spiffe://prod.example/svc/web", original)
    assert OpenRequest.decode(request.encode()) == request


async def test_an_open_with_a_forged_log_line_aborts_the_link_unopened() -> None:
    opened: list[int] = []

    def on_open(link: Link, sid: int, request: OpenRequest) -> Stream | None:
        opened.append(sid)
        return None

    link, transport = _acceptor()
    link.on_open = on_open
    link.data_received(frame(OPEN, 1, b"web\nWARNING forged\x0080\x00" + SOURCE.encode() + b"\x00"))
    assert transport.aborted and opened == []


# --- stream ids ---------------------------------------------------------------------------
async def test_a_link_retires_before_its_stream_ids_run_out() -> None:
    link, _ = _dialer()
    link.next_sid = MAX_SID - 2
    first, _ = _stream(link)
    assert first.sid == MAX_SID - 2 and link.usable
    last, _ = _stream(link)
    assert last.sid == MAX_SID
    assert not link.usable, "a link without ids left must take no more streams"
    assert all(sid <= MAX_SID for sid in link.streams)


async def test_the_accepting_side_wants_rising_stream_ids() -> None:
    link, transport = _acceptor()
    request = OpenRequest("web", 80, SOURCE).encode()
    link.data_received(frame(OPEN, 5, request))
    assert not transport.aborted
    link.data_received(frame(OPEN, 3, request))
    assert transport.aborted


# --- the link-level budget ----------------------------------------------------------------
async def test_the_sender_pauses_every_stream_when_the_link_budget_is_spent() -> None:
    link, _ = _dialer(link_window=100)
    streams = [_stream(link, window=64) for _ in range(3)]
    for stream, _ in streams[:2]:
        stream.send(b"x" * 60)  # 120 bytes in flight: over the link's 100
    assert all(s.reading_paused for s, _ in streams)
    link.data_received(frame(WINDOW, streams[0][0].sid, WINDOW_CREDIT.pack(60)))
    assert not streams[2][0].reading_paused  # 60 in flight: room again
    assert not streams[1][0].reading_paused


async def test_a_finished_stream_gives_its_budget_back_on_both_sides() -> None:
    link, _ = _dialer(link_window=100)
    stream, _ = _stream(link, window=64)
    other, _ = _stream(link, window=64)
    stream.send(b"x" * 60)
    other.send(b"x" * 50)
    assert other.reading_paused
    link.data_received(frame(RST, stream.sid, reset_payload(1, "gone")))
    assert link.in_flight == 50
    assert not other.reading_paused


async def test_a_peer_that_ignores_the_link_budget_is_cut_off() -> None:
    opened: list[Stream] = []

    def on_open(link: Link, sid: int, request: OpenRequest) -> Stream | None:
        stream = Stream(window=1 << 30)
        stream.transport = FakeTransport()
        stream.app_paused = True  # the app reads nothing: no credit goes back
        opened.append(stream)
        return stream

    link, transport = _acceptor(link_window=1 << 20)
    link.on_open = on_open
    request = OpenRequest("web", 80, SOURCE).encode()
    chunk = b"y" * 65536
    sid = 1
    while not transport.aborted and sid < 2000:
        link.data_received(frame(OPEN, sid, request) + frame(DATA, sid, chunk) * 4)
        sid += 2
    assert transport.aborted
    assert sum(s.received for s in opened) <= (1 << 20) + WINDOW_SLACK + 4 * 65536


# --- app connections that complete after their stream was reset --------------------------
def test_an_app_connection_that_completes_after_a_reset_is_closed() -> None:
    stream = Stream(window=64)
    stream.reset("peer reset stream")
    late = FakeTransport()
    stream.app_connected(late)
    assert late.aborted or late.closed


def test_app_connected_after_the_stream_finished_writes_nothing() -> None:
    stream = Stream(window=64)
    stream.inbox.append(b"early bytes")
    stream.reset("link lost")
    late = FakeTransport()
    stream.app_connected(late)
    assert bytes(late.out) == b""


async def test_many_streams_each_holding_a_little_do_not_starve_the_link() -> None:
    """Each stream grants only past a quarter of its window; the link must not wait forever."""
    streams: list[Stream] = []

    def on_open(link: Link, sid: int, request: OpenRequest) -> Stream | None:
        stream = Stream(window=1 << 20)  # grants at 256 KiB
        stream.transport = FakeTransport()
        streams.append(stream)
        return stream

    link, transport = _acceptor(link_window=1 << 20)
    link.on_open = on_open
    request = OpenRequest("web", 80, SOURCE).encode()
    for i in range(40):  # 40 streams x 64 KiB: 2.5x the link budget, each far below 256 KiB
        link.data_received(frame(OPEN, 2 * i + 1, request) + frame(DATA, 2 * i + 1, b"z" * 65536))
    await turn()
    assert not transport.aborted
    assert link.receiving <= 1 << 20
    credited = sum(s.credited for s in streams)
    assert credited >= 40 * 65536 - (1 << 20), "credit must flow back to the sender"


async def test_a_burst_of_control_frames_is_spread_over_loop_turns() -> None:
    """A peer sending thousands of OPENs at once must not hold the event loop for all of them."""
    opened: list[int] = []

    def on_open(link: Link, sid: int, request: OpenRequest) -> Stream | None:
        opened.append(sid)
        return None

    link, transport = _acceptor(max_streams=100_000)
    link.on_open = on_open
    paused: list[bool] = []
    transport.pause_reading = lambda: paused.append(True)  # type: ignore[method-assign]
    transport.resume_reading = lambda: paused.append(False)  # type: ignore[method-assign]
    request = OpenRequest("web", 80, SOURCE).encode()
    link.data_received(b"".join(frame(OPEN, 2 * i + 1, request) for i in range(1000)))
    assert len(opened) == CONTROL_BURST, "one turn handles one burst of control frames"
    assert paused == [True]
    for _ in range(10):
        await turn()
    assert len(opened) == 1000, "the rest follow, in order, over the next turns"
    assert opened == sorted(opened)
    assert paused[-1] is False and not transport.aborted


# --- review findings ----------------------------------------------------------------------
class _Tracking(FakeTransport):
    """Records whether reading is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _accepting(link: Link, transport: bool = False) -> list[Stream]:
    streams: list[Stream] = []

    def on_open(link: Link, sid: int, request: OpenRequest) -> Stream | None:
        stream = Stream(window=1 << 20)
        if transport:
            stream.transport = _Tracking()
        streams.append(stream)
        return stream

    link.on_open = on_open
    return streams


async def test_a_stream_accepted_while_the_link_cannot_send_starts_paused() -> None:
    """Its app connection comes later: the pause must wait for it, not be forgotten."""
    link, _ = _acceptor()
    streams = _accepting(link)
    link.pause_writing()  # the peer does not read
    link.data_received(frame(OPEN, 1, OpenRequest("web", 80, SOURCE).encode()))
    app = _Tracking()
    streams[0].app_connected(app)
    assert not app.reading, "a stream of a link that cannot send must not read its app"
    link.resume_writing()
    assert app.reading


async def test_a_dialled_stream_keeps_reading_whatever_the_peer_holds() -> None:
    """The budget guards the side that takes streams; a dialler's downloads do not stall."""
    link, _ = _dialer(link_window=100)
    stalled, _ = _stream(link, window=64)
    other, _ = _stream(link, window=64)
    stalled.send(b"x" * 60)
    other.send(b"y" * 50)  # over the link's 100 in flight
    assert other.reading_paused, "the dialler's own sends are bounded by the budget"
    acceptor, _ = _acceptor(link_window=100)
    streams = _accepting(acceptor, transport=True)
    request = OpenRequest("web", 80, SOURCE).encode()
    acceptor.data_received(frame(OPEN, 1, request) + frame(OPEN, 3, request))
    streams[0].send(b"x" * 60)  # B answering: nobody credits it (a client that does not read)
    streams[1].send(b"y" * 50)
    assert not streams[1].reading_paused, "one slow client must not stall the others"


async def test_replies_to_accepted_streams_that_fail_count_as_replies() -> None:
    """An OPEN accepted, then refused because its app is down, is answered as a refusal is."""
    link, transport = _acceptor(max_streams=100_000)
    streams = _accepting(link)
    link.pause_writing()
    request = OpenRequest("web", 80, SOURCE).encode()
    sid = 1
    while not transport.aborted and sid < 40_000:
        link.data_received(frame(OPEN, sid, request))
        await turn()
        link.refuse(streams[-1], 3, "cannot reach the app")
        sid += 2
    assert transport.aborted
    assert len(transport.out) <= REPLY_BACKLOG + 512


async def test_empty_and_stray_data_frames_count_towards_a_turn() -> None:
    link, transport = _acceptor()
    link.data_received(frame(OPEN, 1, OpenRequest("web", 80, SOURCE).encode()))
    paused: list[bool] = []
    transport.pause_reading = lambda: paused.append(True)  # type: ignore[method-assign]
    link.data_received(frame(DATA, 1, b"") * 10_000)
    assert paused == [True], "10,000 empty frames in one turn"


async def test_data_for_a_stream_never_opened_is_a_protocol_error() -> None:
    link, transport = _acceptor()
    link.data_received(frame(OPEN, 1, OpenRequest("web", 80, SOURCE).encode()))
    link.data_received(frame(DATA, 1, b"ok"))
    assert not transport.aborted
    link.data_received(frame(DATA, 99, b"stray"))
    assert transport.aborted


async def test_a_finished_stream_is_not_credited_twice() -> None:
    link, transport = _acceptor()
    streams = _accepting(link, transport=True)
    link.data_received(frame(OPEN, 1, OpenRequest("web", 80, SOURCE).encode()))
    stream = streams[0]
    stream.app_write_paused(True)  # the app does not read: nothing is credited
    link.data_received(frame(DATA, 1, b"z" * 1000))
    assert link.receiving == 1000
    link.data_received(frame(RST, 1, reset_payload(1, "gone")))
    assert link.receiving == 0
    written = len(transport.out)
    stream.app_write_paused(False)  # the app's buffer drains after the stream ended
    await turn()
    assert link.receiving == 0
    assert len(transport.out) == written, "no WINDOW for a stream that is gone"


# --- resets: one way to build them, each sent once ------------------------------------------
def _app_closed(link: Link, stream: Stream) -> None:
    stream.app_lost()


def _idle(link: Link, stream: Stream) -> None:
    link.reset(stream, RST_CANCEL, "idle for 300s")


def _app_down(link: Link, stream: Stream) -> None:
    link.refuse(stream, RST_CONNECT_FAILED, "cannot reach the app on port 80")


@pytest.mark.parametrize(
    ("end", "code", "reason", "error"),
    [
        (_app_closed, RST_CANCEL, "app closed", "app closed before the stream finished"),
        (_idle, RST_CANCEL, "idle for 300s", "idle for 300s"),
        (_app_down, RST_CONNECT_FAILED, "cannot reach the app on port 80", None),
    ],
    ids=["app-closed", "link-reset", "refused-after-all"],
)
async def test_a_stream_that_ends_tells_the_peer_once(
    end: Callable[[Link, Stream], None], code: int, reason: str, error: str | None
) -> None:
    link, stream, transport, _ = _link_with_stream()
    errors: list[str] = []
    stream.on_close = lambda s, e: errors.append(e)
    await turn()
    transport.out.clear()
    end(link, stream)
    end(link, stream)  # again, once it is gone: nothing more goes out
    await turn()
    assert bytes(transport.out) == frame(RST, stream.sid, reset_payload(code, reason))
    assert errors == [error or reason]
    assert stream.sid not in link.streams


async def test_a_refused_open_is_answered_with_a_reset() -> None:
    link, transport = _acceptor(max_streams=1)
    request = OpenRequest("web", 80, SOURCE).encode()
    link.data_received(frame(OPEN, 1, request))
    await turn()
    assert bytes(transport.out) == frame(RST, 1, reset_payload(RST_REFUSED, "refused"))


def test_a_stream_without_a_link_holds_at_most_one_read() -> None:
    """While its link is being dialled, a stream stops reading its app at once."""
    stream = Stream(window=1 << 20)
    app = _Tracking()
    stream.transport = app
    stream.send(b"x" * 1000)
    assert not app.reading and stream.outbox_size == 1000
    stream.reset("no reachable endpoint")
    assert stream.outbox == [] and stream.outbox_size == 0


class _Recording(Stream):
    """A stream that notes what its app sent instead of forwarding it."""

    def __init__(self) -> None:
        super().__init__(window=1 << 20)
        self.got: list[int] = []

    def send(self, data: bytes) -> None:
        self.got.append(len(data))


def test_a_stream_paused_before_its_app_connects_stays_paused_under_uvloop() -> None:
    """uvloop starts reading a connection it made after connection_made returns, whatever
    the protocol asked for there: a stream whose link cannot send would read its app."""

    async def body() -> list[int]:
        server = socket.create_server(("127.0.0.1", 0))
        stream = _Recording()
        stream.pause_reading()  # its link cannot send: noted before the app connects
        loop = asyncio.get_running_loop()
        port = server.getsockname()[1]
        await loop.create_connection(lambda: AppProtocol(stream), "127.0.0.1", port)
        app, _ = server.accept()
        with server, app:
            app.sendall(b"r" * 100_000)
            await asyncio.sleep(0.3)
            before = list(stream.got)
            stream.resume_reading()
            await asyncio.sleep(0.3)
            assert sum(stream.got) == 100_000, "resumed, it reads"
            stream.reset("done")
        return before

    assert uvloop.run(body()) == [], "a paused stream read its app"


class _PeerSsl:
    """What a link reads of its peer's TLS: the ALPN it chose and a proper leaf."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol

    def selected_alpn_protocol(self) -> str:
        return self.protocol

    def getpeercert(self, binary_form: bool = False) -> Any:
        if binary_form:
            return leaf_der(x509.BasicConstraints(False, None), usage(True))
        return {"notAfter": "Jan  1 00:00:00 2099 GMT", "subjectAltName": (("URI", SOURCE),)}


class _TlsTransport(FakeTransport):
    def __init__(self, protocol: str) -> None:
        super().__init__()
        self.ssl = _PeerSsl(protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.ssl if name == "ssl_object" else super().get_extra_info(name, default)


@pytest.mark.parametrize(
    ("protocol", "budgeted"), [("meshd-link/2", True), ("meshd-link/1", False)]
)
async def test_a_dialler_keeps_its_budget_only_towards_a_peer_that_credits_in_time(
    protocol: str, budgeted: bool
) -> None:
    """A meshd 0.1.0 peer credits a stream only past a quarter of its window: a budget
    towards it could wait forever (many streams, each holding a little)."""
    link = Link(dialer=True, max_frame=16, max_streams=10, ping_interval=3600, link_window=100)
    link.connection_made(_TlsTransport(protocol))
    assert not link.closed and not link.transport.aborted  # type: ignore[union-attr]
    first, _ = _stream(link, window=64)
    second, _ = _stream(link, window=64)
    first.send(b"x" * 60)
    second.send(b"y" * 50)
    assert link.over_budget is budgeted
    link.connection_lost(None)


async def test_a_peer_without_a_link_protocol_is_refused() -> None:
    link = Link(dialer=True, max_frame=16, max_streams=10, ping_interval=3600)
    transport = _TlsTransport("h2")
    link.connection_made(transport)
    assert transport.aborted and "ALPN" in link.refused


def test_parsed_opens_are_kept_in_a_bounded_table() -> None:
    first = OpenRequest("web", 80, SOURCE).encode()
    assert OpenRequest.decode(first) is OpenRequest.decode(first)  # parsed once, then kept
    for port in range(1, 3 * frames.DECODED_MAX):  # a peer sending a new OPEN each time
        OpenRequest.decode(OpenRequest("web", port, SOURCE).encode())
        assert len(frames._DECODED) <= frames.DECODED_MAX
    with pytest.raises(ProtocolError):  # a malformed one is never kept, and always refused
        OpenRequest.decode(b"web\nforged\x0080\x00" + SOURCE.encode() + b"\x00")
    with pytest.raises(ProtocolError):
        OpenRequest.decode(b"web\nforged\x0080\x00" + SOURCE.encode() + b"\x00")
