"""The link's frames and the parser that reads them from arbitrarily cut input."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.proxy.frames import (
    DATA,
    FIN,
    OPEN,
    RST,
    WINDOW,
    WINDOW_CREDIT,
    OpenRequest,
    ProtocolError,
    frame,
    parse_reset,
    reset_payload,
)
from meshd.proxy.link import Link
from meshd.proxy.stream import Stream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@given(
    service=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    port=st.integers(1, 65535),
    source=st.from_regex(r"spiffe://[a-z.]{1,10}/svc/[a-z]{1,10}", fullmatch=True),
    original=st.builds(
        lambda ip, port: f"{ip}:{port}", st.ip_addresses(v=4).map(str), st.integers(1, 65535)
    ),
)
def test_open_request_roundtrip(service: str, port: int, source: str, original: str) -> None:
    request = OpenRequest(service, port, source, original)
    assert OpenRequest.decode(request.encode()) == request


@pytest.mark.parametrize(
    "payload", [b"", b"web\x008080", b"web\x00port\x00src\x00dst", b"\xff\xfe"]
)
def test_malformed_open_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        OpenRequest.decode(payload)


def test_reset_payload() -> None:
    assert parse_reset(reset_payload(3, "app down")) == (3, "app down")
    assert parse_reset(b"")[0] == 5


class FakeTransport(asyncio.Transport):
    """Records what a link writes; never pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.aborted = False
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.out += chunk

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def write_eof(self) -> None:
        self.out += b"<EOF>"


async def turn() -> None:
    """Let the link's end-of-turn flush run."""
    await asyncio.sleep(0)


def _link_with_stream() -> tuple[Link, Stream, FakeTransport, FakeTransport]:
    link = Link(dialer=True, max_frame=16, max_streams=10, ping_interval=3600)
    link_transport = FakeTransport()
    link.transport = link_transport  # connection_made would also start pinging
    stream = Stream(window=64)
    app = FakeTransport()
    stream.transport = app
    link.open_stream(stream, OpenRequest("web", 80, "spiffe://t/svc/a"))
    return link, stream, link_transport, app


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 50), min_size=1, max_size=30),
)
def test_parser_delivers_data_in_order_however_the_input_is_cut(
    chunks: list[bytes], cuts: list[int]
) -> None:
    async def body() -> None:
        link, stream, _, app = _link_with_stream()
        wire = b"".join(frame(DATA, stream.sid, c) for c in chunks) + frame(FIN, stream.sid)
        position = 0
        for cut in cuts * (len(wire) // max(1, sum(cuts)) + 1):
            if position >= len(wire):
                break
            link.data_received(wire[position : position + cut])
            position += cut
        if position < len(wire):
            link.data_received(wire[position:])
        assert bytes(app.out) == b"".join(chunks) + b"<EOF>"
        assert stream.fin_received

    asyncio.run(body())


async def test_frames_of_one_turn_leave_in_one_write() -> None:
    _, stream, link_transport, _ = _link_with_stream()
    await turn()
    writes: list[bytes] = []
    link_transport.write = writes.append  # type: ignore[method-assign,assignment]
    stream.send(b"a")
    stream.send(b"b")
    stream.send_fin()
    assert writes == []
    await turn()
    assert writes == [
        frame(DATA, stream.sid, b"a") + frame(DATA, stream.sid, b"b") + frame(FIN, stream.sid)
    ]


async def test_sending_splits_frames_and_respects_the_window() -> None:
    link, stream, link_transport, _ = _link_with_stream()
    await turn()
    link_transport.out.clear()
    stream.send(b"x" * 40)  # max_frame 16: three DATA frames
    await turn()
    assert link_transport.out.count(b"x") == 40
    assert link_transport.out.count(frame(DATA, stream.sid, b"x" * 16)) == 2
    assert stream.send_window == 24
    stream.send(b"y" * 30)
    assert stream.send_window == -6 and stream.reading_paused
    link.data_received(frame(WINDOW, stream.sid, WINDOW_CREDIT.pack(64)))
    assert stream.send_window == 58 and not stream.reading_paused


async def test_receiver_grants_credit_after_passing_data_on() -> None:
    link, stream, link_transport, _ = _link_with_stream()
    await turn()
    link_transport.out.clear()
    link.data_received(frame(DATA, stream.sid, b"z" * 16))  # a quarter of the window
    await turn()
    assert link_transport.out == frame(WINDOW, stream.sid, WINDOW_CREDIT.pack(16))


async def test_app_that_stops_reading_gets_no_more_credit() -> None:
    link, stream, link_transport, _ = _link_with_stream()
    await turn()
    link_transport.out.clear()
    stream.app_write_paused(True)
    link.data_received(frame(DATA, stream.sid, b"z" * 40))
    await turn()
    assert link_transport.out == b""  # no credit while the app's buffer is full
    stream.app_write_paused(False)
    await turn()
    assert link_transport.out == frame(WINDOW, stream.sid, WINDOW_CREDIT.pack(40))


async def test_reset_aborts_the_app_side() -> None:
    link, stream, _, app = _link_with_stream()
    link.data_received(frame(RST, stream.sid, reset_payload(2, "no")))
    assert app.aborted and stream.closed
    assert stream.sid not in link.streams


@pytest.mark.parametrize(
    "wire",
    [
        frame(99, 0),  # unknown type
        frame(DATA, 1, b"")[:5] + (2**31).to_bytes(4, "big"),  # absurd length
        frame(OPEN, 1, b"web\x0080\x00s\x00d"),  # the dialling side never receives OPEN
    ],
)
async def test_protocol_errors_abort_the_link(wire: bytes) -> None:
    link, _, link_transport, _ = _link_with_stream()
    link.data_received(wire)
    assert link_transport.aborted


async def test_server_side_refuses_streams_beyond_the_limit() -> None:
    opened: list[int] = []

    def on_open(link: Link, sid: int, request: OpenRequest) -> Stream | None:
        opened.append(sid)
        return Stream(window=64)

    link = Link(dialer=False, max_frame=16, max_streams=1, ping_interval=3600, on_open=on_open)
    transport = FakeTransport()
    link.transport = transport
    request = OpenRequest("web", 80, "spiffe://t/svc/a").encode()
    link.data_received(frame(OPEN, 1, request) + frame(OPEN, 3, request))
    await turn()
    assert opened == [1]
    assert frame(RST, 3)[:5] in transport.out


class HoldingTransport(FakeTransport):
    """Like uvloop when the socket is full: keeps the written object itself (a view), no copy."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []

    def write(self, data: Any) -> None:
        self.held.append(data)

    def get_write_buffer_size(self) -> int:
        return sum(len(d) for d in self.held)


async def test_read_buffer_is_not_reused_while_an_app_socket_holds_a_view_of_it() -> None:
    link, stream, _, _ = _link_with_stream()
    app = HoldingTransport()
    stream.transport = app
    first = link.get_buffer(65536)
    wire = frame(DATA, stream.sid, b"hello")
    first[: len(wire)] = wire
    link.buffer_updated(len(wire))
    assert link.lent
    second = link.get_buffer(65536)
    assert second.obj is not first.obj  # a fresh buffer: the held view stays intact
    second[: len(wire)] = frame(DATA, stream.sid, b"XXXXX")
    assert bytes(app.held[0]) == b"hello"
    assert not link.lent


async def test_read_buffer_is_reused_when_the_app_socket_took_everything() -> None:
    link, stream, _, app = _link_with_stream()
    first = link.get_buffer(65536)
    wire = frame(DATA, stream.sid, b"hello")
    first[: len(wire)] = wire
    link.buffer_updated(len(wire))
    assert bytes(app.out) == b"hello"
    assert link.get_buffer(65536).obj is first.obj


class _Owner:
    """Holds a stream whose on_close is one of its methods, as OutboundConn does."""

    def __init__(self) -> None:
        self.stream = Stream(window=64, on_close=self._closed)
        self.closed_with: str | None = None

    def _closed(self, stream: Stream, error: str) -> None:
        self.closed_with = error


def test_a_finished_stream_and_its_owner_are_freed_by_refcounting() -> None:
    """owner -> stream -> on_close -> owner is a cycle until the stream finishes, not after."""
    gc.collect()
    gc.disable()
    try:
        reasons = []
        for _ in range(200):
            owner = _Owner()
            owner.stream.reset("peer reset stream")
            reasons.append(owner.closed_with)
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert reasons == ["peer reset stream"] * 200
