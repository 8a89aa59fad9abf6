"""A local relay between two plain TCP connections on this host.

Used where no link is involved: permissive-mode plaintext delivered to a
local app. Each direction is paused while the other side's send buffer is
full, and half-closes are passed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast


class PipeEnd(asyncio.Protocol):
    """One side of a Pipe."""

    def __init__(self, on_lost: Callable[[], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: PipeEnd | None = None
        self.pending: list[bytes] = []
        self.eof_pending = False
        self.eof = False
        self.closed = False
        self.on_lost = on_lost
        self.bytes_in = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport

    def join(self, peer: PipeEnd) -> None:
        """Connect both ends; flush what each received before the other existed."""
        self.peer, peer.peer = peer, self
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
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

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
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None
