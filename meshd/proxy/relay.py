"""A local relay between two plain TCP connections on this host.

Used where no link is involved: permissive-mode plaintext delivered to a
local app. Each direction is paused while the other side's send buffer is
full, and half-closes are passed on. Where the connection needs L7, both
ends share an HTTP exchange (``meshd.proxy.http``) and carry out its rare
verdicts as a stream does: forward other bytes, answer the client, close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

from meshd.proxy.http.actions import Answer, Close, Send, StopFollowing, Verdict


class Exchange(Protocol):
    """An HTTP exchange as the ends of a pipe feed it (the client end: requests)."""

    def request_bytes(self, data: bytes | memoryview) -> Verdict: ...
    def response_bytes(self, data: bytes | memoryview) -> Verdict: ...
    def finished(self) -> None: ...


class PipeEnd(asyncio.Protocol):
    """One side of a Pipe."""

    client_side = False  # requests arrive at this end (it faces an exchange's client)

    def __init__(self, on_lost: Callable[[], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: PipeEnd | None = None
        self.pending: list[bytes] = []
        self.eof_pending = False
        self.eof = False
        self.closed = False
        self.on_lost = on_lost
        self.bytes_in = 0
        self.http: Exchange | None = None  # shared by both ends, where the connection needs L7

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport

    def join(self, peer: PipeEnd) -> None:
        """Connect both ends; flush what each received before the other existed."""
        self.peer, peer.peer = peer, self
        peer.http = self.http
        for end in (self, peer):
            other = end.peer
            assert other is not None and other.transport is not None
            for data in end.pending:
                other.transport.write(data)
            if end.pending and end.transport is not None:
                end.transport.resume_reading()
            end.pending.clear()
            if end.eof_pending:
                end.eof_received()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        http = self.http
        if http is not None:
            verdict = http.request_bytes(data) if self.client_side else http.response_bytes(data)
            if verdict is not True:
                self._http(verdict, data)
                return
        self._pass(data)

    def replay(self, data: bytes) -> None:
        """Bytes the client sent that were held back (a first look) and counted then."""
        http = self.http
        verdict = True if http is None else http.request_bytes(data)
        if verdict is True:
            self._pass(data)
        else:
            self._http(verdict, data)

    def _pass(self, data: bytes) -> None:
        """Write ``data`` to the other side, or keep it (and stop reading) until it is there."""
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    def _http(self, verdict: Verdict, data: bytes) -> None:
        """Carry out the exchange's verdict on ``data`` (rare: not once per chunk)."""
        if verdict is False:
            self._drop_http()
            self._pass(data)
            return
        assert verdict is not True
        for action in verdict:
            if isinstance(action, Send):
                self._pass(action.data)
            elif isinstance(action, Answer) and action.keep_alive:
                self._answer(action)
            elif isinstance(action, Answer | Close):
                self._end(action)
                return
            elif isinstance(action, StopFollowing):
                self._drop_http()

    def use_http(self, exchange: Exchange | None) -> None:
        """Both ends follow the connection with ``exchange`` from now on."""
        self.http = exchange
        if self.peer is not None:
            self.peer.http = exchange

    def _drop_http(self) -> None:
        self.http = None
        if self.peer is not None:
            self.peer.http = None

    def _answer(self, answer: Answer) -> None:
        """Answer the client and go on with its next request."""
        client = self if self.client_side else self.peer
        if client is not None and client.transport is not None:
            client.transport.write(answer.encode())

    def _end(self, action: Answer | Close) -> None:
        """Answer the client (then close), or close both ends at once."""
        client, app = (self, self.peer) if self.client_side else (self.peer, self)
        if self.http is not None:  # done: it reports what is left and lets go of its parsers
            self.http.finished()
            self._drop_http()
        if isinstance(action, Answer) and client is not None and client.transport is not None:
            client.transport.write(action.encode())
            client.transport.close()
        elif client is not None and client.transport is not None:
            client.transport.abort()
        if app is not None and app.transport is not None:
            app.transport.abort()

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.eof_pending = True
            return True
        self.eof_pending = False
        self.eof = True
        peer.transport.write_eof()
        if peer.eof:  # both directions are finished
            peer.transport.close()
            if self.transport is not None:
                self.transport.close()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.http is not None:
            self.http.finished()
            self._drop_http()
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None
