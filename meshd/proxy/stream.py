"""One relayed connection inside a sidecar link: the app's socket on one end, the link on the other.

A stream moves bytes between its app transport and its link, with per-stream
flow control (window credit), half-close in each direction and resets. It
buffers only what the window allows: until its link or its app connection is
ready, and while the other side cannot take more. An HTTP exchange, where a
connection needs one (``meshd.proxy.http``), sees each chunk before it goes
on and may hold it, replace it, or answer the client instead; its rare
verdicts are carried out here, away from the per-chunk path.

An outbound HTTP stream whose link retires moves to a fresh link at its next
request boundary (``retire``): its exchange is wrapped (``Moving``, only on
such streams: nobody else pays for the check), and once no request is
outstanding the stream ends its part on the old link with a FIN (the far
side closes its app connection between requests, which HTTP allows) and is
sent again by its owner (``mover``); the app's connection never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from meshd.proxy.frames import FIN, RST_CANCEL, ProtocolError, frame
from meshd.proxy.http.actions import Answer, Close, Send, StopFollowing, Verdict

if TYPE_CHECKING:
    from meshd.proxy.link import Link

# A sender pauses its app only after a send takes its window to zero or below, so it may
# overshoot by one read of the app socket; more than this beyond the window is a broken peer.
WINDOW_SLACK = 1 << 20
_LINGER_ZERO = struct.pack("ii", 1, 0)


class Exchange(Protocol):
    """Sees a stream's bytes (HTTP); its verdict says what to do with each chunk.

    ``True`` (most chunks): relay it as it is. ``False``: relay it, and drop the
    exchange. A tuple of actions: carry them out instead (``actions``).
    """

    client_is_app: bool  # outbound: the app sent the requests; inbound: the link did

    def outgoing(self, data: bytes | memoryview) -> Verdict: ...
    def incoming(self, data: bytes | memoryview) -> Verdict: ...
    def finished(self) -> None: ...
    def at_rest(self) -> bool: ...


class Stream:
    """Both directions of one app connection carried over a link."""

    __slots__ = (
        "app_paused",
        "closed",
        "credited",
        "fin_received",
        "fin_sent",
        "http",
        "inbox",
        "link",
        "mover",
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
        self.http: Exchange | None = None
        self.on_close = on_close
        # sends this stream again over a fresh link (outbound HTTP); given the old link
        self.mover: Callable[[Stream, Link], None] | None = None

    def use_http(self, exchange: Exchange | None) -> None:
        """Follow this stream with ``exchange`` from now on (``install.FirstRequest``)."""
        self.http = exchange

    # --- app side -> link -------------------------------------------------
    def send(self, data: bytes) -> None:
        """Bytes the app sent: forward them, or hold them until the link is attached."""
        if self.closed:
            return
        http = self.http
        if http is not None:
            verdict = http.outgoing(data)
            if verdict is not True:
                self._outgoing(verdict, data)
                return
        link = self.link
        if link is None:
            self._hold(data)
            return
        link.send_data(self, data)

    def _hold(self, data: bytes) -> None:
        """The link is being dialled: hold this read, take no more."""
        self.outbox.append(data)
        self.outbox_size += len(data)
        self.pause_reading()

    def _send_on(self, data: bytes) -> None:
        """send's last step, for bytes an exchange lets go of."""
        if self.link is None:
            self._hold(data)
        else:
            self.link.send_data(self, data)

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
        http = self.http
        if http is not None:
            verdict = http.incoming(data)
            if verdict is not True:
                self._incoming(verdict, data, size)
                return
        transport = self.transport
        if transport is None:
            self.inbox.append(bytes(data))
            return
        transport.write(data)
        if transport.get_write_buffer_size() and self.link is not None:
            self.link.lent = True  # the transport queued a view of the link's read buffer
        self.unacked += size
        if not self.app_paused and self.unacked >= self.window >> 2 and self.link is not None:
            self.link.grant(self)

    def replay(self, data: bytes) -> None:
        """Bytes from the peer an exchange held back before it was replaced (a first look):
        counted on arrival, credited once they are delivered, like any bytes held."""
        http = self.http
        verdict = True if http is None else http.incoming(data)
        if verdict is True:
            self._deliver_on(data)
        else:
            self._incoming(verdict, data, 0)

    def _deliver_on(self, data: bytes | memoryview) -> None:
        """deliver's write, for bytes an exchange lets go of (credit is deliver's business)."""
        transport = self.transport
        if transport is None:
            self.inbox.append(bytes(data))
            return
        transport.write(data)
        if transport.get_write_buffer_size() and self.link is not None:
            self.link.lent = True

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
        # credit all that arrived meanwhile: what the inbox held, and what an exchange held
        # back or dropped (a head it keeps is bounded by the head limit)
        self.unacked = self.received - self.credited
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

    # --- what an HTTP exchange decided (rare: not once per chunk) -------------
    def _outgoing(self, verdict: Verdict, data: bytes) -> None:
        """The exchange's verdict on bytes the app sent."""
        if verdict is False:
            self.http = None
            self._send_on(data)
            return
        assert verdict is not True
        for action in verdict:
            if isinstance(action, Send):
                self._send_on(action.data)
            elif not self._act(action):
                return

    def _incoming(self, verdict: Verdict, data: bytes | memoryview, size: int) -> None:
        """The exchange's verdict on bytes from the peer; ``size`` of them arrived."""
        if verdict is False:
            self.http = None
            self._deliver_on(data)
        else:
            assert verdict is not True
            for action in verdict:
                if isinstance(action, Send):
                    self._deliver_on(action.data)
                elif not self._act(action):
                    return
        if self.transport is not None:  # else app_connected credits all that arrived
            self.unacked += size
            if not self.app_paused and self.unacked >= self.window >> 2 and self.link is not None:
                self.link.grant(self)

    def _act(self, action: object) -> bool:
        """Carry out an action other than Send; False once the stream is gone."""
        if isinstance(action, Answer):
            self._answer(action)
        elif isinstance(action, Close):
            self._cancel(action.reason)
        elif isinstance(action, StopFollowing):
            self.http = None
        return not self.closed

    def _answer(self, answer: Answer) -> None:
        """Answer the client in the server's stead, then end the stream (closing is HTTP's
        ``Connection: close``: the answer says so), unless the answer keeps it alive."""
        http, payload = self.http, answer.encode()
        transport, link = self.transport, self.link
        if answer.keep_alive:  # the exchange goes on with the client's next request
            if http is not None and http.client_is_app:
                if transport is not None:
                    transport.write(payload)
            elif link is not None:
                link.send_data(self, payload)
            return
        if http is not None and http.client_is_app:  # outbound: the peer's app saw nothing
            if transport is not None:
                transport.write(payload)
                transport.close()  # after what is buffered
            self._tell_peer(RST_CANCEL, "answered by meshd")
        elif link is not None:  # inbound: the app never saw the request
            link.send_data(self, payload)
            link.write(frame(FIN, self.sid))
            self.fin_sent = True
            if transport is not None:
                transport.close()
        self._finish("")

    def _cancel(self, reason: str) -> None:
        self._tell_peer(RST_CANCEL, reason)
        self.reset(reason)

    def _tell_peer(self, code: int, reason: str) -> None:
        if self.link is not None:  # a RST is built in one place: the link's
            self.link.send_reset(self, code, reason)

    # --- a retiring link (rare: never on the per-chunk path of other streams) ---
    def retire(self) -> None:
        """The link retires: move at the next request boundary (HTTP), or stay (opaque)."""
        http = self.http
        if self.mover is None or http is None or self.fin_sent or self.fin_received:
            return  # opaque, or half-closed: it stays until it ends or the link expires
        if http.at_rest():
            self._move()
        elif not isinstance(http, Moving):
            self.http = Moving(self, http)

    def move_at_rest(self) -> None:
        """A response completed while moving: move, unless a request went out meanwhile."""
        http = self.http
        if isinstance(http, Moving) and not self.closed:
            http.scheduled = False
            if http.inner.at_rest():
                self._move()

    def _move(self) -> None:
        """End this stream's part on its link cleanly, and go on over a fresh one.

        Not once either side half-closed: the far app's connection would then
        be opened again for a client that already ended, or that heard the end.
        """
        link, mover = self.link, self.mover
        if self.closed or link is None or mover is None or self.fin_sent or self.fin_received:
            return
        if isinstance(self.http, Moving):
            self.http = self.http.inner
        link.write(frame(FIN, self.sid))  # the far side's app sees its connection end
        link.forget(self)  # gives back what this stream held of the link's budgets
        self.link, self.sid = None, 0
        self.send_window, self.credited, self.unacked = self.window, self.received, 0
        mover(self, link)

    # --- ends -------------------------------------------------------------
    def app_lost(self) -> None:
        """The app connection is gone; tell the peer unless both sides had finished."""
        if self.closed:
            return
        if self.fin_sent and self.fin_received:
            self._finish("")
            return
        if self.link is not None and self.sid:
            self.link.send_reset(self, RST_CANCEL, "app closed")
        self._finish("app closed before the stream finished")

    def reset(self, reason: str, hard: bool = False) -> None:
        """The stream is gone (peer reset, link lost, refused): abort the app side.

        ``hard``: with a TCP RST (the peer refused the stream: a policy denial
        must not look to the caller's app like a connection that ended well).
        """
        if self.closed:
            return
        if self.transport is not None:
            if hard:
                _reset_hard(self.transport)
            else:
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
        if self.http is not None:
            self.http.finished()
            self.http = None
        if self.link is not None:
            self.link.forget(self)
        # on_close is often a method of the object that holds this stream: dropping it
        # breaks that cycle, so both are freed by reference counting, not by the GC
        on_close, self.on_close = self.on_close, None
        self.mover = None
        if on_close is not None:
            on_close(self, error)


def _reset_hard(transport: asyncio.Transport) -> None:
    """Abort with SO_LINGER 0: the kernel sends an RST, not a FIN (a caller must not take a
    reset connection for one that ended cleanly)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):  # gone, or not a socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


class Moving:
    """The exchange of a stream whose link retires: the same, watched for a request boundary.

    Installed on retiring streams only; the stream moves on the next loop turn
    after a response (or a request answered early) completes: its bytes are
    through and credited by then.
    """

    __slots__ = ("client_is_app", "inner", "scheduled", "stream")

    def __init__(self, stream: Stream, inner: Exchange) -> None:
        self.stream, self.inner = stream, inner
        self.client_is_app = inner.client_is_app
        self.scheduled = False

    def outgoing(self, data: bytes | memoryview) -> Verdict:
        # a response may come before its request is sent whole (413 during an upload):
        # the boundary is then where the request ends
        verdict = self.inner.outgoing(data)
        self._watch()
        return verdict

    def incoming(self, data: bytes | memoryview) -> Verdict:
        verdict = self.inner.incoming(data)
        self._watch()
        return verdict

    def _watch(self) -> None:
        if not self.scheduled and self.inner.at_rest():
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.stream.move_at_rest)

    def finished(self) -> None:
        self.inner.finished()

    def at_rest(self) -> bool:
        return self.inner.at_rest()


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
