"""What a link lets its peer make it do: bounded frames, bounded replies, bounded buffers.

Anything a peer sends is hostile until proven otherwise, authenticated or
not. These are the link's own rules, tested with fake transports; the same
abuse against real meshd processes is in test_abuse.py.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from meshd.frames import (
    DATA,
    FIN,
    GOAWAY,
    HEADER,
    MAX_SID,
    OPEN,
    PING,
    PONG,
    RST,
    WINDOW,
    WINDOW_CREDIT,
    OpenRequest,
    ProtocolError,
    frame,
    reset_payload,
)
from meshd.link import CONTROL_BURST, REPLY_BACKLOG, Link
from meshd.stream import WINDOW_SLACK, Stream
from tests.meshd.test_frames import FakeTransport, turn

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
        ("web", "80", SOURCE, "10.0.0.1:99999"),
    ],
)
def test_open_fields_that_are_not_names_are_a_protocol_error(fields: tuple[str, ...]) -> None:
    with pytest.raises(ProtocolError):
        OpenRequest.decode("\0".join(fields).encode())


@pytest.mark.parametrize("original", ["", "10.0.0.1:8080", "[2001:db8::1]:443"])
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
