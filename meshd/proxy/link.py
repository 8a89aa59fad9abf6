"""A sidecar link: one persistent mTLS connection between two meshd, many streams over it.

``Link`` is the asyncio protocol on the TLS transport. Here live its
lifecycle (the peer's certificate checked when the link is made, expiry,
close and abort), writing frames, credit and the send budget (flow control
per stream and per link), pausing every stream's app socket while the link's
own send buffer is full, the streams themselves, and pings to find a dead
peer. The side that dialled opens streams (odd ids); the other side asks its
``on_open`` callback what to do with each OPEN. Parsing frames as they
arrive and dispatching them is the base class's,
``meshd.proxy.linkread.LinkReader``.

What a peer can make a link hold is bounded, authenticated or not: nothing is
allocated for reading before the TLS handshake is done; control frames have
fixed small sizes; the data in flight over all streams of a link is bounded
by a link-level budget (``link_window``) on top of each stream's window; and
replies a peer asks for (PONGs, refusals) while it does not read what we send
are bounded too (``REPLY_BACKLOG``): past that the link is cut off.

No link outlives the certificates that authenticated it: each knows when
ours (``own_expiry``, the one meshd ran when the link was made) and the
peer's expire, and is aborted at the earlier one. A dialled link retires
before then (``retire``: a margin of min(10 s, a quarter of its life)), when
meshd's own certificate is swapped, when the peer sends GOAWAY and before its
stream ids run out: it takes no new streams (the pool dials a fresh link),
its HTTP streams move to the fresh link at their next request boundary
(``Stream.retire``) and its opaque streams stay until they end or it expires.
A swap of meshd's TLS material (its certificate or its trust bundle: a
``generation``) ends every link made with another one (``outlived``): a
dialled link retires, an accepted one sends GOAWAY, and either is aborted
after ``SWAP_GRACE`` if still up (a peer the new bundle does not trust must
not keep its link until its certificate expires).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import time
from collections.abc import Callable
from typing import cast

from meshd.identity import SpiffeId
from meshd.netfacts import fmt
from meshd.proxy.frames import (
    DATA,
    GOAWAY,
    HEADER,
    HEADER_SIZE,
    MAX_SID,
    OPEN,
    PING,
    RST,
    RST_REFUSED,
    WINDOW,
    WINDOW_CREDIT,
    OpenRequest,
    ProtocolError,
    frame,
    reset_payload,
)
from meshd.proxy.linkread import LinkReader
from meshd.proxy.stream import WINDOW_SLACK, Stream
from meshd.telemetry.logs import peer_lines
from meshd.tls.context import (
    ALPN_LINK,
    ALPN_LINK_2,
    LINK_PROTOCOLS,
    peer_ids,
    peer_problem,
    seconds_left,
    started,
)

log = logging.getLogger("meshd.link")

COPY_BELOW = 16 * 1024  # bytes: frames smaller than a TLS record are joined before writing
FLUSH_AT = 256 * 1024  # bytes: write at once rather than wait for the loop turn to end
# bytes of replies (PONG, RST for a refused OPEN) a peer may ask for while it does not read
REPLY_BACKLOG = 64 * 1024
LINK_WINDOW = 8 * 1024 * 1024  # bytes in flight over all streams of a link, each way
RETIRE_MARGIN = 10.0  # seconds: a dialled link retires this long (at most) before it expires
# seconds a drained, retired link waits for the peer to close it: the peer's streams end
# cleanly first (their apps close on the FIN we sent), not with the link's loss
DRAIN_GRACE = 5.0
# seconds a link made with TLS material meshd swapped out may stay up (its streams move)
SWAP_GRACE = 10.0
OnOpen = Callable[["Link", int, OpenRequest], Stream | None]


class Link(LinkReader):
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
        on_retire: Callable[[Link, str], None] | None = None,
        own_expiry: float = math.inf,
        generation: bytes = b"",
        trust: bytes = b"",
    ) -> None:
        super().__init__()  # the reader's own state: buffer and parser
        self.dialer = dialer
        self.max_frame = max_frame
        self.max_streams = max_streams
        self.ping_interval = ping_interval
        self.link_window = link_window
        self.on_open = on_open
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_retire = on_retire
        self.own_expiry = own_expiry  # Unix time: our certificate's end, as of this link
        self.generation = generation  # the TlsMaterial this link was made with (``outlived``)
        self.trust = trust  # and its trust bundle alone
        self.peer_expiry = math.inf  # Unix time: the peer certificate's end
        self.peer_serial = ""  # upper-case hex, as ssl spells it (revocations name it)
        self.peer_not_before = 0.0  # Unix time: the peer certificate's start (revocations)
        self.retired = ""  # why this (dialled) link retired; "" while it takes streams
        self.told_goaway = False  # (accepting side) GOAWAY sent for a swap of our TLS material
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
        self._timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._retiring: asyncio.TimerHandle | None = None  # the retirement, or the drain grace
        self._ping_sent: bytes | None = None
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
        self._schedule_expiry(ssl_object)
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

    def _schedule_expiry(self, ssl_object: ssl.SSLObject | None) -> None:
        """Abort at the earlier expiry of both certificates; a dialled link retires before."""
        now = time.time()
        self.peer_serial, self.peer_expiry = _serial(ssl_object), now + seconds_left(ssl_object)
        self.peer_not_before = started(ssl_object)
        left = max(0.0, min(self.own_expiry, self.peer_expiry) - now)
        self._expiry = self._loop.call_later(left, self._expired)
        if self.dialer:
            margin = min(RETIRE_MARGIN, left / 4)
            self._retiring = self._loop.call_later(left - margin, self.retire, "expiring")

    def outlived(self, reason: str, trust: bytes) -> None:
        """Made with TLS material meshd no longer runs: new streams go elsewhere. If the
        trust bundle changed too (``trust``: the one running now), the peer's chain may no
        longer verify: the link is cut ``SWAP_GRACE`` from now (earlier if a certificate
        expires first). A renewal alone keeps both certificates valid: the link then ends
        at the earlier expiry, as ever, which lets opaque streams run until then."""
        if self.closed:
            return
        if self.dialer:
            self.retire(reason)
        elif not self.told_goaway:
            self.told_goaway = True
            self.goaway()  # the dialler retires it and moves its streams
        if trust == self.trust:
            return
        expiry, due = self._expiry, self._loop.time() + SWAP_GRACE
        if expiry is None or expiry.when() > due:
            if expiry is not None:
                expiry.cancel()
            self._expiry = self._loop.call_at(due, self._swapped_out)

    def _swapped_out(self) -> None:
        self.abort("made with a certificate or trust bundle meshd no longer runs")

    def _expired(self) -> None:
        which = "our" if self.own_expiry <= self.peer_expiry else "the peer's"
        self.abort(f"{which} certificate expired")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in (self._timer, self._expiry, self._retiring):
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
            if self.on_retire is not None:
                self.on_retire(self, "ids")
        self.streams[sid] = stream
        self.write(frame(OPEN, sid, request.encode()))
        stream.attached(self, sid)

    def forget(self, stream: Stream) -> None:
        """The stream ended: drop it, and what it held of both budgets."""
        if self.streams.pop(stream.sid, None) is stream:
            self.receiving -= stream.received - stream.credited
            self._returned(max(0, stream.window - stream.send_window))
        if self.draining and not self.streams:
            self._drained()

    def _drained(self) -> None:
        if not self.retired:
            self.close("drained")
        elif self._retiring is None:  # the peer closes once its streams have ended
            self._retiring = self._loop.call_later(DRAIN_GRACE, self.close, "retired and drained")

    def goaway(self) -> None:
        """Tell the peer to open no new streams here (we are draining)."""
        self.write(frame(GOAWAY, 0))

    def retire(self, reason: str) -> None:
        """(dialer) Take no new streams; HTTP streams move at their next request boundary.

        The pool hears of it (``on_retire``) and dials a fresh link for new
        streams; the peer gets a GOAWAY, so that it closes the link once its
        own ends of our streams are done. Opaque streams stay until they end or
        the link expires.
        """
        if self.retired or self.closed:
            return
        self.retired, self.draining = reason, True
        if self._retiring is not None:
            self._retiring.cancel()
            self._retiring = None
        if self.on_retire is not None:
            self.on_retire(self, reason)
        self.goaway()
        for stream in list(self.streams.values()):
            stream.retire()
        if not self.streams:
            self._drained()

    def _on_goaway(self) -> None:
        """The peer will take no new streams: a dialler retires, an acceptor drains."""
        if self.dialer:
            self.retire("goaway")
            return
        self.draining = True
        if not self.streams:
            self.close("peer is draining")

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


def _serial(ssl_object: ssl.SSLObject | None) -> str:
    """The peer certificate's serial, as ``ssl`` spells it ("" without one)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    return str(cert.get("serialNumber", "")) if cert else ""


def _reset_frame(sid: int, code: int, reason: str) -> bytes:
    return frame(RST, sid, reset_payload(code, reason))
