"""A sidecar link: one persistent mTLS connection between two meshd, many streams over it.

``Link`` is the asyncio protocol on the TLS transport. It parses frames as
they arrive (DATA payloads are handed on without being gathered first),
writes frames, keeps per-stream flow control, pauses every stream's app
socket while the link's own send buffer is full, and pings to find a dead
peer. The side that dialled opens streams (odd ids); the other side asks its
``on_open`` callback what to do with each OPEN.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import cast

from meshd.frames import (
    DATA,
    FIN,
    GOAWAY,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    OPEN,
    PING,
    PONG,
    RST,
    RST_REFUSED,
    WINDOW,
    WINDOW_CREDIT,
    OpenRequest,
    ProtocolError,
    frame,
    parse_reset,
    reset_payload,
)
from meshd.identity import SpiffeId
from meshd.stream import Stream
from meshd.tls import peer_ids

log = logging.getLogger("meshd.link")

COPY_BELOW = 16 * 1024  # bytes: frames smaller than a TLS record are joined before writing
FLUSH_AT = 256 * 1024  # bytes: write at once rather than wait for the loop turn to end
READ_BUFFER = 256 * 1024  # bytes: what uvloop may decrypt into the link at once
OnOpen = Callable[["Link", int, OpenRequest], Stream | None]


class Link(asyncio.BufferedProtocol):
    """Both ends of a sidecar link (``dialer`` says which one this is)."""

    def __init__(
        self,
        *,
        dialer: bool,
        max_frame: int,
        max_streams: int,
        ping_interval: float,
        on_open: OnOpen | None = None,
        on_ready: Callable[[Link], None] | None = None,
        on_lost: Callable[[Link, str], None] | None = None,
    ) -> None:
        self.dialer = dialer
        self.max_frame = max_frame
        self.max_streams = max_streams
        self.ping_interval = ping_interval
        self.on_open = on_open
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.peer: SpiffeId | None = None
        self.peer_ids: frozenset[SpiffeId] = frozenset()
        self.peer_names: frozenset[str] = frozenset()  # the same, as strings: checked per stream
        self.peer_address = ""
        self.key: tuple[str, int] = ("", 0)  # the pool's key for a dialled link
        self.streams: dict[int, Stream] = {}
        self.next_sid = 1
        self.write_paused = False
        self.draining = False  # GOAWAY received: no new streams on this link
        self.closed = False
        self.last_seen = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._ping_sent: bytes | None = None
        # frame parser state
        self._header = bytearray()
        self._kind = 0
        self._sid = 0
        self._remaining = -1  # -1: between frames
        self._control = bytearray()
        self.lent = False  # an app transport holds a view of _buffer (see get_buffer)
        self._buffer = memoryview(bytearray(READ_BUFFER))
        self._early: list[bytes] = []  # data that beat connection_made (start_tls hands over late)
        self._pending: list[bytes | memoryview] = []  # frames waiting for the end of this loop turn
        self._pending_size = 0
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()  # looked up once: each lookup costs a getpid()

    # --- connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        self.peer_ids = peer_ids(transport.get_extra_info("ssl_object"))
        self.peer_names = frozenset(str(i) for i in self.peer_ids)
        peer = transport.get_extra_info("peername")
        self.peer_address = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._schedule_ping()
        if self.on_ready is not None:
            self.on_ready(self)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        reason = f"link to {self.peer_address} lost" + (f": {exc}" if exc else "")
        for stream in list(self.streams.values()):
            stream.reset(reason)
        self.streams.clear()
        if self.on_lost is not None:
            self.on_lost(self, reason)

    def close(self, reason: str) -> None:
        if self.transport is not None and not self.closed:
            log.info("closing link to %s: %s", self.peer_address, reason)
            self._flush()
            self.transport.close()

    def abort(self, reason: str) -> None:
        if self.transport is not None and not self.closed:
            log.warning("aborting link to %s: %s", self.peer_address, reason)
            self.transport.abort()

    # --- writing ------------------------------------------------------------
    # Frames written during one turn of the event loop leave together: one TLS
    # record and one send() for many streams, which is where a shared link wins.
    def write(self, data: bytes | memoryview) -> None:
        if self.transport is None or self.closed:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._pending_size >= FLUSH_AT:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        pending = self._pending
        self._pending = []
        size, self._pending_size = self._pending_size, 0
        if self.transport is None or self.closed:
            return
        if len(pending) == 1:
            self.transport.write(pending[0])
        elif size < COPY_BELOW:  # small frames: one TLS record for all of them
            self.transport.write(b"".join(pending))
        else:  # bulk: a record per piece costs less than copying it
            self.transport.writelines(pending)

    def send_data(self, stream: Stream, data: bytes) -> None:
        size = len(data)
        if self.transport is None or self.closed:
            return
        pending = self._pending
        if size <= self.max_frame:  # the usual case: one frame, written inline
            pending.append(HEADER.pack(DATA, stream.sid, size))
            pending.append(data)
            self._pending_size += HEADER_SIZE + size
            self._flush_soon()
        else:
            view = memoryview(data)
            for start in range(0, size, self.max_frame):
                chunk = view[start : start + self.max_frame]
                self.write(HEADER.pack(DATA, stream.sid, len(chunk)))
                self.write(chunk)
        stream.sent += size
        stream.send_window -= size
        if stream.send_window <= 0:
            stream.pause_reading()

    def grant(self, stream: Stream) -> None:
        """Give the peer credit for what this side has passed on to the app."""
        credit, stream.unacked = stream.unacked, 0
        stream.credited += credit
        self.write(frame(WINDOW, stream.sid, WINDOW_CREDIT.pack(credit)))

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in self.streams.values():
            stream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            if stream.send_window > 0:
                stream.resume_reading()

    # --- streams ------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return not (self.closed or self.draining) and len(self.streams) < self.max_streams

    def open_stream(self, stream: Stream, request: OpenRequest) -> None:
        """(dialer) Start ``stream`` on this link."""
        sid = self.next_sid
        self.next_sid += 2
        self.streams[sid] = stream
        self.write(frame(OPEN, sid, request.encode()))
        stream.attached(self, sid)

    def forget(self, stream: Stream) -> None:
        self.streams.pop(stream.sid, None)
        if self.draining and not self.streams:
            self.close("drained")

    def goaway(self) -> None:
        """Tell the peer to open no new streams here (we are draining)."""
        self.write(frame(GOAWAY, 0))

    # --- reading ------------------------------------------------------------
    # uvloop decrypts straight into the buffer that get_buffer hands out: no bytes object
    # per TLS record and no joining of records. Frames are parsed from it in place, and
    # DATA is written to the app's socket from it. A socket that cannot take all of it
    # keeps a view of the buffer (uvloop does not copy), so the buffer is then lent:
    # the next read gets a fresh one rather than overwriting bytes still queued.
    def get_buffer(self, sizehint: int) -> memoryview:
        if self.lent:
            self.lent = False
            self._buffer = memoryview(bytearray(READ_BUFFER))
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.transport is None:
            self._early.append(bytes(data))
            return
        self.last_seen = time.monotonic()
        try:
            self._parse(data)
        except ProtocolError as e:
            self.abort(f"protocol error: {e.message}")

    def _parse(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        end = len(data)
        offset = 0
        while offset < end:
            if self._remaining < 0:
                if not self._header and end - offset >= HEADER_SIZE:
                    # fast path, most frames: a whole DATA frame in this chunk goes straight out
                    kind, sid, length = HEADER.unpack_from(data, offset)
                    if kind == DATA and 0 < length <= end - offset - HEADER_SIZE:
                        offset += HEADER_SIZE
                        stream = self.streams.get(sid)
                        if stream is not None:
                            stream.deliver(view[offset : offset + length])
                        offset += length
                        continue
                offset = self._read_header(data, offset, end)
                continue
            take = min(self._remaining, end - offset)
            if self._kind == DATA:
                stream = self.streams.get(self._sid)
                if stream is not None:
                    stream.deliver(view[offset : offset + take])
            else:
                self._control += view[offset : offset + take]
            offset += take
            self._remaining -= take
            if self._remaining == 0:
                self._remaining = -1
                if self._kind != DATA:
                    payload = bytes(self._control)
                    self._control.clear()
                    self._dispatch(self._kind, self._sid, payload)

    def _read_header(self, data: bytes | memoryview, offset: int, end: int) -> int:
        if not self._header and end - offset >= HEADER_SIZE:
            kind, sid, length = HEADER.unpack_from(data, offset)
            offset += HEADER_SIZE
        else:
            need = HEADER_SIZE - len(self._header)
            self._header += data[offset : offset + need]
            offset += min(need, end - offset)
            if len(self._header) < HEADER_SIZE:
                return offset
            kind, sid, length = HEADER.unpack(self._header)
            self._header.clear()
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit")
        self._kind, self._sid = kind, sid
        if length == 0:
            self._dispatch(kind, sid, b"")
        else:
            self._remaining = length
        return offset

    def _dispatch(self, kind: int, sid: int, payload: bytes) -> None:
        if kind in _STREAM_FRAMES:
            stream = self.streams.get(sid)
            if stream is not None:
                _STREAM_FRAMES[kind](self, stream, payload)
        elif kind == OPEN:
            self._on_open(sid, payload)
        elif kind == PING:
            self.write(frame(PONG, 0, payload))
        elif kind == PONG:
            self._ping_sent = None
        elif kind == GOAWAY:
            self.draining = True
            if not self.streams:
                self.close("peer is draining")
        else:
            raise ProtocolError(f"unknown frame type {kind}")

    def _on_window(self, stream: Stream, payload: bytes) -> None:
        if len(payload) != WINDOW_CREDIT.size:
            raise ProtocolError(f"malformed WINDOW frame of {len(payload)} bytes")
        stream.send_window += WINDOW_CREDIT.unpack(payload)[0]
        if stream.send_window > 0 and not self.write_paused:
            stream.resume_reading()

    def _on_fin(self, stream: Stream, payload: bytes) -> None:
        stream.remote_fin()

    def _on_reset(self, stream: Stream, payload: bytes) -> None:
        code, reason = parse_reset(payload)
        stream.reset(f"peer reset stream (code {code}): {reason}")

    def _on_open(self, sid: int, payload: bytes) -> None:
        if self.dialer or sid in self.streams or sid % 2 == 0:
            raise ProtocolError(f"unexpected OPEN for stream {sid}")
        request = OpenRequest.decode(payload)
        stream = None
        if len(self.streams) >= self.max_streams:
            reason = "too many streams on this link"
        elif self.on_open is None:
            reason = "this side takes no streams"
        else:
            reason = "refused"
            stream = self.on_open(self, sid, request)
        if stream is None:
            self.write(frame(RST, sid, reset_payload(RST_REFUSED, reason)))
            return
        self.streams[sid] = stream
        stream.attached(self, sid)

    # --- liveness -----------------------------------------------------------
    def _schedule_ping(self) -> None:
        self._timer = self._loop.call_later(self.ping_interval, self._ping)

    def _ping(self) -> None:
        if self.closed:
            return
        if (
            self._ping_sent is not None
            and time.monotonic() - self.last_seen > 2 * self.ping_interval
        ):
            self.abort("peer did not answer pings")
            return
        self._ping_sent = os.urandom(8)
        self.write(frame(PING, 0, self._ping_sent))
        self._schedule_ping()


_STREAM_FRAMES: dict[int, Callable[[Link, Stream, bytes], None]] = {
    WINDOW: Link._on_window,
    FIN: Link._on_fin,
    RST: Link._on_reset,
}
