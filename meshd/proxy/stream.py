"""One relayed connection inside a sidecar link: the app's socket on one end, the link on the other.

A stream moves bytes between its app transport and its link, with per-stream
flow control (window credit), half-close in each direction and resets. It
buffers only what the window allows: until its link or its app connection is
ready, and while the other side cannot take more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from meshd.proxy.frames import FIN, RST, RST_CANCEL, ProtocolError, frame, reset_payload
from meshd.proxy.http.actions import Verdict

if TYPE_CHECKING:
    from meshd.proxy.link import Link

# A sender pauses its app only after a send takes its window to zero or below, so it may
# overshoot by one read of the app socket; more than this beyond the window is a broken peer.
WINDOW_SLACK = 1 << 20


class Observer(Protocol):
    """Watches a stream's bytes (HTTP awareness); may give up by returning False."""

    def outgoing(self, data: bytes | memoryview) -> Verdict: ...
    def incoming(self, data: bytes | memoryview) -> Verdict: ...
    def finished(self) -> None: ...


class Stream:
    """Both directions of one app connection carried over a link."""

    __slots__ = (
        "app_paused",
        "closed",
        "credited",
        "fin_received",
        "fin_sent",
        "inbox",
        "link",
        "observer",
        "on_close",
        "opened_at",
        "outbox",
        "outbox_size",
        "reading_paused",
        "received",
        "send_window",
        "sent",
        "sid",
        "transport",
        "unacked",
        "window",
    )

    def __init__(self, window: int, on_close: Callable[[Stream, str], None] | None = None) -> None:
        self.link: Link | None = None
        self.sid = 0
        self.transport: asyncio.Transport | None = None
        self.window = window
        self.send_window = window
        self.unacked = 0
        self.credited = 0  # window credit granted to the peer so far
        self.app_paused = False
        self.reading_paused = False
        self.fin_sent = False
        self.fin_received = False
        self.closed = False
        self.outbox: list[bytes] = []
        self.outbox_size = 0
        self.inbox: list[bytes] = []
        self.sent = 0
        self.received = 0
        self.opened_at = time.monotonic()
        self.observer: Observer | None = None
        self.on_close = on_close

    # --- app side -> link -------------------------------------------------
    def send(self, data: bytes) -> None:
        """Bytes the app sent: forward them, or hold them until the link is attached."""
        if self.closed:
            return
        observer = self.observer
        if observer is not None and not observer.outgoing(data):
            self.observer = None
        link = self.link
        if link is None:  # the link is being dialled: hold this read, take no more
            self.outbox.append(data)
            self.outbox_size += len(data)
            self.pause_reading()
            return
        link.send_data(self, data)

    def send_fin(self) -> None:
        """The app half-closed its sending side."""
        if self.fin_sent or self.closed:
            return
        self.fin_sent = True
        if self.link is not None:
            self.link.write(frame(FIN, self.sid))
        self._maybe_finish()

    def attached(self, link: Link, sid: int) -> None:
        """The link took this stream: flush what the app sent meanwhile."""
        self.link, self.sid = link, sid
        outbox, self.outbox, self.outbox_size = self.outbox, [], 0
        for data in outbox:
            link.send_data(self, data)
        if self.fin_sent:
            link.write(frame(FIN, sid))
        if self.reading_paused and self.send_window > 0 and link.can_send:
            self.resume_reading()
        elif not link.can_send:
            self.pause_reading()

    def pause_reading(self) -> None:
        """Read no more from the app (noted even before its connection exists)."""
        if not self.reading_paused:
            self.reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    # --- link -> app side -------------------------------------------------
    def deliver(self, data: bytes | memoryview) -> None:
        """Bytes from the peer for the app."""
        size = len(data)
        self.received += size
        if self.received - self.credited > self.window + WINDOW_SLACK:
            raise ProtocolError(f"stream {self.sid}: the peer sent more than its window allows")
        transport = self.transport
        if transport is None:
            self.inbox.append(bytes(data))
            return
        transport.write(data)
        if transport.get_write_buffer_size() and self.link is not None:
            self.link.lent = True  # the transport queued a view of the link's read buffer
        observer = self.observer
        if observer is not None and not observer.incoming(data):
            self.observer = None
        self.unacked += size
        if not self.app_paused and self.unacked >= self.window >> 2 and self.link is not None:
            self.link.grant(self)

    def remote_fin(self) -> None:
        self.fin_received = True
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        self._maybe_finish()

    def app_connected(self, transport: asyncio.Transport) -> None:
        """The app end (inbound side) is connected: hand it what arrived meanwhile."""
        if self.closed:  # reset while connecting: nobody would ever close this connection
            self.inbox.clear()
            transport.abort()
            return
        self.transport = transport
        inbox, self.inbox = self.inbox, []
        for data in inbox:
            transport.write(data)
            self.unacked += len(data)
        if self.unacked and self.link is not None:
            self.link.grant(self)
        if self.fin_received and transport.can_write_eof():
            transport.write_eof()
        if self.reading_paused:  # paused before the transport existed
            transport.pause_reading()
            # uvloop starts reading a connection it made only after connection_made returns,
            # whatever the protocol said: pause it again at the start of the next turn
            asyncio.get_running_loop().call_soon(self._pause_again)
        self._maybe_finish()

    def _pause_again(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def app_write_paused(self, paused: bool) -> None:
        self.app_paused = paused
        if not paused and self.unacked and self.link is not None and not self.closed:
            self.link.grant(self)

    # --- ends -------------------------------------------------------------
    def app_lost(self) -> None:
        """The app connection is gone; tell the peer unless both sides had finished."""
        if self.closed:
            return
        if self.fin_sent and self.fin_received:
            self._finish("")
            return
        if self.link is not None and self.sid:
            self.link.write(frame(RST, self.sid, reset_payload(RST_CANCEL, "app closed")))
        self._finish("app closed before the stream finished")

    def reset(self, reason: str) -> None:
        """The stream is gone (peer reset, link lost, refused): abort the app side."""
        if self.closed:
            return
        if self.transport is not None:
            self.transport.abort()
        self._finish(reason)

    def _maybe_finish(self) -> None:
        if self.fin_sent and self.fin_received and self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes
            self._finish("")

    def _finish(self, error: str) -> None:
        self.closed = True
        self.inbox.clear()
        self.outbox.clear()
        self.outbox_size = self.unacked = 0  # what the link held for it goes with it
        if self.observer is not None:
            self.observer.finished()
            self.observer = None
        if self.link is not None:
            self.link.forget(self)
        # on_close is often a method of the object that holds this stream: dropping it
        # breaks that cycle, so both are freed by reference counting, not by the GC
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self, error)


class AppProtocol(asyncio.Protocol):
    """The asyncio protocol on an app's TCP connection, feeding its stream."""

    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.stream.app_connected(transport)

    def data_received(self, data: bytes) -> None:
        self.stream.send(data)

    def eof_received(self) -> bool:
        self.stream.send_fin()
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.app_lost()

    def pause_writing(self) -> None:
        self.stream.app_write_paused(True)

    def resume_writing(self) -> None:
        self.stream.app_write_paused(False)
