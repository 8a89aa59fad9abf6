"""A sidecar link: one persistent mTLS connection between two meshd, many streams over it.

``Link`` is the asyncio protocol on the TLS transport. It parses frames as
they arrive (DATA payloads are handed on without being gathered first),
writes frames, keeps per-stream flow control, pauses every stream's app
socket while the link's own send buffer is full, and pings to find a dead
peer. The side that dialled opens streams (odd ids); the other side asks its
``on_open`` callback what to do with each OPEN.

What a peer can make a link hold is bounded, authenticated or not: nothing is
allocated for reading before the TLS handshake is done; control frames have
fixed small sizes; the data in flight over all streams of a link is bounded
by a link-level budget (``link_window``) on top of each stream's window; and
replies a peer asks for (PONGs, refusals) while it does not read what we send
are bounded too (``REPLY_BACKLOG``): past that the link is cut off. A link
whose peer certificate expires is closed then, and a dialled link retires
before its stream ids run out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import cast

from meshd.identity import SpiffeId
from meshd.netfacts import fmt
from meshd.proxy.frames import (
    CONTROL_MAX,
    DATA,
    FIN,
    FRAME_NAMES,
    GOAWAY,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_SID,
    OPEN,
    PING,
    PING_SIZE,
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
from meshd.proxy.stream import WINDOW_SLACK, Stream
from meshd.telemetry.logs import peer_lines
from meshd.tls.context import (
    ALPN_LINK,
    ALPN_LINK_2,
    LINK_PROTOCOLS,
    peer_ids,
    peer_problem,
    seconds_left,
)

log = logging.getLogger("meshd.link")

COPY_BELOW = 16 * 1024  # bytes: frames smaller than a TLS record are joined before writing
FLUSH_AT = 256 * 1024  # bytes: write at once rather than wait for the loop turn to end
READ_BUFFER = 256 * 1024  # bytes: what uvloop may decrypt into the link at once
# bytes of replies (PONG, RST for a refused OPEN) a peer may ask for while it does not read
REPLY_BACKLOG = 64 * 1024
LINK_WINDOW = 8 * 1024 * 1024  # bytes in flight over all streams of a link, each way
# frames other than DATA for a live stream that one link may have handled per loop turn
# before it lets others run (libuv reads up to 32 chunks of a busy socket in one go: 8 MiB
# of OPENs, or of empty DATA frames, would hold the loop)
CONTROL_BURST = 256
COUNT_RESET = 16
_NO_BUFFER = memoryview(bytearray(0))
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
        link_window: int = LINK_WINDOW,
        on_open: OnOpen | None = None,
        on_ready: Callable[[Link], None] | None = None,
        on_lost: Callable[[Link, str], None] | None = None,
    ) -> None:
        self.dialer = dialer
        self.max_frame = max_frame
        self.max_streams = max_streams
        self.ping_interval = ping_interval
        self.link_window = link_window
        self.on_open = on_open
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.peer: SpiffeId | None = None
        self.peer_key = ""  # str(peer), kept: counted per stream
        self.peer_ids: frozenset[SpiffeId] = frozenset()
        self.peer_names: frozenset[str] = frozenset()  # the same, as strings: checked per stream
        self.peer_address = ""
        self.key: tuple[str, int] = ("", 0)  # the pool's key for a dialled link
        self.streams: dict[int, Stream] = {}
        self.next_sid = 1
        self.write_paused = False
        self.draining = False  # no new streams: GOAWAY received, or our stream ids ran out
        self.closed = False
        self.refused = ""  # why the peer was refused at connection_made (the link is aborted)
        self.last_seen = time.monotonic()
        self.in_flight = 0  # sent and not yet credited, over all live streams
        self.over_budget = False  # in_flight reached link_window: every stream is paused
        # what a dialler keeps in flight (the side that takes streams enforces its budget on
        # the peer, but does not limit its own sends: they answer streams the peer opened)
        self._send_budget = float(link_window) if dialer else float("inf")
        self.receiving = 0  # received and not yet credited, over all live streams
        # the budget guards the side that takes streams: their number and what each one
        # sends are the peer's choice. A dialler opens streams for its own apps, which read
        # what they asked for (or hold at most a stream window each, as any proxy would).
        self._receive_limit = float("inf") if dialer else link_window + WINDOW_SLACK
        self._grant_at = link_window // 2  # see _receive
        self._replies = 0  # bytes of replies written while the peer was not reading
        self._last_open = 0  # the highest stream id the peer opened
        self._controls = 0  # control frames handled in this loop turn
        self._stash: bytes | None = None  # input put off to the next turn (see _parse)
        self._timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._ping_sent: bytes | None = None
        # frame parser state
        self._header = bytearray()
        self._kind = 0
        self._sid = 0
        self._remaining = -1  # -1: between frames
        self._control = bytearray()
        # an app transport holds a view of _buffer (see get_buffer); True at first, so that
        # the buffer is allocated by the first read, after the handshake, not before it
        self.lent = True
        self._buffer = _NO_BUFFER
        self._early: list[bytes] = []  # data that beat connection_made (start_tls hands over late)
        self._pending: list[bytes | memoryview] = []  # frames waiting for the end of this loop turn
        self._pending_size = 0
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()  # looked up once: each lookup costs a getpid()

    # --- connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        self.peer_ids = peer_ids(ssl_object)
        self.peer_names = frozenset(str(i) for i in self.peer_ids)
        peer = transport.get_extra_info("peername")
        self.peer_address = fmt(peer) if peer else "?"
        problem = self._peer_problem(ssl_object)
        if problem is not None:
            self.refused = problem
            self.abort(f"peer refused: {problem}")
            return
        self._expiry = self._loop.call_later(seconds_left(ssl_object), self._expired)
        self._schedule_ping()
        if self.on_ready is not None:
            self.on_ready(self)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def _peer_problem(self, ssl_object: ssl.SSLObject | None) -> str | None:
        if ssl_object is None:
            return "no TLS"
        protocol = ssl_object.selected_alpn_protocol()
        if protocol not in LINK_PROTOCOLS:
            return f"it does not speak {ALPN_LINK_2} or {ALPN_LINK} (ALPN)"
        # a version 1 peer grants no credit for small streams in time: no budget towards it
        # (as the side that takes streams, this meshd holds any peer to its budget)
        if protocol != ALPN_LINK_2:
            self._send_budget = float("inf")
        return peer_problem(ssl_object)

    def _expired(self) -> None:
        self.abort("the peer's certificate expired")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in (self._timer, self._expiry):
            if timer is not None:
                timer.cancel()
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
            peer_lines.log(
                log,
                logging.WARNING,
                "aborted links",
                "aborting link to %s: %s",
                self.peer_address,
                reason,
            )
            self._pending.clear()
            self._pending_size = 0
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
        self.in_flight += size
        if stream.send_window <= 0:
            stream.pause_reading()
        if self.in_flight >= self._send_budget and not self.over_budget:
            self.over_budget = True
            self._pause_streams()

    def grant(self, stream: Stream) -> None:
        """Give the peer credit for what this side has passed on to the app."""
        if self.streams.get(stream.sid) is not stream:
            return  # ended: forget() took back what it held
        credit, stream.unacked = stream.unacked, 0
        stream.credited += credit
        self.receiving -= credit
        self.write(frame(WINDOW, stream.sid, WINDOW_CREDIT.pack(credit)))

    # Every RST frame is built by _reset_frame, and sent by one of these three (or as the
    # answer to an OPEN refused, in _on_open): ``reason`` is always ours, never the peer's.
    def reset(self, stream: Stream, code: int, reason: str) -> None:
        """Tell the peer a stream is gone (``reason`` is ours: the peer logs it), and end it."""
        self.send_reset(stream, code, reason)
        stream.reset(reason)

    def send_reset(self, stream: Stream, code: int, reason: str) -> None:
        """Tell the peer a stream is gone; the stream ends on its own (its app closed)."""
        if stream.sid and not stream.closed:
            self.write(_reset_frame(stream.sid, code, reason))

    def refuse(self, stream: Stream, code: int, reason: str) -> None:
        """Answer the peer's OPEN of ``stream`` with a reset after all (its app is down, ...).

        A reply the peer asked for, bounded like the others; ``reason`` is ours and short.
        """
        try:
            if stream.sid and not stream.closed:
                self._reply(_reset_frame(stream.sid, code, reason))
        except ProtocolError as e:
            self.abort(f"protocol error: {e.message}")
        stream.reset(reason)

    @property
    def can_send(self) -> bool:
        """May streams read from their apps? (not while the peer's side is full)"""
        return not (self.write_paused or self.over_budget)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_streams()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._replies = 0
        self._resume_streams()

    def _pause_streams(self) -> None:
        for stream in self.streams.values():
            stream.pause_reading()

    def _resume_streams(self) -> None:
        if not self.can_send:
            return
        for stream in list(self.streams.values()):
            if stream.send_window > 0:
                stream.resume_reading()

    def _returned(self, amount: int) -> None:
        """Budget came back (credit, or a stream ended): resume the streams if it was spent."""
        self.in_flight -= amount
        if self.over_budget and self.in_flight < self.link_window:
            self.over_budget = False
            self._resume_streams()

    def _reply(self, data: bytes) -> None:
        """Write a reply the peer asked for; cut the peer off if it asks while not reading."""
        if self.write_paused:
            self._replies += len(data)
            if self._replies > REPLY_BACKLOG:
                raise ProtocolError("the peer asks for replies it does not read")
        self.write(data)

    # --- streams ------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return not (self.closed or self.draining) and len(self.streams) < self.max_streams

    def open_stream(self, stream: Stream, request: OpenRequest) -> None:
        """(dialer) Start ``stream`` on this link."""
        sid = self.next_sid
        self.next_sid = sid + 2
        if self.next_sid > MAX_SID:  # the last id: retire (the pool dials a fresh link)
            self.draining = True
        self.streams[sid] = stream
        self.write(frame(OPEN, sid, request.encode()))
        stream.attached(self, sid)

    def forget(self, stream: Stream) -> None:
        """The stream ended: drop it, and what it held of both budgets."""
        if self.streams.pop(stream.sid, None) is stream:
            self.receiving -= stream.received - stream.credited
            self._returned(max(0, stream.window - stream.send_window))
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
        if self._stash is not None:  # keep the order behind what was put off
            self._stash += bytes(data)
            return
        try:
            self._parse(data)
        except ProtocolError as e:
            self.abort(f"protocol error: {e.message}")

    def _put_off(self, rest: memoryview) -> None:
        """Enough control frames for this turn: keep the rest for the next, read no more."""
        assert self.transport is not None
        self._stash = bytes(rest)  # a copy: the read buffer is reused
        self.transport.pause_reading()
        self._loop.call_soon(self._resume_parse)

    def _resume_parse(self) -> None:
        stash, self._stash = self._stash, None
        if stash is None or self.closed or self.transport is None:
            return
        self._controls = 0
        try:
            self._parse(stash)
        except ProtocolError as e:
            self.abort(f"protocol error: {e.message}")
            return
        if self._stash is None:
            self.transport.resume_reading()

    def _new_turn(self) -> None:
        self._controls = 0

    def _parse(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        end = len(data)
        offset = 0
        while offset < end:
            if self._remaining >= 0:  # inside a frame that began in an earlier chunk
                offset = self._piece(view, offset, end)
                continue
            if not self._header and end - offset >= HEADER_SIZE:
                # fast path, most frames: a whole DATA frame in this chunk goes straight out
                kind, sid, length = HEADER.unpack_from(data, offset)
                if kind == DATA and 0 < length <= end - offset - HEADER_SIZE:
                    offset += HEADER_SIZE
                    stream = self.streams.get(sid)
                    if stream is not None:
                        self.receiving += length  # _receive, inlined on the hot path
                        if self.receiving > self._grant_at:
                            self._receive(0)
                        stream.deliver(view[offset : offset + length])
                    else:
                        self._stray(sid)
                    offset += length
                    continue
            if self._controls >= CONTROL_BURST:
                self._put_off(view[offset:end])
                return
            offset = self._read_header(data, offset, end)

    def _piece(self, view: memoryview, offset: int, end: int) -> int:
        """Take what this chunk holds of the current frame; dispatch it once complete."""
        take = min(self._remaining, end - offset)
        if self._kind == DATA:
            stream = self.streams.get(self._sid)
            if stream is not None:
                self._receive(take)
                stream.deliver(view[offset : offset + take])
            elif take == self._remaining:  # once per frame, at its last piece
                self._stray(self._sid)
        else:
            self._control += view[offset : offset + take]
        self._remaining -= take
        if self._remaining == 0:
            self._remaining = -1
            if self._kind != DATA:
                payload = bytes(self._control)
                self._control.clear()
                self._dispatch(self._kind, self._sid, payload)
        return offset + take

    def _receive(self, size: int) -> None:
        self.receiving += size
        if self.receiving > self._grant_at:
            self._grant_held()
            if self.receiving > self._receive_limit:
                raise ProtocolError("the peer sent more than the link's budget allows")

    def _grant_held(self) -> None:
        """Credit every stream whose app took its data, however little each one holds.

        Streams grant on their own once a quarter of their window is passed on;
        many streams holding less than that each could otherwise spend the
        link's budget and leave the sender waiting for credit that never comes.
        What is left uncredited is held by apps that do not read. The next sweep
        comes only after another eighth of the budget, so its cost is spread.
        """
        for stream in self.streams.values():
            if stream.unacked and not stream.app_paused:
                self.grant(stream)
        self._grant_at = max(self.link_window // 2, self.receiving + self.link_window // 8)

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
        if kind == DATA:
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit")
            if not length:  # carries nothing, but costs a turn's share like any frame
                self._count()
                return offset
        else:
            _check_control(kind, length)
            if length <= end - offset:  # the whole payload is here (most control frames)
                after: int = offset + length
                self._dispatch(kind, sid, bytes(data[offset:after]))
                return after
        self._kind, self._sid, self._remaining = kind, sid, length
        return offset

    def _stray(self, sid: int) -> None:
        """DATA for no stream of ours: late for one that ended (fine), or for one never opened."""
        opened = self.next_sid - 2 if self.dialer else self._last_open
        if sid > opened:
            raise ProtocolError(f"DATA for stream {sid}, which was never opened")
        self._count()

    def _count(self) -> None:
        # The count starts again after a turn that reached COUNT_RESET frames: a turn with
        # a few (most of them) schedules nothing, and a turn starts with fewer than that
        self._controls += 1
        if self._controls == COUNT_RESET:
            self._loop.call_soon(self._new_turn)

    def _dispatch(self, kind: int, sid: int, payload: bytes) -> None:
        self._count()
        if kind in _STREAM_FRAMES:
            stream = self.streams.get(sid)
            if stream is not None:
                _STREAM_FRAMES[kind](self, stream, payload)
        elif kind == OPEN:
            self._on_open(sid, payload)
        elif kind == PING:
            if len(payload) != PING_SIZE:
                raise ProtocolError(f"PING of {len(payload)} bytes (must be {PING_SIZE})")
            self._reply(frame(PONG, 0, payload))
        elif kind == PONG:
            self._ping_sent = None
        else:  # GOAWAY (the header check let no other kind through)
            self.draining = True
            if not self.streams:
                self.close("peer is draining")

    def _on_window(self, stream: Stream, payload: bytes) -> None:
        if len(payload) != WINDOW_CREDIT.size:
            raise ProtocolError(f"malformed WINDOW frame of {len(payload)} bytes")
        credit = WINDOW_CREDIT.unpack(payload)[0]
        stream.send_window += credit
        self._returned(credit)
        if stream.send_window > 0 and self.can_send:
            stream.resume_reading()

    def _on_fin(self, stream: Stream, payload: bytes) -> None:
        stream.remote_fin()

    def _on_reset(self, stream: Stream, payload: bytes) -> None:
        code, reason = parse_reset(payload)
        stream.reset(f"peer reset stream (code {code}): {reason}")

    def _on_open(self, sid: int, payload: bytes) -> None:
        if self.dialer or sid % 2 == 0 or sid <= self._last_open:
            raise ProtocolError(f"unexpected OPEN for stream {sid}")
        self._last_open = sid
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
            self._reply(_reset_frame(sid, RST_REFUSED, reason))
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


def _reset_frame(sid: int, code: int, reason: str) -> bytes:
    return frame(RST, sid, reset_payload(code, reason))


def _check_control(kind: int, length: int) -> None:
    """Refuse a control frame by its header: unknown type, or more than its type may carry."""
    limit = CONTROL_MAX.get(kind)
    if limit is None:
        raise ProtocolError(f"unknown frame type {kind}")
    if length > limit:
        raise ProtocolError(f"{FRAME_NAMES[kind]} frame of {length} bytes (at most {limit})")


_STREAM_FRAMES: dict[int, Callable[[Link, Stream, bytes], None]] = {
    WINDOW: Link._on_window,
    FIN: Link._on_fin,
    RST: Link._on_reset,
}
