"""The receiving side of a sidecar link: frames parsed in place as the bytes arrive.

``LinkReader`` is the base class of ``meshd.proxy.link.Link`` and holds what
only reading needs: the read buffer uvloop decrypts into, the frame parser
(DATA payloads are handed to their stream without being gathered first), the
header checks on control frames, the count of control frames per loop turn
that puts a burst off to the next turn, the link's receive budget (what the
peer sent and was not yet credited, checked as DATA arrives; the fast path
inlines it), and the dispatch of each frame to its handler. Everything else a
frame leads to (writing replies and credit, the send budget, accepting an
OPEN, closing) is ``Link``'s, and the annotations below name what this class
uses of it. A base class rather than a helper object: the parser runs for
every byte between two hosts, and a method found through the MRO costs what
one on the class itself does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshd.proxy.frames import (
    CONTROL_MAX,
    DATA,
    FIN,
    FRAME_NAMES,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    OPEN,
    PING,
    PING_SIZE,
    PONG,
    RST,
    RST_REFUSED,
    WINDOW,
    WINDOW_CREDIT,
    ProtocolError,
    frame,
    parse_reset,
)

if TYPE_CHECKING:
    from meshd.proxy.stream import Stream

READ_BUFFER = 256 * 1024  # bytes: what uvloop may decrypt into the link at once
# frames other than DATA for a live stream that one link may have handled per loop turn
# before it lets others run (libuv reads up to 32 chunks of a busy socket in one go: 8 MiB
# of OPENs, or of empty DATA frames, would hold the loop)
CONTROL_BURST = 256
COUNT_RESET = 16
_NO_BUFFER = memoryview(bytearray(0))


class LinkReader(asyncio.BufferedProtocol):
    """Reads and dispatches a link's frames; ``Link`` is the rest of it."""

    # set by Link (see there)
    transport: asyncio.Transport | None
    streams: dict[int, Stream]
    dialer: bool
    next_sid: int
    closed: bool
    draining: bool
    last_seen: float
    link_window: int
    receiving: int
    _receive_limit: float
    _grant_at: int
    _last_open: int
    _ping_sent: bytes | None
    _loop: asyncio.AbstractEventLoop

    if TYPE_CHECKING:  # Link's methods this class calls; nothing at run time

        @property
        def can_send(self) -> bool: ...
        def close(self, reason: str) -> None: ...
        def abort(self, reason: str) -> None: ...
        def _reply(self, data: bytes) -> None: ...
        def grant(self, stream: Stream) -> None: ...
        def _returned(self, amount: int) -> None: ...
        def _on_open(self, sid: int, payload: bytes) -> None: ...
        def _on_goaway(self) -> None: ...

    def __init__(self) -> None:
        self._controls = 0  # control frames handled in this loop turn
        self._stash: bytes | None = None  # input put off to the next turn (see _parse)
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
            self._on_goaway()

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
        # refused (a policy denial, an unknown service): the app gets an RST, not an end
        stream.reset(f"peer reset stream (code {code}): {reason}", hard=code == RST_REFUSED)


def _check_control(kind: int, length: int) -> None:
    """Refuse a control frame by its header: unknown type, or more than its type may carry."""
    limit = CONTROL_MAX.get(kind)
    if limit is None:
        raise ProtocolError(f"unknown frame type {kind}")
    if length > limit:
        raise ProtocolError(f"{FRAME_NAMES[kind]} frame of {length} bytes (at most {limit})")


_STREAM_FRAMES: dict[int, Callable[[LinkReader, Stream, bytes], None]] = {
    WINDOW: LinkReader._on_window,
    FIN: LinkReader._on_fin,
    RST: LinkReader._on_reset,
}
